; expect: 0 frame-pointer-write
; A load into r10.
        ldxdw r10, [r1+0]
        mov64 r0, 0
        exit
