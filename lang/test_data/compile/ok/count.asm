map 0 @sends: key (u64) 8 bytes, value Count 8 bytes, 4096 entries
end: PrintMap(MapId(0))
probe kernel.function("port_send")
  at demo_kernel::ipc::ports::port_send: dynamic 0xffffffff80101000 expecting 55, 14 instructions
    mov64 r9, r1
    mov64 r6, 0
    ldxdw r7, [r9+40]
    mov32 r7, r7
    stxdw [r10-8], r7
    ldxdw r0, [r10-8]
    stxdw [r10-16], r0
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -16
    mov64 r3, r6
    call aggregate
    mov64 r0, 0
    exit
