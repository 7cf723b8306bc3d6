; expect: 3 jump-into-lddw
; Jumping over the first lddw into the second half of the next one.
        mov64 r0, 0
        lddw r2, 1
        ja +3
        lddw r3, 2
        lddw r4, 3
        exit
