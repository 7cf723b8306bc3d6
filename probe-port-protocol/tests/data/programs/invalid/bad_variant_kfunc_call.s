; expect: 1 bad-variant
; A kfunc call (source 2) is refused.
        mov64 r0, 0
        .raw 0x8520000001000000
        exit
