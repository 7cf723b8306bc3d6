; expect: 5 map-kind-mismatch
; map_update on map 2, a count aggregation.
        mov64 r1, 2
        mov64 r2, r10
        add64 r2, -8
        mov64 r3, r10
        add64 r3, -16
        call map_update
        mov64 r0, 0
        exit
