map 0 @big: key () 1 bytes, value Count 8 bytes, 1 entries
end: PrintMap(MapId(0))
probe kernel.marker("ipc:send")
  at marker ipc:send: marker #0, 16 instructions
    mov64 r9, r1
    ldxdw r6, [r9+16]
    mov32 r6, r6
    jle r6, 16, L14
    ldxdw r6, [r9]
    mov32 r6, r6
    jeq r6, 0, L14
    mov64 r6, 0
    stdw [r10-8], 0
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, r6
    call aggregate
L14:
    mov64 r0, 0
    exit
