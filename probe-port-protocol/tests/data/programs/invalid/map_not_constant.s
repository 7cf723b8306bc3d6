; expect: 6 map-not-constant
; The map number comes from the probed function's argument.
        ldxdw r6, [r1+40]
        stxdw [r10-8], r6
        mov64 r1, r6
        mov64 r2, r10
        add64 r2, -8
        mov64 r3, 1
        call aggregate
        mov64 r0, 0
        exit
