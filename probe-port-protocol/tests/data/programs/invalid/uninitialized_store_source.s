; expect: 0 uninitialized-register
; Storing an unwritten register.
        stxdw [r10-8], r4
        mov64 r0, 0
        exit
