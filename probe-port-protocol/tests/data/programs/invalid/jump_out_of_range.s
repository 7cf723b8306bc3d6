; expect: 1 jump-out-of-range
; The target is one past the last slot.
        mov64 r0, 0
        ja +1
        exit
