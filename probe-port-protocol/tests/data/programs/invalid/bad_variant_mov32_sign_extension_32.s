; expect: 0 bad-variant
; mov32 sign-extends only from 8 or 16 bits.
        .raw 0xbc10200000000000
        exit
