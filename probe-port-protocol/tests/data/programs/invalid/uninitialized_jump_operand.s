; expect: 1 uninitialized-register
; Comparing an unwritten register.
        mov64 r0, 0
        jeq r5, 0, +0
        exit
