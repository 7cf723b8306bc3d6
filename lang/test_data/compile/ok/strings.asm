map 0 @switch_to: key (string[16]) 16 bytes, value Count 8 bytes, 4096 entries
record 0 (48 bytes): printf "{%s [0]} {%d [1]}\n" [@8:string[32], @40:i64]
end: PrintMap(MapId(0))
probe kernel.function("demo_kernel::sched::switch_to")
  at demo_kernel::sched::switch_to: dynamic 0xffffffff80104000 expecting 55, 47 instructions
    mov64 r9, r1
    mov64 r1, r10
    add64 r1, -16
    mov64 r2, 16
    call task_name
    ldxdw r0, [r10-16]
    lddw r1, 0x312d72656b726f77
    jne r0, r1, L16
    ldxdw r0, [r10-8]
    mov64 r1, 255
    and64 r0, r1
    mov64 r1, 0
    jne r0, r1, L16
    mov64 r6, 1
    ja L17
L16:
    mov64 r6, 0
L17:
    jeq r6, 0, L45
    ldxdw r6, [r9+32]
    add64 r6, 8
    mov64 r1, r10
    add64 r1, -16
    mov64 r2, 16
    mov64 r3, r6
    call read_kernel
    ldxdw r0, [r10-16]
    lddw r1, 0xffffffffff
    and64 r0, r1
    mov64 r1, 0x656c6469
    jne r0, r1, L33
    mov64 r6, 0
    ja L34
L33:
    mov64 r6, 1
L34:
    jeq r6, 0, L45
    mov64 r6, 0
    ldxdw r0, [r10-16]
    stxdw [r10-32], r0
    ldxdw r0, [r10-8]
    stxdw [r10-24], r0
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -32
    mov64 r3, r6
    call aggregate
L45:
    mov64 r0, 0
    exit
probe kernel.marker("test:label")
  at marker test:label: marker #5, 31 instructions
    mov64 r9, r1
    ldxdw r6, [r9]
    stdw [r10-32], 0
    stdw [r10-24], 0
    stdw [r10-16], 0
    stdw [r10-8], 0
    mov64 r1, r10
    add64 r1, -32
    mov64 r2, 32
    mov64 r3, r6
    call read_kernel_str
    ldxdw r6, [r9+8]
    mov64sx32 r6, r6
    stxdw [r10-40], r6
    stdw [r10-88], 0
    ldxdw r0, [r10-32]
    stxdw [r10-80], r0
    ldxdw r0, [r10-24]
    stxdw [r10-72], r0
    ldxdw r0, [r10-16]
    stxdw [r10-64], r0
    ldxdw r0, [r10-8]
    stxdw [r10-56], r0
    ldxdw r0, [r10-40]
    stxdw [r10-48], r0
    mov64 r1, r10
    add64 r1, -88
    mov64 r2, 48
    call emit
    mov64 r0, 0
    exit
