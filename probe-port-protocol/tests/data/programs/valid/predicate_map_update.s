; Remember the last size passed to a function, per task, when it is over 4096.
; The first argument (rdi, DWARF register 5) is context slot 5, at offset 40.
        ldxdw r6, [r1+40]
        jle r6, 4096, done
        call task_id
        stxdw [r10-8], r0       ; key: the task
        stxdw [r10-16], r6      ; value: the size
        mov64 r1, 1             ; map 1: hash map, 8-byte key and value
        mov64 r2, r10
        add64 r2, -8
        mov64 r3, r10
        add64 r3, -16
        call map_update
done:
        mov64 r0, 0
        exit
