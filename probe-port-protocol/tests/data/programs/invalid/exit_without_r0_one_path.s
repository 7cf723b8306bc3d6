; expect: 3 exit-without-r0
; r0 is only set on the fall-through path.
        ldxdw r2, [r1+40]
        jeq r2, 0, out
        mov64 r0, 1
out:
        exit
