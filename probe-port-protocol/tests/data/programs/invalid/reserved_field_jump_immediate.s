; expect: 1 reserved-field
; A register-source jump does not use its immediate.
        mov64 r0, 0
        .raw 0x1d01000007000000
        exit
