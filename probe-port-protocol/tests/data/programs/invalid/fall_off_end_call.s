; expect: 1 fall-off-end
; A helper call in the last slot returns into nothing.
        mov64 r0, 0
        call cpu
