; expect: 4 bad-size
; read_kernel of 513 bytes: more than the whole stack.
        ldxdw r3, [r1+40]
        mov64 r1, r10
        add64 r1, -512
        mov64 r2, 513
        call read_kernel
        mov64 r0, 0
        exit
