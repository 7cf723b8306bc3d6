map 0 @x: key () 1 bytes, value Sum 8 bytes, 1 entries
record 0 (72 bytes): printf "{%s [0]}\n" [@8:string[64]]
end: PrintMap(MapId(0))
probe kernel.function("demo_kernel::sys::dispatch")
  at demo_kernel::sys::dispatch: dynamic 0xffffffff80103000 expecting 55, 148 instructions
    mov64 r9, r1
    ldxdw r6, [r9+32]
    stxdw [r10-8], r6
    ldxdw r6, [r10-8]
    ldxdw r7, [r10-8]
    mul64 r6, r7
    stxdw [r10-16], r6
    ja L8
L8:
    ldxdw r6, [r10-16]
    stxdw [r10-24], r6
    ldxdw r6, [r9+8]
    add64 r6, 1
    stxdw [r10-32], r6
    ldxdw r6, [r10-24]
    ldxdw r7, [r10-32]
    jle r6, r7, L19
    ldxdw r6, [r10-24]
    stxdw [r10-40], r6
    ja L22
L19:
    ldxdw r6, [r10-32]
    stxdw [r10-40], r6
    ja L22
L22:
    ldxdw r6, [r10-40]
    stxdw [r10-48], r6
    mov64 r6, 2
    stxdw [r10-56], r6
    ldxdw r6, [r10-56]
    ldxdw r7, [r10-56]
    mul64 r6, r7
    stxdw [r10-64], r6
    ja L31
L31:
    ldxdw r6, [r10-48]
    ldxdw r7, [r10-64]
    add64 r6, r7
    stdw [r10-72], 0
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -72
    mov64 r3, r6
    call aggregate
    ldxdw r6, [r9+40]
    mov32 r6, r6
    stxdw [r10-8], r6
    ldxdw r6, [r10-8]
    jne r6, 1, L57
    stw [r10-16], 0x6c656979
    stw [r10-12], 100
    ldxdw r0, [r10-16]
    stxdw [r10-80], r0
    stdw [r10-72], 0
    stdw [r10-64], 0
    stdw [r10-56], 0
    stdw [r10-48], 0
    stdw [r10-40], 0
    stdw [r10-32], 0
    stdw [r10-24], 0
    ja L125
L57:
    ldxdw r6, [r10-8]
    jne r6, 2, L71
    stw [r10-16], 0x646e6573
    stw [r10-12], 0
    ldxdw r0, [r10-16]
    stxdw [r10-80], r0
    stdw [r10-72], 0
    stdw [r10-64], 0
    stdw [r10-56], 0
    stdw [r10-48], 0
    stdw [r10-40], 0
    stdw [r10-32], 0
    stdw [r10-24], 0
    ja L125
L71:
    ldxdw r6, [r10-8]
    jne r6, 3, L85
    stw [r10-16], 0x65636572
    stw [r10-12], 0x657669
    ldxdw r0, [r10-16]
    stxdw [r10-80], r0
    stdw [r10-72], 0
    stdw [r10-64], 0
    stdw [r10-56], 0
    stdw [r10-48], 0
    stdw [r10-40], 0
    stdw [r10-32], 0
    stdw [r10-24], 0
    ja L125
L85:
    ldxdw r6, [r10-8]
    jne r6, 4, L99
    stw [r10-16], 0x63756f74
    stw [r10-12], 104
    ldxdw r0, [r10-16]
    stxdw [r10-80], r0
    stdw [r10-72], 0
    stdw [r10-64], 0
    stdw [r10-56], 0
    stdw [r10-48], 0
    stdw [r10-40], 0
    stdw [r10-32], 0
    stdw [r10-24], 0
    ja L125
L99:
    ldxdw r6, [r10-8]
    jne r6, 5, L113
    stw [r10-16], 0x74746567
    stw [r10-12], 25705
    ldxdw r0, [r10-16]
    stxdw [r10-80], r0
    stdw [r10-72], 0
    stdw [r10-64], 0
    stdw [r10-56], 0
    stdw [r10-48], 0
    stdw [r10-40], 0
    stdw [r10-32], 0
    stdw [r10-24], 0
    ja L125
L113:
    stw [r10-16], 0x6e6b6e75
    stw [r10-12], 0x6e776f
    ldxdw r0, [r10-16]
    stxdw [r10-80], r0
    stdw [r10-72], 0
    stdw [r10-64], 0
    stdw [r10-56], 0
    stdw [r10-48], 0
    stdw [r10-40], 0
    stdw [r10-32], 0
    stdw [r10-24], 0
    ja L125
L125:
    stdw [r10-152], 0
    ldxdw r0, [r10-80]
    stxdw [r10-144], r0
    ldxdw r0, [r10-72]
    stxdw [r10-136], r0
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
    mov64 r1, r10
    add64 r1, -152
    mov64 r2, 72
    call emit
    mov64 r0, 0
    exit
