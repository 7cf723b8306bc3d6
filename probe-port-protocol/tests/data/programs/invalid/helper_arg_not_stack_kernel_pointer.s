; expect: 3 helper-arg-not-stack
; read_kernel's destination must be the stack, not a kernel address.
        ldxdw r3, [r1+40]
        ldxdw r1, [r1+32]
        mov64 r2, 8
        call read_kernel
        mov64 r0, 0
        exit
