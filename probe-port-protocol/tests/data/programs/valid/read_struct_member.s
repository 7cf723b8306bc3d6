; Follow a pointer chain: arg0->parent (offset 24), then parent->id (offset 8), with
; fault-tolerant kernel reads; a fault leaves zero and returns EFAULT.
        ldxdw r3, [r1+40]
        add64 r3, 24
        mov64 r1, r10
        add64 r1, -8
        mov64 r2, 8
        call read_kernel
        jslt r0, 0, out
        ldxdw r3, [r10-8]
        add64 r3, 8
        mov64 r1, r10
        add64 r1, -16
        mov64 r2, 4
        call read_kernel
        ldxw r0, [r10-16]
out:
        exit
