; expect: 1 bad-variant
; div64 with offset 2: only 0 (unsigned) and 1 (signed) are defined.
        mov64 r0, 7
        .raw 0x3700020003000000
        exit
