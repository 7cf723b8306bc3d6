; expect: 0 frame-pointer-write
; A 64-bit immediate into r10.
        lddw r10, 5
        mov64 r0, 0
        exit
