; expect: 1 bad-memory-base
; Dereferencing a kernel pointer directly: that must go through read_kernel.
        ldxdw r2, [r1+40]
        ldxdw r0, [r2+0]
        exit
