; expect: 1 unknown-opcode
; An atomic add to the stack (STX | ATOMIC | DW, imm 0 = add): atomics are refused.
        mov64 r1, 1
        .raw 0xdb1af8ff00000000
        mov64 r0, 0
        exit
