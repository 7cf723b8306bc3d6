; expect: 2 stack-out-of-bounds
; An 8-byte load at r10-4 straddles the top of the stack.
        mov64 r2, r10
        add64 r2, -4
        ldxdw r0, [r2+0]
        exit
