; expect: 1 unknown-opcode
; exit and call exist only in the JMP class, not JMP32.
        mov64 r0, 0
        .raw 0x9600000000000000
