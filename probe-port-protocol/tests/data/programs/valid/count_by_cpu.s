; Count probe hits per CPU.
        call cpu
        stxdw [r10-8], r0
        mov64 r1, 2             ; map 2: count aggregation
        mov64 r2, r10
        add64 r2, -8
        mov64 r3, 0             ; count ignores the value
        call aggregate
        mov64 r0, 0
        exit
