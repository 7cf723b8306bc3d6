map 0 @stacks: key (kstack[8]) 64 bytes, value Count 8 bytes, 4096 entries
record 0 (40 bytes): printf "{%s [0]}" [@8:kstack[4]]
end: PrintMap(MapId(0))
probe kernel.function("demo_kernel::vm::fault")
  at demo_kernel::vm::fault: dynamic 0xffffffff80102000 expecting 55, 58 instructions
    mov64 r9, r1
    mov64 r6, 0
    stdw [r10-64], 0
    stdw [r10-56], 0
    stdw [r10-48], 0
    stdw [r10-40], 0
    stdw [r10-32], 0
    stdw [r10-24], 0
    stdw [r10-16], 0
    stdw [r10-8], 0
    mov64 r1, r10
    add64 r1, -64
    mov64 r2, 64
    call stack_trace
    ldxdw r0, [r10-64]
    stxdw [r10-128], r0
    ldxdw r0, [r10-56]
    stxdw [r10-120], r0
    ldxdw r0, [r10-48]
    stxdw [r10-112], r0
    ldxdw r0, [r10-40]
    stxdw [r10-104], r0
    ldxdw r0, [r10-32]
    stxdw [r10-96], r0
    ldxdw r0, [r10-24]
    stxdw [r10-88], r0
    ldxdw r0, [r10-16]
    stxdw [r10-80], r0
    ldxdw r0, [r10-8]
    stxdw [r10-72], r0
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -128
    mov64 r3, r6
    call aggregate
    stdw [r10-32], 0
    stdw [r10-24], 0
    stdw [r10-16], 0
    stdw [r10-8], 0
    mov64 r1, r10
    add64 r1, -32
    mov64 r2, 32
    call stack_trace
    stdw [r10-72], 0
    ldxdw r0, [r10-32]
    stxdw [r10-64], r0
    ldxdw r0, [r10-24]
    stxdw [r10-56], r0
    ldxdw r0, [r10-16]
    stxdw [r10-48], r0
    ldxdw r0, [r10-8]
    stxdw [r10-40], r0
    mov64 r1, r10
    add64 r1, -72
    mov64 r2, 40
    call emit
    mov64 r0, 0
    exit
