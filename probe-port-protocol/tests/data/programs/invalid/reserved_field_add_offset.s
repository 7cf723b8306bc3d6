; expect: 1 reserved-field
; add64 does not use its offset, which must be zero.
        mov64 r0, 0
        .raw 0x0700010001000000
        exit
