; kind: entry
; Entry program of a return site: keep the entry time and the first argument for
; the return program, in entry slots 0 and 1.
        ldxdw r6, [r1+40]
        call time_ns
        mov64 r2, r0
        mov64 r1, 0
        call entry_save
        mov64 r1, 1
        mov64 r2, r6
        call entry_save
        mov64 r0, 0
        exit
