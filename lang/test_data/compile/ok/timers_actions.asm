map 0 @hits: key (symbol) 8 bytes, value Count 8 bytes, 4096 entries
record 0 (8 bytes): print map 0 []
record 1 (8 bytes): clear map 0 []
record 2 (8 bytes): exit []
end: Print("done\n")
end: PrintMap(MapId(0))
probe timer.s(1)
  at timer every 1s: timer 1000000000ns OneCpu, 13 instructions
    mov64 r9, r1
    stdw [r10-8], 0
    mov64 r1, r10
    add64 r1, -8
    mov64 r2, 8
    call emit
    stdw [r10-8], 1
    mov64 r1, r10
    add64 r1, -8
    mov64 r2, 8
    call emit
    mov64 r0, 0
    exit
probe profile.hz(99)
  at profile every 10101010ns: timer 10101010ns EachCpu, 13 instructions
    mov64 r9, r1
    mov64 r6, 0
    ldxdw r7, [r9+128]
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
probe kernel.marker("ipc:send")
  at marker ipc:send: marker #0, 11 instructions
    mov64 r9, r1
    ldxdw r6, [r9+8]
    mov32 r6, r6
    jne r6, 99, L9
    stdw [r10-8], 2
    mov64 r1, r10
    add64 r1, -8
    mov64 r2, 8
    call emit
L9:
    mov64 r0, 0
    exit
