; expect: 1 shift-out-of-range
; A shift by a negative immediate.
        mov64 r0, 1
        arsh64 r0, -1
        exit
