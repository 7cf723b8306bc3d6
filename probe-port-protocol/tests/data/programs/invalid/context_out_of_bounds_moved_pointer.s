; expect: 1 context-out-of-bounds
; r1+248 then +8 is offset 256.
        add64 r1, 248
        ldxdw r0, [r1+8]
        exit
