; expect: 1 bad-register
; A load based on r12.
        mov64 r0, 0
        ldxdw r0, [r12+0]
        exit
