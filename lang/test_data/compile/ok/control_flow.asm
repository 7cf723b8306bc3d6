map 0 @sends: key () 1 bytes, value Count 8 bytes, 1 entries
map 1 @receives: key () 1 bytes, value Count 8 bytes, 1 entries
map 2 @kinds: key (i64) 8 bytes, value Count 8 bytes, 4096 entries
end: PrintMap(MapId(0))
end: PrintMap(MapId(1))
end: PrintMap(MapId(2))
probe kernel.function("demo_kernel::sys::dispatch")
  at demo_kernel::sys::dispatch: dynamic 0xffffffff80103000 expecting 55, 48 instructions
    mov64 r9, r1
    ldxdw r6, [r9+40]
    mov32 r6, r6
    jle r6, 2, L6
    mov64 r6, 1
    ja L7
L6:
    mov64 r6, 0
L7:
    stxdw [r10-8], r6
    ldxdw r6, [r9+40]
    mov32 r6, r6
    jne r6, 0, L19
    mov64 r6, 0
    stdw [r10-16], 0
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -16
    mov64 r3, r6
    call aggregate
    ja L36
L19:
    ldxdw r6, [r9+40]
    mov32 r6, r6
    jeq r6, 1, L24
    ldxdw r6, [r9+32]
    jne r6, 0, L33
L24:
    mov64 r6, 0
    stdw [r10-16], 0
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -16
    mov64 r3, r6
    call aggregate
    ja L46
    ja L36
L33:
    ldxdw r6, [r10-8]
    add64 r6, 10
    stxdw [r10-8], r6
L36:
    mov64 r6, 0
    ldxdw r7, [r10-8]
    stxdw [r10-16], r7
    ldxdw r0, [r10-16]
    stxdw [r10-24], r0
    mov64 r1, 2
    mov64 r2, r10
    add64 r2, -24
    mov64 r3, r6
    call aggregate
L46:
    mov64 r0, 0
    exit
