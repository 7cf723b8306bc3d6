; expect: 1 unknown-opcode
; ja has no register form.
        mov64 r0, 0
        .raw 0x0d00000000000000
        exit
