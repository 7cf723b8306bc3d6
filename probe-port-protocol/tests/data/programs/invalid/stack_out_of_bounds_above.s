; expect: 0 stack-out-of-bounds
; [r10, r10+8) is above the stack.
        stdw [r10+0], 1
        mov64 r0, 0
        exit
