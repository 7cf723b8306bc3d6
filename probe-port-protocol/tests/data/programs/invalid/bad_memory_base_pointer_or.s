; expect: 2 bad-memory-base
; Only add64/sub64 of an immediate keep a pointer; or64, even of 0, does not.
        mov64 r2, r10
        or64 r2, 0
        stdw [r2-8], 1
        mov64 r0, 0
        exit
