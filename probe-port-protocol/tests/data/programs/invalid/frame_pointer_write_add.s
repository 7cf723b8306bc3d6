; expect: 1 frame-pointer-write
; Moving the frame pointer itself: copy it to another register first.
        mov64 r0, 0
        add64 r10, -8
        exit
