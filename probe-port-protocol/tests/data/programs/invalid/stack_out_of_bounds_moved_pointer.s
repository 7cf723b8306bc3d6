; expect: 2 stack-out-of-bounds
; r2 = r10-600, so [r2+80] is r10-520.
        mov64 r2, r10
        sub64 r2, 600
        ldxdw r0, [r2+80]
        exit
