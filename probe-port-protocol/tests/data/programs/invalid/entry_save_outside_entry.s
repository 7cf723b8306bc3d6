; expect: 2 entry-save-outside-entry
; entry_save belongs in the entry program of a return site, not a plain probe.
        mov64 r1, 0
        mov64 r2, 1
        call entry_save
        mov64 r0, 0
        exit
