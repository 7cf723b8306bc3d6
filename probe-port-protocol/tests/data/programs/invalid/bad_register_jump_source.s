; expect: 1 bad-register
; A comparison with r13.
        mov64 r0, 0
        jeq r0, r13, +0
        exit
