; expect: 1 jump-out-of-range
; ja32 with the largest distance.
        mov64 r0, 0
        ja32 +2147483647
        exit
