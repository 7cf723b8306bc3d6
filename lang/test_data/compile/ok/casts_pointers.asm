record 0 (48 bytes): printf "{%x [0]} {%x [1]} {%d [2]} {%d [3]} {%d [4]}\n" [@8:u64, @16:u64, @24:u64, @32:i64, @40:i64]
probe kernel.function("port_send")
  at demo_kernel::ipc::ports::port_send: dynamic 0xffffffff80101000 expecting 55, 61 instructions
    mov64 r9, r1
    ldxdw r6, [r9+32]
    stxdw [r10-8], r6
    mov64 r6, 0x80200040
    mov64 r1, r10
    add64 r1, -16
    mov64 r2, 8
    mov64 r3, r6
    call read_kernel
    ldxdw r6, [r10-16]
    stxdw [r10-16], r6
    ldxdw r6, [r10-8]
    add64 r6, 16
    mov64 r1, r10
    add64 r1, -24
    mov64 r2, 8
    mov64 r3, r6
    call read_kernel
    ldxdw r6, [r10-24]
    stxdw [r10-24], r6
    ldxdw r6, [r10-8]
    add64 r6, 8
    mov64 r1, r10
    add64 r1, -32
    mov64 r2, 8
    mov64 r3, r6
    call read_kernel
    ldxdw r6, [r10-32]
    stxdw [r10-32], r6
    ldxdw r6, [r10-16]
    stxdw [r10-40], r6
    ldxdw r6, [r9+40]
    mov32 r6, r6
    mov64sx8 r6, r6
    stxdw [r10-48], r6
    ldxdw r6, [r9+32]
    add64 r6, 8
    add64 r6, 8
    ldxdw r7, [r9+32]
    add64 r7, 8
    sub64 r6, r7
    mov64 r0, 8
    sdiv64 r6, r0
    stxdw [r10-56], r6
    stdw [r10-104], 0
    ldxdw r0, [r10-24]
    stxdw [r10-96], r0
    ldxdw r0, [r10-32]
    stxdw [r10-88], r0
    ldxdw r0, [r10-40]
    stxdw [r10-80], r0
    ldxdw r0, [r10-48]
    stxdw [r10-72], r0
    ldxdw r0, [r10-56]
    stxdw [r10-64], r0
    mov64 r1, r10
    add64 r1, -104
    mov64 r2, 48
    call emit
    mov64 r0, 0
    exit
