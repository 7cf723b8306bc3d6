; expect: 1 unknown-opcode
; A call through a register (JMP | X | CALL) is refused: helpers are called by number.
        mov64 r0, 0
        .raw 0x8d01000000000000
        exit
