; expect: 0 misaligned-access
; An 8-byte store at r10-12.
        stxdw [r10-12], r1
        mov64 r0, 0
        exit
