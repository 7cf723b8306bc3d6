record 0 (32 bytes): printf "{%u [0]} {%p [1]} {%u [2]}\n" [@8:u64, @16:pointer, @24:u64]
record 1 (24 bytes): printf "{%u [0]} {%x [1]}\n" [@8:u64, @16:u64]
record 2 (32 bytes): printf "{%d [0]} {%x [1]} {%d [2]}\n" [@8:u64, @16:u64, @24:u64]
probe kernel.function("port_send+0x12")
  at demo_kernel::ipc::ports::port_send+0x12: dynamic 0xffffffff80101012 expecting 48 8b 43 04, 28 instructions
    mov64 r9, r1
    ldxdw r6, [r9+56]
    add64 r6, 8
    mov64 r1, r10
    add64 r1, -8
    mov64 r2, 4
    mov64 r3, r6
    call read_kernel
    ldxw r6, [r10-8]
    stxdw [r10-8], r6
    ldxdw r6, [r9+24]
    stxdw [r10-16], r6
    mov64 r6, 32
    mov32 r6, r6
    stxdw [r10-24], r6
    stdw [r10-56], 0
    ldxdw r0, [r10-8]
    stxdw [r10-48], r0
    ldxdw r0, [r10-16]
    stxdw [r10-40], r0
    ldxdw r0, [r10-24]
    stxdw [r10-32], r0
    mov64 r1, r10
    add64 r1, -56
    mov64 r2, 32
    call emit
    mov64 r0, 0
    exit
probe kernel.statement("ipc.rs:348")
  at ipc.rs:348 (demo_kernel::ipc::ports::port_send+0x30): dynamic 0xffffffff80101030 expecting 41 8b 04 24, 18 instructions
    mov64 r9, r1
    ldxdw r6, [r9+96]
    mov32 r6, r6
    stxdw [r10-8], r6
    ldxdw r6, [r9+24]
    add64 r6, 8
    stxdw [r10-16], r6
    stdw [r10-40], 1
    ldxdw r0, [r10-8]
    stxdw [r10-32], r0
    ldxdw r0, [r10-16]
    stxdw [r10-24], r0
    mov64 r1, r10
    add64 r1, -40
    mov64 r2, 24
    call emit
    mov64 r0, 0
    exit
probe kernel.function("demo_kernel::vm::fault")
  at demo_kernel::vm::fault: dynamic 0xffffffff80102000 expecting 55, 28 instructions
    mov64 r9, r1
    ldxdw r6, [r9+8]
    and64 r6, 255
    stxdw [r10-8], r6
    ldxdw r6, [r9+32]
    stxdw [r10-16], r6
    ldxdw r6, [r9+40]
    add64 r6, 8
    mov64 r1, r10
    add64 r1, -24
    mov64 r2, 4
    mov64 r3, r6
    call read_kernel
    ldxw r6, [r10-24]
    stxdw [r10-24], r6
    stdw [r10-56], 2
    ldxdw r0, [r10-8]
    stxdw [r10-48], r0
    ldxdw r0, [r10-16]
    stxdw [r10-40], r0
    ldxdw r0, [r10-24]
    stxdw [r10-32], r0
    mov64 r1, r10
    add64 r1, -56
    mov64 r2, 32
    call emit
    mov64 r0, 0
    exit
