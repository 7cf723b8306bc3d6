; expect: 3 bad-entry-slot
; kind: entry
; There are 8 entry slots, 0 to 7.
        call time_ns
        mov64 r2, r0
        mov64 r1, 8
        call entry_save
        mov64 r0, 0
        exit
