; probeport example: the demo kernel's syscall-like calls and page faults.
;
; Written in the handler assembler's text form (PROTOCOL.md §9), with a few
; directives around the programs for `tools/demo` (see examples/README.md):
; `map` defines a map, `probe` starts a probe and its program, which runs to `end`,
; `fields` names the u64 words of the records the program emits.

; Calls per call number, counted on every CPU and merged by the client.
map 1 count key=8 entries=16

; sys:enter is a static marker: context slots 0.. are its arguments
; (number: U32, arg0: U64, arg1: U64, tid: U32).
probe marker sys:enter
    ldxdw r6, [r1+0]          ; the call's number
    stxdw [r10-8], r6
    mov64 r1, 1               ; map 1
    mov64 r2, r10
    add64 r2, -8              ; key: the number
    mov64 r3, 1
    call aggregate
    mov64 r0, 0
    exit
end

; Every major page fault, at the entry of vm::fault (a dynamic probe: int3 on its
; first instruction). vm::fault(map, address, access) returns a Result through a
; return place in rdi, so `address` is in rdx (context slot 1); the handler
; reads the fault's address and the faulting thread, and emits both.
probe entry demo_kernel::vm::fault
fields address:hex task:dec cpu:dec
    ldxdw r6, [r1+8]          ; rdx: address
    stxdw [r10-24], r6
    call task_id
    stxdw [r10-16], r0
    call cpu
    stxdw [r10-8], r0
    mov64 r1, r10
    add64 r1, -24
    mov64 r2, 24
    call emit
    mov64 r0, 0
    exit
end

; Where each CPU is, every 20 ms: a timer probe on every CPU.
probe timer 20ms each-cpu
fields pc:hex task:dec
    ldxdw r6, [r1+128]        ; context slot 16: the interrupted pc
    stxdw [r10-16], r6
    call task_id
    stxdw [r10-8], r0
    mov64 r1, r10
    add64 r1, -16
    mov64 r2, 16
    call emit
    mov64 r0, 0
    exit
end
