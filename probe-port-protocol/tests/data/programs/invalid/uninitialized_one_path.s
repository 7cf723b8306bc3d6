; expect: 3 uninitialized-register
; r3 is only written on the fall-through path.
        ldxdw r2, [r1+40]
        jeq r2, 0, skip
        mov64 r3, 1
skip:
        mov64 r0, r3
        exit
