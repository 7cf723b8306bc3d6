; expect: 4 bad-size
; The size comes from the probed function's argument.
        ldxdw r2, [r1+32]
        ldxdw r3, [r1+40]
        mov64 r1, r10
        add64 r1, -64
        call read_kernel_str
        mov64 r0, 0
        exit
