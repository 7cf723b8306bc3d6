; A per-task counter in a hash map: look it up (ENOENT leaves the value at zero, the
; stack starts zeroed), add one, store it back.
        call task_id
        stxdw [r10-8], r0       ; key
        stdw [r10-16], 0        ; value, zero if absent
        mov64 r1, 1
        mov64 r2, r10
        add64 r2, -8
        mov64 r3, r10
        add64 r3, -16
        call map_lookup
        ldxdw r6, [r10-16]
        add64 r6, 1
        stxdw [r10-16], r6
        mov64 r1, 1
        mov64 r2, r10
        add64 r2, -8
        mov64 r3, r10
        add64 r3, -16
        call map_update
        mov64 r0, 0
        exit
