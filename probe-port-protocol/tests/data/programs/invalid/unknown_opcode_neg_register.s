; expect: 1 unknown-opcode
; neg exists only in the immediate form.
        mov64 r0, 1
        .raw 0x8f00000000000000
        exit
