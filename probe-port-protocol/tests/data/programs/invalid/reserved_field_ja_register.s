; expect: 0 reserved-field
; ja uses no register.
        .raw 0x0501000000000000
        mov64 r0, 0
        exit
