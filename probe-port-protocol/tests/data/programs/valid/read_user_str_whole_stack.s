; The largest buffers the stack allows: a 512-byte user string, emitted whole.
        ldxdw r3, [r1+32]
        mov64 r1, r10
        add64 r1, -512
        mov64 r2, 512
        call read_user_str
        mov64 r1, r10
        sub64 r1, 512
        mov64 r2, 512
        call emit
        ldxb r0, [r10-1]        ; the last byte
        stb [r10-512], 0        ; the first byte
        exit
