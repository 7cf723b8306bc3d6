; expect: 2 uninitialized-register
; A helper call clobbers r1-r5: the context pointer is gone after it.
        ldxdw r6, [r1+40]
        call cpu
        ldxdw r7, [r1+32]
        mov64 r0, 0
        exit
