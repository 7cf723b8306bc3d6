; expect: 0 context-write
; Not even an immediate store.
        stw [r1+8], 1
        mov64 r0, 0
        exit
