; expect: 0 unknown-opcode
; A sign-extending load of 8 bytes does not exist (MEMSX is B, H, W only).
        .raw 0x9910000000000000
        exit
