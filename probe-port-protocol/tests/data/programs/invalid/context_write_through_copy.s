; expect: 1 context-write
; A copy of the context pointer is still the context.
        mov64 r6, r1
        stdw [r6+16], 0
        mov64 r0, 0
        exit
