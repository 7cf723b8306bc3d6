; expect: 1 fall-off-end
; An lddw filling the last two slots.
        mov64 r0, 0
        lddw r0, 1
