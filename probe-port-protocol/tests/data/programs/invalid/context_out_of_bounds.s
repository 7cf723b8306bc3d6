; expect: 0 context-out-of-bounds
; The context is 256 bytes: offset 256 is past it.
        ldxdw r0, [r1+256]
        exit
