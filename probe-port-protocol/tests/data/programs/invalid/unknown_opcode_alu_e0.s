; expect: 1 unknown-opcode
; ALU64 operation 0xe0 does not exist.
        mov64 r0, 0
        .raw 0xe700000000000000
        exit
