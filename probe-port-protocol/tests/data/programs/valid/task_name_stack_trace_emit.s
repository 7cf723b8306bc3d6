; Emit the task name (16 bytes) and the first 8 kernel return addresses.
; Record layout: [r10-88] task id, [r10-80..r10-64) name, [r10-64..r10) trace.
        call task_id
        stxdw [r10-88], r0
        mov64 r1, r10
        add64 r1, -80
        mov64 r2, 16
        call task_name
        mov64 r1, r10
        add64 r1, -64
        mov64 r2, 64
        call stack_trace
        mov64 r1, r10
        add64 r1, -88
        mov64 r2, 88
        call emit
        mov64 r0, 0
        exit
