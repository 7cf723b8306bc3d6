; expect: 1 bad-variant
; lddw with source 1 is Linux's map-by-fd pseudo load: refused, maps are numbers.
        mov64 r0, 0
        .raw 0x1811000001000000
        .raw 0x0000000000000000
        exit
