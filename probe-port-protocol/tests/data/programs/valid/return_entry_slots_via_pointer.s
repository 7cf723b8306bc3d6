; Return program reading entry slots 0-7 through a context pointer moved to the
; first entry slot, summing them and emitting the sum.
        mov64 r6, r1
        add64 r6, 192           ; entry slots start at context slot 24
        ldxdw r0, [r6+0]
        ldxdw r2, [r6+8]
        add64 r0, r2
        ldxdw r2, [r6+56]       ; the last entry slot, ending at byte 256
        add64 r0, r2
        ldxw r2, [r6+60]        ; its upper half
        add64 r0, r2
        stxdw [r10-8], r0
        mov64 r1, r10
        add64 r1, -8
        mov64 r2, 8
        call emit
        exit
