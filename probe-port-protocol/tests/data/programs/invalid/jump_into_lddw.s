; expect: 1 jump-into-lddw
; The target (slot 3) is the second half of the lddw in slots 2 and 3.
        mov64 r0, 0
        jeq r1, 0, +1
        lddw r0, 0x1122334455667788
        exit
