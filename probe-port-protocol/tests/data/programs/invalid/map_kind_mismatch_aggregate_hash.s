; expect: 4 map-kind-mismatch
; aggregate into map 1, a hash map.
        mov64 r1, 1
        mov64 r2, r10
        add64 r2, -8
        mov64 r3, 1
        call aggregate
        mov64 r0, 0
        exit
