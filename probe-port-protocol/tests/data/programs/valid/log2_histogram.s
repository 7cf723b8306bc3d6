; Log2 histogram of a function's third argument (rdx, DWARF 1: offset 8), keyed by
; the number of the probe that fired (context slot 18, offset 144).
        ldxdw r6, [r1+8]
        ldxdw r7, [r1+144]
        stxdw [r10-8], r7
        mov64 r1, 3             ; map 3: log2 histogram, 8-byte key
        mov64 r2, r10
        add64 r2, -8
        mov64 r3, r6
        call aggregate
        mov64 r0, 0
        exit
