; expect: 1 shift-out-of-range
; A 64-bit shift by 64.
        mov64 r0, 1
        lsh64 r0, 64
        exit
