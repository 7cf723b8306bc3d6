; expect: 0 unknown-helper
; A negative helper number.
        .raw 0x85000000ffffffff
        exit
