; expect: 0 jump-out-of-range
; A long forward jump past the end.
        jne r1, 0, +1000
        mov64 r0, 0
        exit
