; expect: 3 bad-memory-base
; Adding a register to a pointer, even a known constant, gives a number.
        mov64 r2, r10
        mov64 r3, -8
        add64 r2, r3
        stdw [r2+0], 1
        mov64 r0, 0
        exit
