; expect: 2 incomplete-lddw
; An lddw first half in the last slot, even in dead code after exit.
        mov64 r0, 0
        exit
        .raw 0x1800000001000000
