map 0 @calls: key (u64) 8 bytes, value Count 8 bytes, 4096 entries
map 1 @returned: key () 1 bytes, value Stats 32 bytes, 1 entries
map 2 @by_first: key (u64) 8 bytes, value Sum 8 bytes, 4096 entries
record 0 (80 bytes): printf "work({%d [0]}) {%s [1]}\n" [@8:u64, @16:string[64]]
record 1 (40 bytes): printf "tick {%d [0]} {%d [1]} {%s [2, 3]}\n" [@8:i64, @16:u64, arg1=@24:i64, arg2=@32:u64]
end: PrintMap(MapId(0))
end: PrintMap(MapId(1))
end: PrintMap(MapId(2))
probe process("/usr/bin/demo-app").function("work")
  at /usr/bin/demo-app:work: user /usr/bin/demo-app at offset 0x1139, 52 instructions
    mov64 r9, r1
    mov64 r6, 0
    ldxdw r7, [r9+32]
    stxdw [r10-8], r7
    ldxdw r0, [r10-8]
    stxdw [r10-16], r0
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -16
    mov64 r3, r6
    call aggregate
    ldxdw r6, [r9+40]
    stxdw [r10-8], r6
    ldxdw r6, [r9+8]
    stdw [r10-72], 0
    stdw [r10-64], 0
    stdw [r10-56], 0
    stdw [r10-48], 0
    stdw [r10-40], 0
    stdw [r10-32], 0
    stdw [r10-24], 0
    stdw [r10-16], 0
    mov64 r1, r10
    add64 r1, -72
    mov64 r2, 64
    mov64 r3, r6
    call read_user_str
    stdw [r10-152], 0
    ldxdw r0, [r10-8]
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
    ldxdw r0, [r10-16]
    stxdw [r10-80], r0
    mov64 r1, r10
    add64 r1, -152
    mov64 r2, 80
    call emit
    mov64 r0, 0
    exit
probe process("/usr/bin/demo-app").function("work").return
  at /usr/bin/demo-app:work.return: user /usr/bin/demo-app at offset 0x1139 (return), 20 instructions, entry program 7 instructions
  entry program:
    mov64 r9, r1
    ldxdw r6, [r9+40]
    mov64 r1, 0
    mov64 r2, r6
    call entry_save
    mov64 r0, 0
    exit
  handler:
    mov64 r9, r1
    ldxdw r6, [r9]
    stdw [r10-8], 0
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, r6
    call aggregate
    ldxdw r6, [r9]
    ldxdw r7, [r9+192]
    stxdw [r10-8], r7
    ldxdw r0, [r10-8]
    stxdw [r10-16], r0
    mov64 r1, 2
    mov64 r2, r10
    add64 r2, -16
    mov64 r3, r6
    call aggregate
    mov64 r0, 0
    exit
probe process("/usr/bin/demo-app").mark("app:tick")
  at /usr/bin/demo-app:mark app:tick: user /usr/bin/demo-app at offset 0x1274, semaphore at offset 0x3028, 26 instructions
    mov64 r9, r1
    ldxdw r6, [r9+24]
    mov64sx32 r6, r6
    stxdw [r10-8], r6
    ldxdw r6, [r9+48]
    stxdw [r10-16], r6
    ldxdw r6, [r9+24]
    mov64sx32 r6, r6
    stxdw [r10-24], r6
    ldxdw r6, [r9+48]
    stxdw [r10-32], r6
    stdw [r10-72], 1
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
