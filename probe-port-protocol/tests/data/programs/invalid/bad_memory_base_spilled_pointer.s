; expect: 2 bad-memory-base
; Stack contents are not tracked: a pointer loaded back from the stack is a number.
        stxdw [r10-8], r10
        ldxdw r2, [r10-8]
        stdw [r2-16], 1
        mov64 r0, 0
        exit
