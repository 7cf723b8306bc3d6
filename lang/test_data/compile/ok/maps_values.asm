map 0 @start: key (u64) 8 bytes, value u64 8 bytes, 4096 entries
map 1 @total: key () 1 bytes, value u64 8 bytes, 1 entries
map 2 @names: key (u64) 8 bytes, value string[16] 16 bytes, 4096 entries
map 3 @wait: key () 1 bytes, value Log2Hist 520 bytes, 1 entries
map 4 @wait_by_port: key (u64) 8 bytes, value LinearHist { min: 0, max: 1000, step: 100 } 96 bytes, 4096 entries
map 5 @summary: key () 1 bytes, value Stats 32 bytes, 1 entries
end: PrintMap(MapId(0))
end: PrintMap(MapId(1))
end: PrintMap(MapId(2))
end: PrintMap(MapId(3))
end: PrintMap(MapId(4))
end: PrintMap(MapId(5))
probe kernel.function("port_send")
  at demo_kernel::ipc::ports::port_send: dynamic 0xffffffff80101000 expecting 55, 61 instructions
    mov64 r9, r1
    call time_ns
    mov64 r6, r0
    call task_id
    mov64 r7, r0
    stxdw [r10-8], r7
    ldxdw r0, [r10-8]
    stxdw [r10-16], r0
    stxdw [r10-24], r6
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -16
    mov64 r3, r10
    add64 r3, -24
    call map_update
    stdw [r10-8], 0
    stdw [r10-16], 0
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, r10
    add64 r3, -16
    call map_lookup
    ldxdw r6, [r10-16]
    ldxdw r7, [r9+32]
    add64 r7, 4
    mov64 r1, r10
    add64 r1, -24
    mov64 r2, 4
    mov64 r3, r7
    call read_kernel
    ldxw r7, [r10-24]
    add64 r6, r7
    stxdw [r10-16], r6
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, r10
    add64 r3, -16
    call map_update
    mov64 r1, r10
    add64 r1, -16
    mov64 r2, 16
    call task_name
    ldxdw r7, [r9+40]
    mov32 r7, r7
    stxdw [r10-24], r7
    ldxdw r0, [r10-24]
    stxdw [r10-32], r0
    ldxdw r0, [r10-16]
    stxdw [r10-48], r0
    ldxdw r0, [r10-8]
    stxdw [r10-40], r0
    mov64 r1, 2
    mov64 r2, r10
    add64 r2, -32
    mov64 r3, r10
    add64 r3, -48
    call map_update
    mov64 r0, 0
    exit
probe kernel.function("port_receive")
  at demo_kernel::ipc::ports::port_receive: dynamic 0xffffffff80101100 expecting 55, 54 instructions
    mov64 r9, r1
    call time_ns
    mov64 r6, r0
    call task_id
    mov64 r8, r0
    stxdw [r10-8], r8
    ldxdw r0, [r10-8]
    stxdw [r10-16], r0
    stdw [r10-24], 0
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -16
    mov64 r3, r10
    add64 r3, -24
    call map_lookup
    ldxdw r7, [r10-24]
    sub64 r6, r7
    stxdw [r10-32], r6
    call task_id
    mov64 r6, r0
    stxdw [r10-8], r6
    ldxdw r0, [r10-8]
    stxdw [r10-16], r0
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -16
    call map_delete
    ldxdw r6, [r10-32]
    stdw [r10-8], 0
    mov64 r1, 3
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, r6
    call aggregate
    ldxdw r6, [r10-32]
    ldxdw r7, [r9+40]
    mov32 r7, r7
    stxdw [r10-8], r7
    ldxdw r0, [r10-8]
    stxdw [r10-16], r0
    mov64 r1, 4
    mov64 r2, r10
    add64 r2, -16
    mov64 r3, r6
    call aggregate
    ldxdw r6, [r10-32]
    stdw [r10-8], 0
    mov64 r1, 5
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, r6
    call aggregate
    mov64 r0, 0
    exit
