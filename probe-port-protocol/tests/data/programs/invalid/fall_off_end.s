; expect: 0 fall-off-end
; No exit at all.
        mov64 r0, 0
