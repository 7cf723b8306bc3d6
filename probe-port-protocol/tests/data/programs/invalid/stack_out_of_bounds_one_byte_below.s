; expect: 2 stack-out-of-bounds
; r10-513 is one byte below the stack.
        mov64 r2, r10
        add64 r2, -512
        stxb [r2-1], r1
        mov64 r0, 0
        exit
