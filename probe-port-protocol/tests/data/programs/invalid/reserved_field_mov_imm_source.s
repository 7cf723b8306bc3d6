; expect: 0 reserved-field
; mov64 with an immediate must have source register 0; this one says r3.
        .raw 0xb730000005000000
        exit
