record 0 (16 bytes): printf "{%u [0]}" [@8:u64]
probe kernel.function("demo_kernel::sys::dispatch")
  at demo_kernel::sys::dispatch: dynamic 0xffffffff80103000 expecting 55, 20 instructions
    mov64 r9, r1
    mov64 r6, 3
    jne r6, 0, L9
    mov64 r6, 0
    jeq r6, 0, L7
    mov64 r6, 0
    ja L8
L7:
    mov64 r6, 1
L8:
    ja L10
L9:
    mov64 r6, 2
L10:
    stxdw [r10-8], r6
    stdw [r10-24], 0
    ldxdw r0, [r10-8]
    stxdw [r10-16], r0
    mov64 r1, r10
    add64 r1, -24
    mov64 r2, 16
    call emit
    mov64 r0, 0
    exit
