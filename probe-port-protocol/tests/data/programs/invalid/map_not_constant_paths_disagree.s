; expect: 8 map-not-constant
; Map 2 on one path, map 3 on the other: not one known constant.
        ldxdw r6, [r1+40]
        mov64 r1, 2
        jeq r6, 0, chosen
        mov64 r1, 3
chosen:
        stxdw [r10-8], r6
        mov64 r2, r10
        add64 r2, -8
        mov64 r3, 1
        call aggregate
        mov64 r0, 0
        exit
