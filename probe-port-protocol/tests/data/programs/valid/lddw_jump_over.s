; A 64-bit constant, then jumps over another lddw (a jump may land right after
; the second slot, never on it).
        lddw r0, 0x1122334455667788
        ldxdw r2, [r1+40]
        jeq r2, 0, keep
        lddw r0, -1
keep:
        ja +2
        lddw r3, 0xffffffffffffffff
        rsh64 r0, 8
        exit
