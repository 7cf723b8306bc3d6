; expect: 0 context-write
; The context is read-only.
        stxdw [r1+0], r1
        mov64 r0, 0
        exit
