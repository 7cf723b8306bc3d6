; Every arithmetic operation, both sources, both widths; r10 may be a source.
        ldxdw r0, [r1+40]
        mov64 r2, 3
        mov64 r9, r10
        add64 r9, r10
        add64 r0, 1
        add64 r0, r2
        sub64 r0, 1
        sub64 r0, r2
        mul64 r0, 3
        mul64 r0, r2
        div64 r0, 2
        div64 r0, r2
        sdiv64 r0, -2
        sdiv64 r0, r2
        or64 r0, 0x10
        or64 r0, r2
        and64 r0, 0xffff
        and64 r0, r2
        lsh64 r0, 63
        lsh64 r0, r2
        rsh64 r0, 1
        rsh64 r0, r2
        neg64 r0
        mod64 r0, 5
        mod64 r0, r2
        smod64 r0, -5
        smod64 r0, r2
        xor64 r0, 0x55
        xor64 r0, r2
        mov64 r3, r0
        mov64 r3, -1
        arsh64 r0, 0
        arsh64 r0, r2
        mov64sx8 r4, r3
        mov64sx16 r4, r3
        mov64sx32 r4, r3
        add32 r0, 1
        add32 r0, r2
        sub32 r0, 1
        sub32 r0, r2
        mul32 r0, 3
        mul32 r0, r2
        div32 r0, 2
        div32 r0, r2
        sdiv32 r0, -2
        sdiv32 r0, r2
        or32 r0, 0x10
        or32 r0, r2
        and32 r0, 0xffff
        and32 r0, r2
        lsh32 r0, 31
        lsh32 r0, r2
        rsh32 r0, 1
        rsh32 r0, r2
        neg32 r0
        mod32 r0, 5
        mod32 r0, r2
        smod32 r0, -5
        smod32 r0, r2
        xor32 r0, 0x55
        xor32 r0, r2
        mov32 r5, r0
        mov32 r5, 7
        arsh32 r0, 31
        arsh32 r0, r2
        mov32sx8 r4, r3
        mov32sx16 r4, r3
        le16 r4
        le32 r4
        le64 r4
        be16 r4
        be32 r4
        be64 r4
        bswap16 r4
        bswap32 r4
        bswap64 r4
        add64 r0, r4
        add64 r0, r5
        exit
