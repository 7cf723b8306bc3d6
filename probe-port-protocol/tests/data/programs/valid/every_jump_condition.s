; Every jump condition, both widths, both sources, each skipping one increment.
        ldxdw r6, [r1+40]
        ldxdw r7, [r1+32]
        mov64 r0, 0
        jeq r6, 5, +1
        add64 r0, 1
        jeq r6, r7, +1
        add64 r0, 1
        jgt r6, 5, +1
        add64 r0, 1
        jgt r6, r7, +1
        add64 r0, 1
        jge r6, 5, +1
        add64 r0, 1
        jge r6, r7, +1
        add64 r0, 1
        jset r6, 5, +1
        add64 r0, 1
        jset r6, r7, +1
        add64 r0, 1
        jne r6, 5, +1
        add64 r0, 1
        jne r6, r7, +1
        add64 r0, 1
        jsgt r6, 5, +1
        add64 r0, 1
        jsgt r6, r7, +1
        add64 r0, 1
        jsge r6, 5, +1
        add64 r0, 1
        jsge r6, r7, +1
        add64 r0, 1
        jlt r6, 5, +1
        add64 r0, 1
        jlt r6, r7, +1
        add64 r0, 1
        jle r6, 5, +1
        add64 r0, 1
        jle r6, r7, +1
        add64 r0, 1
        jslt r6, 5, +1
        add64 r0, 1
        jslt r6, r7, +1
        add64 r0, 1
        jsle r6, 5, +1
        add64 r0, 1
        jsle r6, r7, +1
        add64 r0, 1
        jeq32 r6, 5, +1
        add64 r0, 1
        jeq32 r6, r7, +1
        add64 r0, 1
        jgt32 r6, 5, +1
        add64 r0, 1
        jgt32 r6, r7, +1
        add64 r0, 1
        jge32 r6, 5, +1
        add64 r0, 1
        jge32 r6, r7, +1
        add64 r0, 1
        jset32 r6, 5, +1
        add64 r0, 1
        jset32 r6, r7, +1
        add64 r0, 1
        jne32 r6, 5, +1
        add64 r0, 1
        jne32 r6, r7, +1
        add64 r0, 1
        jsgt32 r6, 5, +1
        add64 r0, 1
        jsgt32 r6, r7, +1
        add64 r0, 1
        jsge32 r6, 5, +1
        add64 r0, 1
        jsge32 r6, r7, +1
        add64 r0, 1
        jlt32 r6, 5, +1
        add64 r0, 1
        jlt32 r6, r7, +1
        add64 r0, 1
        jle32 r6, 5, +1
        add64 r0, 1
        jle32 r6, r7, +1
        add64 r0, 1
        jslt32 r6, 5, +1
        add64 r0, 1
        jslt32 r6, r7, +1
        add64 r0, 1
        jsle32 r6, 5, +1
        add64 r0, 1
        jsle32 r6, r7, +1
        add64 r0, 1
        ja +1
        add64 r0, 1
        ja32 +1
        add64 r0, 1
        ja +0
        jeq r6, r10, +0
        exit
