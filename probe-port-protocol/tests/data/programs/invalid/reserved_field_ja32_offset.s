; expect: 1 reserved-field
; ja32 keeps its distance in the immediate; the 16-bit offset must be zero.
        mov64 r0, 0
        .raw 0x0600010000000000
        exit
