; expect: 0 bad-variant
; mov64 from a register with offset 24: sign-extension widths are 8, 16 and 32.
        .raw 0xbf10180000000000
        exit
