record 0 (72 bytes): printf "{%s [0]} {%u [1]} {%d [2]} {%s [3]} {%p [4]} {%s [5]}\n" [@8:string[16], @24:u64, @32:i64, @40:symbol, @48:pointer, @56:string[16]]
probe kernel.function("demo_kernel::sched::switch_to")
  at demo_kernel::sched::switch_to: dynamic 0xffffffff80104000 expecting 55, 45 instructions
    mov64 r9, r1
    mov64 r1, r10
    add64 r1, -16
    mov64 r2, 16
    call task_name
    ldxdw r6, [r9+8]
    mov32 r6, r6
    stxdw [r10-24], r6
    mov64 r6, 1
    neg64 r6
    stxdw [r10-32], r6
    ldxdw r6, [r9+128]
    stxdw [r10-40], r6
    ldxdw r6, [r9+32]
    stxdw [r10-48], r6
    ldxdw r6, [r9+32]
    add64 r6, 8
    mov64 r1, r10
    add64 r1, -64
    mov64 r2, 16
    mov64 r3, r6
    call read_kernel
    stdw [r10-136], 0
    ldxdw r0, [r10-16]
    stxdw [r10-128], r0
    ldxdw r0, [r10-8]
    stxdw [r10-120], r0
    ldxdw r0, [r10-24]
    stxdw [r10-112], r0
    ldxdw r0, [r10-32]
    stxdw [r10-104], r0
    ldxdw r0, [r10-40]
    stxdw [r10-96], r0
    ldxdw r0, [r10-48]
    stxdw [r10-88], r0
    ldxdw r0, [r10-64]
    stxdw [r10-80], r0
    ldxdw r0, [r10-56]
    stxdw [r10-72], r0
    mov64 r1, r10
    add64 r1, -136
    mov64 r2, 72
    call emit
    mov64 r0, 0
    exit
