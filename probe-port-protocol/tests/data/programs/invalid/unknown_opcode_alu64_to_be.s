; expect: 1 unknown-opcode
; In the ALU64 class only the unconditional byte swap (source bit 0) exists.
        mov64 r0, 1
        .raw 0xdf00000010000000
        exit
