; expect: 5 helper-buffer-out-of-bounds
; Map 1 has 8-byte keys: a key at r10-4 runs past the top of the stack.
        mov64 r1, 1
        mov64 r2, r10
        add64 r2, -4
        mov64 r3, r10
        add64 r3, -16
        call map_lookup
        mov64 r0, 0
        exit
