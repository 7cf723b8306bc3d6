; expect: 5 helper-buffer-out-of-bounds
; Map 1 has 8-byte values: a value at r10-516 starts below the stack.
        mov64 r1, 1
        mov64 r2, r10
        add64 r2, -8
        mov64 r3, r10
        add64 r3, -516
        call map_update
        mov64 r0, 0
        exit
