; expect: 2 uninitialized-register
; emit's size in r2 was never set.
        mov64 r1, r10
        add64 r1, -8
        call emit
        mov64 r0, 0
        exit
