; expect: 4 unknown-map
; Map 7 is not defined.
        mov64 r1, 7
        mov64 r2, r10
        add64 r2, -8
        mov64 r3, 1
        call aggregate
        mov64 r0, 0
        exit
