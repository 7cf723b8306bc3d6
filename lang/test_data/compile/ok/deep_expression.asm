map 0 @x: key () 1 bytes, value Sum 8 bytes, 1 entries
end: PrintMap(MapId(0))
probe kernel.function("demo_kernel::sys::dispatch")
  at demo_kernel::sys::dispatch: dynamic 0xffffffff80103000 expecting 55, 26 instructions
    mov64 r9, r1
    ldxdw r6, [r9+32]
    ldxdw r7, [r9+8]
    ldxdw r8, [r9+16]
    stxdw [r10-8], r8
    ldxdw r8, [r9+40]
    mov32 r8, r8
    stxdw [r10-16], r8
    ldxdw r8, [r9+32]
    add64 r8, 1
    mov64 r0, r8
    ldxdw r8, [r10-16]
    div64 r8, r0
    mov64 r0, r8
    ldxdw r8, [r10-8]
    sub64 r8, r0
    mul64 r7, r8
    add64 r6, r7
    stdw [r10-24], 0
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -24
    mov64 r3, r6
    call aggregate
    mov64 r0, 0
    exit
