; expect: 2 jump-backward
; A counted loop: the verifier cannot bound it, so every backward jump is refused
; (the language unrolls loops instead).
        mov64 r0, 0
loop:
        add64 r0, 1
        jlt r0, 10, loop
        exit
