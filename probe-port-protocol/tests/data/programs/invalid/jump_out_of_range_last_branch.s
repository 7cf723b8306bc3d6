; expect: 1 jump-out-of-range
; A conditional jump in the last slot: even +0 targets the slot after the end.
        mov64 r0, 0
        jeq r0, 0, +0
