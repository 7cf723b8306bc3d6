; expect: 4 helper-buffer-out-of-bounds
; A 16-byte read into an 8-byte slot at the top of the stack.
        ldxdw r3, [r1+40]
        mov64 r1, r10
        add64 r1, -8
        mov64 r2, 16
        call read_kernel
        mov64 r0, 0
        exit
