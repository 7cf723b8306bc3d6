; expect: 3 bad-size
; emit of zero bytes.
        mov64 r1, r10
        add64 r1, -8
        mov64 r2, 0
        call emit
        mov64 r0, 0
        exit
