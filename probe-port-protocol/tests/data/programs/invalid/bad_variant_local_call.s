; expect: 1 bad-variant
; A BPF-to-BPF call (source 1) is refused: there are no local functions.
        mov64 r0, 0
        .raw 0x8510000001000000
        exit
