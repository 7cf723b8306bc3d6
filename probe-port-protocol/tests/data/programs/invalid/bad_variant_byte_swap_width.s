; expect: 1 bad-variant
; le with width 24: byte swaps are 16, 32 or 64 bits wide.
        mov64 r0, 1
        .raw 0xd400000018000000
        exit
