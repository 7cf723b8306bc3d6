; expect: 5 bad-memory-base
; r2 is r10-24 on one path and r10-8 on the other: no single offset, no pointer.
        mov64 r2, r10
        ldxdw r3, [r1+40]
        jeq r3, 0, shallow
        add64 r2, -16
shallow:
        add64 r2, -8
        stdw [r2+0], 1
        mov64 r0, 0
        exit
