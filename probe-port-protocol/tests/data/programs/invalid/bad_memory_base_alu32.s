; expect: 1 bad-memory-base
; A 32-bit copy of the frame pointer is a plain number.
        mov32 r2, r10
        stdw [r2-8], 1
        mov64 r0, 0
        exit
