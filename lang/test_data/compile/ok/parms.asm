record 0 (40 bytes): printf "{%s [0, 1, 2, 3]}\n" [map=@8:pointer, address=@16:u64, access=@24:u64, value=@32:u64]
record 1 (32 bytes): printf "{%s [0, 1, 2]}\n" [address=@8:u64, write=@16:bool, major=@24:bool]
record 2 (40 bytes): printf "{%s [0, 1, 2, 3]}\n" [number=@8:u64, arg0=@16:u64, arg1=@24:u64, arg2=@32:u64]
probe kernel.function("demo_kernel::vm::access")
  at demo_kernel::vm::access: dynamic 0xffffffff80102200 expecting 55, 25 instructions
    mov64 r9, r1
    ldxdw r6, [r9+40]
    stxdw [r10-8], r6
    ldxdw r6, [r9+32]
    stxdw [r10-16], r6
    ldxdw r6, [r9+8]
    and64 r6, 255
    stxdw [r10-24], r6
    ldxdw r6, [r9+16]
    stxdw [r10-32], r6
    stdw [r10-72], 0
    ldxdw r0, [r10-8]
    stxdw [r10-64], r0
    ldxdw r0, [r10-16]
    stxdw [r10-56], r0
    ldxdw r0, [r10-24]
    stxdw [r10-48], r0
    ldxdw r0, [r10-32]
    stxdw [r10-40], r0
    mov64 r1, r10
    add64 r1, -72
    mov64 r2, 40
    call emit
    mov64 r0, 0
    exit
probe kernel.marker("vm:fault")
  at marker vm:fault: marker #2, 22 instructions
    mov64 r9, r1
    ldxdw r6, [r9]
    stxdw [r10-8], r6
    ldxdw r6, [r9+8]
    and64 r6, 255
    stxdw [r10-16], r6
    ldxdw r6, [r9+16]
    and64 r6, 255
    stxdw [r10-24], r6
    stdw [r10-56], 1
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
probe kernel.function("demo_kernel::sys::dispatch").return
  at demo_kernel::sys::dispatch.return: return of 0xffffffff80103000 expecting 55, 24 instructions, entry program 20 instructions
  entry program:
    mov64 r9, r1
    ldxdw r6, [r9+40]
    mov32 r6, r6
    mov64 r1, 0
    mov64 r2, r6
    call entry_save
    ldxdw r6, [r9+32]
    mov64 r1, 1
    mov64 r2, r6
    call entry_save
    ldxdw r6, [r9+8]
    mov64 r1, 2
    mov64 r2, r6
    call entry_save
    ldxdw r6, [r9+16]
    mov64 r1, 3
    mov64 r2, r6
    call entry_save
    mov64 r0, 0
    exit
  handler:
    mov64 r9, r1
    ldxdw r6, [r9+192]
    stxdw [r10-8], r6
    ldxdw r6, [r9+200]
    stxdw [r10-16], r6
    ldxdw r6, [r9+208]
    stxdw [r10-24], r6
    ldxdw r6, [r9+216]
    stxdw [r10-32], r6
    stdw [r10-72], 2
    ldxdw r0, [r10-8]
    stxdw [r10-64], r0
    ldxdw r0, [r10-16]
    stxdw [r10-56], r0
    ldxdw r0, [r10-24]
    stxdw [r10-48], r0
    ldxdw r0, [r10-32]
    stxdw [r10-40], r0
    mov64 r1, r10
    add64 r1, -72
    mov64 r2, 40
    call emit
    mov64 r0, 0
    exit
