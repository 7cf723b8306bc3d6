; expect: 0 context-out-of-bounds
; Before the context.
        ldxw r0, [r1-4]
        exit
