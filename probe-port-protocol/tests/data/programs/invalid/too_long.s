; expect: 4 too-long
; max-insns: 4
; Five slots against a limit of four: the first slot over the limit is reported.
        mov64 r0, 0
        mov64 r0, 1
        mov64 r0, 2
        mov64 r0, 3
        exit
