; expect: 1 shift-out-of-range
; A 32-bit shift by 32.
        mov64 r0, 1
        rsh32 r0, 32
        exit
