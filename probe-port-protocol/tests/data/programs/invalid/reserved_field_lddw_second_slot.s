; expect: 1 reserved-field
; The second slot of an lddw must have code, registers and offset zero; this one
; names a register. The error points at the second slot.
        .raw 0x1800000001000000
        .raw 0x0001000000000000
        exit
