; expect: 0 stack-out-of-bounds
; The stack is 512 bytes: r10-520 is below it.
        stdw [r10-520], 1
        mov64 r0, 0
        exit
