; expect: 0 uninitialized-register
; add reads its destination.
        add64 r6, 1
        mov64 r0, 0
        exit
