; Division and modulo by an immediate zero are defined by the ISA (div gives 0, mod
; leaves the destination unchanged), so the verifier allows them.
        ldxdw r0, [r1+40]
        ldxdw r2, [r1+32]
        div64 r0, 0
        mod64 r2, 0
        sdiv64 r2, 0
        smod64 r2, 0
        div32 r2, 0
        mod32 r2, 0
        sdiv32 r2, 0
        smod32 r2, 0
        mov64 r3, 0
        div64 r2, r3
        mod64 r2, r3
        add64 r0, r2
        exit
