; expect: 0 frame-pointer-write
; r10 is read-only.
        mov64 r10, 0
        mov64 r0, 0
        exit
