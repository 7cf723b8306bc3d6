; expect: 1 jump-backward
; ja -1 jumps to itself: an endless loop.
        mov64 r0, 0
        ja -1
        exit
