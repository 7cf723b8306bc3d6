; expect: 1 bad-memory-base
; A store to a constant address.
        mov64 r2, 4096
        stdw [r2+0], 1
        mov64 r0, 0
        exit
