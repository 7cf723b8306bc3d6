; expect: 1 helper-arg-not-stack
; emit's buffer is the context, not the stack.
        mov64 r2, 8
        call emit
        mov64 r0, 0
        exit
