; expect: 1 reserved-field
; exit with a non-zero immediate.
        mov64 r0, 0
        .raw 0x9500000001000000
