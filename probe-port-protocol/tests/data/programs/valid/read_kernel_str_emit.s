; Emit a record of the probe number, a fault flag and the path name the second
; argument (rsi, DWARF 4: offset 32) points to, at most 63 bytes and a NUL.
; Record layout: [r10-80] probe, [r10-72] fault flag, [r10-64..r10) the string.
        ldxdw r6, [r1+32]
        ldxdw r7, [r1+144]
        stxdw [r10-80], r7
        mov64 r1, r10
        add64 r1, -64
        mov64 r2, 64
        mov64 r3, r6
        call read_kernel_str
        mov64 r8, 0
        jsge r0, 0, record      ; EFAULT: the helper zeroed the buffer
        mov64 r8, 1
record:
        stxdw [r10-72], r8
        mov64 r1, r10
        add64 r1, -80
        mov64 r2, 80
        call emit
        mov64 r0, 0
        exit
