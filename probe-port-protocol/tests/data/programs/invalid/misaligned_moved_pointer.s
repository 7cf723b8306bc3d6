; expect: 2 misaligned-access
; A 4-byte store at r10-6.
        mov64 r2, r10
        add64 r2, -6
        stxw [r2+0], r1
        mov64 r0, 0
        exit
