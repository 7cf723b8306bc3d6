map 0 @ns: key (u64) 8 bytes, value Avg 16 bytes, 4096 entries
record 0 (24 bytes): printf "owner {%u [0]} aged {%u [1]}\n" [@8:u64, @16:u64]
end: PrintMap(MapId(0))
probe kernel.function("demo_kernel::vm::age").return
  at demo_kernel::vm::age.return: return of 0xffffffff80102400 expecting 55, 37 instructions, entry program 23 instructions
  entry program:
    mov64 r9, r1
    call time_ns
    mov64 r6, r0
    mov64 r1, 0
    mov64 r2, r6
    call entry_save
    ldxdw r6, [r9+40]
    mov64 r1, 1
    mov64 r2, r6
    call entry_save
    ldxdw r6, [r9+40]
    add64 r6, 16
    mov64 r1, r10
    add64 r1, -8
    mov64 r2, 4
    mov64 r3, r6
    call read_kernel
    ldxw r6, [r10-8]
    mov64 r1, 2
    mov64 r2, r6
    call entry_save
    mov64 r0, 0
    exit
  handler:
    mov64 r9, r1
    call time_ns
    mov64 r6, r0
    ldxdw r7, [r9+192]
    sub64 r6, r7
    ldxdw r7, [r9+200]
    add64 r7, 16
    mov64 r1, r10
    add64 r1, -8
    mov64 r2, 4
    mov64 r3, r7
    call read_kernel
    ldxw r7, [r10-8]
    stxdw [r10-8], r7
    ldxdw r0, [r10-8]
    stxdw [r10-16], r0
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -16
    mov64 r3, r6
    call aggregate
    ldxdw r6, [r9+208]
    stxdw [r10-8], r6
    ldxdw r6, [r9]
    mov32 r6, r6
    stxdw [r10-16], r6
    stdw [r10-40], 0
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
