; expect: 0 unknown-opcode
; A legacy packet load (LD | ABS | W): only lddw is allowed in the LD class.
        .raw 0x2000000000000000
        exit
