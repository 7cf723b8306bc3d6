; expect: 2 jump-backward
; ja32 with a negative distance.
        mov64 r0, 0
        mov64 r1, 0
        ja32 -2
        exit
