; expect: 2 bad-entry-slot
; kind: entry
; The slot number must be a known constant.
        ldxdw r2, [r1+40]
        ldxdw r1, [r1+32]
        call entry_save
        mov64 r0, 0
        exit
