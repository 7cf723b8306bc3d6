//! Dynamic probes on the simulated kernel: arming, patching, hits, out-of-line
//! resumption, handlers and their helpers, re-entry, faults, and every way a
//! session ends with the kernel text restored byte for byte.

#[macro_use]
mod common;

use std::sync::{Arc, Mutex};

use common::*;
use kernel_stub::TrapOutcome;
use kernel_stub::arch::TrapRegisters;
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::frame::crc32;
use probe_port_protocol::isa::helper_error::EFAULT;
use probe_port_protocol::message::{ErrorDetail, ProbeId, ReplyBody, RequestBody, Site};

const STACK_TOP: u64 = STACK_BASE + 0x8000;

#[test]
fn arm_start_hit_stop_disarm_leaves_the_text_as_it_was() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    let before = sim.text();
    client.open();
    let probe = client.arm_dynamic(F_PUSH, &emit_slots(&[5, 16, 18]));
    // Arming is staging: the kernel's text is untouched; the slot holds the
    // displaced `push rbp` and a jump back to the next instruction.
    assert_eq!(sim.text(), before);
    let slot = slot_address(1);
    assert_eq!(sim.read(slot, 1), [0x55]);
    assert_eq!(jump_target(sim, slot + 1), F_MOV_RBP);
    let mut regs = call_registers(F, STACK_TOP, &[7]);
    assert_eq!(sim.fetch(stub, 0, &mut regs), None);

    client.done(RequestBody::Start);
    assert_eq!(sim.read(F, 1), [0xcc]);
    let original = call_registers(F, STACK_TOP, &[7]);
    let mut regs = original;
    assert_eq!(sim.fetch(stub, 0, &mut regs), Some(TrapOutcome::Handled));
    // Only the instruction pointer moved: into the slot.
    assert_eq!(
        regs,
        TrapRegisters {
            pc: slot,
            ..original
        }
    );
    client.drain();
    assert_eq!(client.events.len(), 1);
    let event = &client.events[0];
    assert_eq!((event.cpu, event.seq, event.probe), (0, 0, probe));
    assert_eq!(event.words(), [7, F, u64::from(probe)]);

    client.done(RequestBody::Stop);
    assert_eq!(crc32(&sim.text()), crc32(&before));
    let mut regs = original;
    assert_eq!(sim.fetch(stub, 0, &mut regs), None);

    // A later Start re-arms; CPU 1 numbers its own events.
    client.done(RequestBody::Start);
    let mut regs = call_registers(F, STACK_TOP, &[9]);
    assert_eq!(sim.fetch(stub, 1, &mut regs), Some(TrapOutcome::Handled));
    client.drain();
    let event = &client.events[1];
    assert_eq!((event.cpu, event.seq), (1, 0));
    assert_eq!(event.words()[0], 9);
    let stats = client.probe_stats(probe);
    assert_eq!(
        (stats.hits, stats.misses, stats.faults, stats.drops),
        (2, 0, 0, 0)
    );

    client.done(RequestBody::Disarm {
        probe: ProbeId(probe),
    });
    assert_eq!(sim.text(), before);
    client.done(RequestBody::Goodbye);
    assert_eq!(sim.text(), before);
    // Every write over kernel text was a single byte: the breakpoint or the
    // original byte back.
    for (address, bytes) in sim.text_writes() {
        if !in_area(address) {
            assert_eq!(address, F);
            assert!(bytes == [0xcc] || bytes == [0x55], "{bytes:x?}");
        }
    }
}

#[test]
fn emulated_calls_and_rip_relative_operands_resume_correctly() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    client.arm_dynamic(F_CALL, &noop());
    client.arm_dynamic(F_LEA, &noop());
    client.done(RequestBody::Start);

    // `call g` is emulated: the return address is pushed, the CPU goes to g.
    let mut regs = call_registers(F_CALL, STACK_TOP, &[]);
    assert_eq!(sim.fetch(stub, 0, &mut regs), Some(TrapOutcome::Handled));
    assert_eq!(regs.pc, G);
    assert_eq!(regs.regs[7], STACK_TOP - 8);
    assert_eq!(sim.read_u64(STACK_TOP - 8), F_POP);

    // `lea rax, [rip+0x1000]` runs in a slot with its displacement rewritten
    // so that it still addresses F_LEA + 7 + 0x1000.
    let mut regs = call_registers(F_LEA, STACK_TOP, &[]);
    assert_eq!(sim.fetch(stub, 1, &mut regs), Some(TrapOutcome::Handled));
    let slot = regs.pc;
    assert!(in_area(slot));
    let code = sim.read(slot, 7);
    assert_eq!(code[..3], [0x48, 0x8d, 0x05]);
    let displacement = i32::from_le_bytes(code[3..7].try_into().unwrap());
    assert_eq!(
        (slot + 7).wrapping_add(displacement as i64 as u64),
        F_LEA + 7 + 0x1000
    );
    assert_eq!(jump_target(sim, slot + 7), F_CALL);
}

#[test]
fn handlers_read_registers_pc_flags_and_probe_from_the_context() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    // rdi, rsi, rdx, rcx, r8, r9, PC, FLAGS, PROBE, rsp, rax, and a reserved slot.
    let probe = client.arm_dynamic(G, &emit_slots(&[5, 4, 1, 2, 8, 9, 16, 17, 18, 7, 0, 21]));
    client.done(RequestBody::Start);
    let mut regs = call_registers(G, STACK_TOP, &[11, 22, 33, 44, 55, 66]);
    regs.regs[0] = 0x7777;
    sim.fetch(stub, 1, &mut regs).unwrap();
    client.drain();
    assert_eq!(
        client.events[0].words(),
        [
            11,
            22,
            33,
            44,
            55,
            66,
            G,
            0x202,
            u64::from(probe),
            STACK_TOP,
            0x7777,
            0
        ]
    );
}

#[test]
fn helpers_give_cpu_task_time_strings_and_stack_traces() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    let handler = program(
        "
        ldxdw r6, [r1+40]       ; rdi: a string
        call cpu
        stxdw [r10-8], r0
        call task_id
        stxdw [r10-16], r0
        call time_ns
        stxdw [r10-24], r0
        mov64 r1, r10
        add64 r1, -64
        mov64 r2, 40
        mov64 r3, r6
        call read_kernel_str
        stxdw [r10-72], r0
        mov64 r1, r10
        add64 r1, -104
        mov64 r2, 32
        call stack_trace
        stxdw [r10-112], r0
        mov64 r1, r10
        add64 r1, -128
        mov64 r2, 16
        call task_name
        mov64 r1, r10
        add64 r1, -128
        mov64 r2, 128
        call emit
        mov64 r0, 0
        exit
        ",
    );
    client.arm_dynamic(G, &handler);
    client.done(RequestBody::Start);
    let string = DATA_BASE + 0x100;
    sim.poke(string, b"hello, probe\0");
    // Three frames: fp1 -> fp2 -> fp3 (whose saved frame pointer ends the walk).
    let (fp1, fp2, fp3) = (STACK_TOP + 0x100, STACK_TOP + 0x200, STACK_TOP + 0x300);
    for (fp, next, return_address) in [(fp1, fp2, 0xaaa1), (fp2, fp3, 0xaaa2), (fp3, 0, 0xaaa3)] {
        sim.poke_u64(fp, next);
        sim.poke_u64(fp + 8, return_address);
    }
    sim.set_now(123_456);
    let mut regs = call_registers(G, STACK_TOP, &[string]);
    regs.regs[6] = fp1;
    sim.fetch(stub, 1, &mut regs).unwrap();
    client.drain();
    let record = &client.events[0];
    assert_eq!(record.time_ns, 123_456);
    let data = &record.data;
    let word = |offset: usize| u64::from_le_bytes(data[offset..offset + 8].try_into().unwrap());
    assert_eq!(&data[..8], b"sim-task");
    assert_eq!(&data[8..16], &[0; 8]);
    assert_eq!(word(16), 3, "frames");
    assert_eq!([word(24), word(32), word(40)], [0xaaa1, 0xaaa2, 0xaaa3]);
    assert_eq!(word(56), 13, "string length with its NUL");
    assert_eq!(&data[64..77], b"hello, probe\0");
    assert_eq!(word(104), 123_456);
    assert_eq!(word(112), 101, "task of CPU 1");
    assert_eq!(word(120), 1, "cpu");
}

#[test]
fn a_reentered_cpu_skips_the_handler_but_still_resumes_the_instruction() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    let trigger = DATA_BASE + 0x500;
    let outer = client.arm_dynamic(
        F_PUSH,
        &program(&format!(
            "mov64 r1, r10\nadd64 r1, -8\nmov64 r2, 8\nlddw r3, {trigger}\ncall read_kernel\nmov64 r0, 0\nexit"
        )),
    );
    let inner = client.arm_dynamic(G, &emit_slots(&[5]));
    client.done(RequestBody::Start);

    // While the outer handler reads memory, the same CPU hits g's breakpoint (as
    // an NMI handler calling g would).
    let nested: Arc<Mutex<Option<(TrapOutcome, TrapRegisters)>>> = Arc::default();
    let seen = Arc::clone(&nested);
    sim.set_read_hook(Some(Box::new(move |address| {
        if address == trigger {
            let mut regs = call_registers(G + 1, STACK_TOP - 0x400, &[5]);
            let outcome = stub.on_breakpoint(&mut regs);
            *seen.lock().unwrap() = Some((outcome, regs));
        }
    })));
    let mut regs = call_registers(F, STACK_TOP, &[1]);
    assert_eq!(sim.fetch(stub, 0, &mut regs), Some(TrapOutcome::Handled));
    sim.set_read_hook(None);

    let (outcome, nested_regs) = nested.lock().unwrap().take().unwrap();
    assert_eq!(outcome, TrapOutcome::Handled);
    // g's displaced `push rbp` still runs: from g's slot.
    assert!(in_area(nested_regs.pc));
    assert_eq!(sim.read(nested_regs.pc, 1), [0x55]);
    assert_eq!(jump_target(sim, nested_regs.pc + 1), G + 1);
    let stats = client.probe_stats(inner);
    assert_eq!((stats.hits, stats.misses), (0, 1));
    assert_eq!(client.probe_stats(outer).hits, 1);
    assert_eq!(client.cpu_stats(0).reentered, 1);
    client.drain();
    assert!(client.events.is_empty());

    // Not nested, g's handler runs as usual.
    let mut regs = call_registers(G, STACK_TOP, &[5]);
    sim.fetch(stub, 0, &mut regs).unwrap();
    client.drain();
    assert_eq!(client.events.len(), 1);
    assert_eq!(client.probe_stats(inner).hits, 1);
}

#[test]
fn handler_faults_are_counted_with_the_address_and_the_probe_keeps_working() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    // Reads 8 bytes at rdi; emits the helper's result and the value.
    let probe = client.arm_dynamic(
        G,
        &program(
            "
            ldxdw r3, [r1+40]
            mov64 r1, r10
            add64 r1, -8
            mov64 r2, 8
            call read_kernel
            stxdw [r10-16], r0
            mov64 r1, r10
            add64 r1, -16
            mov64 r2, 16
            call emit
            mov64 r0, 0
            exit
            ",
        ),
    );
    client.done(RequestBody::Start);
    let good = DATA_BASE + 0x200;
    sim.poke_u64(good, 0x1122_3344_5566_7788);
    let wild = 0xdead_beef_0000;
    // NULL itself, a wild pointer, then a good one.
    for (cpu, pointer) in [(0, 0), (1, wild), (0, good)] {
        let mut regs = call_registers(G, STACK_TOP, &[pointer]);
        sim.fetch(stub, cpu, &mut regs).unwrap();
    }
    client.drain();
    // Events come per CPU, in sequence order.
    let words: Vec<(u16, u64, Vec<u64>)> = client
        .events
        .iter()
        .map(|event| (event.cpu, event.seq, event.words()))
        .collect();
    assert_eq!(
        words,
        [
            (0, 0, vec![EFAULT as u64, 0]),
            (0, 1, vec![0, 0x1122_3344_5566_7788]),
            (1, 0, vec![EFAULT as u64, 0]),
        ]
    );
    let stats = client.probe_stats(probe);
    assert_eq!(
        (stats.hits, stats.faults, stats.last_fault_address),
        (3, 2, wild)
    );
    assert_eq!(client.cpu_stats(0).faults, 1);
    assert_eq!(client.cpu_stats(1).faults, 1);
}

#[test]
fn probes_armed_after_start_are_live_at_once_and_numbers_are_never_reused() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    client.done(RequestBody::Start);
    let first = client.arm_dynamic(G, &noop());
    assert_eq!(sim.read(G, 1), [0xcc]);
    client.done(RequestBody::Disarm {
        probe: ProbeId(first),
    });
    assert_eq!(sim.read(G, 1), [0x55]);
    let second = client.arm_dynamic(G, &noop());
    assert!(second > first);
    let mut regs = call_registers(G, STACK_TOP, &[]);
    assert_eq!(sim.fetch(stub, 0, &mut regs), Some(TrapOutcome::Handled));
    client
        .send(RequestBody::ProbeStats {
            probe: ProbeId(first),
        })
        .assert_err(
            ErrorCode::UNKNOWN_PROBE,
            ErrorDetail::Value(u64::from(first)),
        );
}

#[test]
fn a_breakpoint_hit_racing_a_disarm_reexecutes_the_restored_instruction() {
    let stub = new_stub!();
    let mut client = Client::new(stub);
    client.open();
    let probe = client.arm_dynamic(F_PUSH, &noop());
    client.done(RequestBody::Start);
    // A CPU executed the breakpoint, then the probe was disarmed before the trap
    // handler looked it up.
    client.done(RequestBody::Disarm {
        probe: ProbeId(probe),
    });
    let mut regs = call_registers(F + 1, STACK_TOP, &[]);
    assert_eq!(stub.on_breakpoint(&mut regs), TrapOutcome::Handled);
    assert_eq!(regs.pc, F);
    // A breakpoint the kernel placed itself is not the stub's.
    let mut regs = call_registers(KERNEL_INT3 + 1, STACK_TOP, &[]);
    assert_eq!(stub.on_breakpoint(&mut regs), TrapOutcome::NotMine);
}

#[test]
fn ending_the_session_mid_trace_restores_the_text_and_resets_everything() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    let before = sim.text();
    client.open();
    client.arm_dynamic(F_PUSH, &emit_slots(&[5]));
    client.arm_dynamic(F_LOAD, &emit_slots(&[5]));
    client.arm_dynamic(G, &noop());
    client.done(RequestBody::Start);
    for cpu in [0, 1, 0] {
        let mut regs = call_registers(F, STACK_TOP, &[cpu as u64]);
        sim.fetch(stub, cpu, &mut regs).unwrap();
    }
    assert_ne!(sim.text(), before);
    // The transport saw the holder die.
    stub.end_session();
    assert_eq!(sim.text(), before);
    assert!(!stub.session_open());
    let mut regs = call_registers(F, STACK_TOP, &[]);
    assert_eq!(sim.fetch(stub, 0, &mut regs), None);
    client
        .send(RequestBody::KeepAlive)
        .assert_err(ErrorCode::NO_HANDSHAKE, ErrorDetail::None);
    // A new session starts from zero: sequence numbers, counters, probe numbers.
    client.open();
    let stats = client.cpu_stats(0);
    assert_eq!((stats.hits, stats.emitted, stats.next_seq), (0, 0, 0));
    let probe = client.arm_dynamic(F_PUSH, &emit_slots(&[5]));
    assert_eq!(probe, 1);
    client.done(RequestBody::Start);
    let mut regs = call_registers(F, STACK_TOP, &[3]);
    sim.fetch(stub, 0, &mut regs).unwrap();
    client.events.clear();
    client.losses.clear();
    client.drain();
    assert_eq!(client.events.len(), 1);
    assert_eq!(client.events[0].seq, 0);
    assert!(client.losses.is_empty());
    client.done(RequestBody::Goodbye);
    assert_eq!(sim.text(), before);
}

#[test]
fn an_expired_lease_ends_the_session_like_goodbye() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    let before = sim.text();
    sim.set_now(1_000);
    client.open();
    client.arm_dynamic(G, &noop());
    client.done(RequestBody::Start);
    sim.set_now(4_000_000_000);
    client.done(RequestBody::KeepAlive);
    assert!(!stub.poll(8_999_999_999));
    assert!(stub.session_open());
    assert!(stub.poll(9_000_000_000));
    assert!(!stub.session_open());
    assert_eq!(sim.text(), before);
    assert!(!stub.poll(20_000_000_000));
}

#[test]
fn a_stub_without_a_lease_never_expires() {
    static STUB: kernel_stub::Stub<Sim> = kernel_stub::Stub::new(Sim::new()).with_lease_ms(0);
    let mut client = Client::new(&STUB);
    let reply = client.hello();
    let ReplyBody::Hello(hello) = reply.ok() else {
        panic!()
    };
    assert_eq!(hello.lease_ms, 0);
    assert!(!STUB.poll(u64::MAX));
    assert!(STUB.session_open());
}

#[test]
fn out_of_line_slots_are_written_once_and_reused_only_for_the_same_code() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    // `push rbx` everywhere: it runs out of line, so every site needs a slot
    // (the `nop`s there would be emulated and need none).
    sim.poke(NOPS, &[0x53; NOP_COUNT]);
    client.open();
    client.done(RequestBody::Start);
    let slot_writes = || {
        sim.text_writes()
            .into_iter()
            .filter(|(address, _)| *address >= slot_address(1))
            .map(|(address, _)| address)
            .collect::<Vec<_>>()
    };
    let a = client.arm_dynamic(NOPS, &noop());
    let b = client.arm_dynamic(NOPS + 1, &noop());
    assert_eq!(slot_writes(), [slot_address(1), slot_address(2)]);
    client.done(RequestBody::Disarm { probe: ProbeId(a) });
    client.done(RequestBody::Disarm { probe: ProbeId(b) });
    // Re-arming a site finds its slot, which already holds the same code: no write.
    let again = client.arm_dynamic(NOPS + 1, &noop());
    assert_eq!(slot_writes().len(), 2);
    let mut regs = call_registers(NOPS + 1, STACK_TOP, &[]);
    assert_eq!(sim.fetch(stub, 0, &mut regs), Some(TrapOutcome::Handled));
    assert_eq!(regs.pc, slot_address(2));
    client.done(RequestBody::Disarm {
        probe: ProbeId(again),
    });
    // A slot freed by a disarm is never rewritten for another site: a thread
    // preempted inside it would resume in the other site's code.
    client.arm_dynamic(NOPS + 2, &noop());
    assert_eq!(slot_writes().last(), Some(&slot_address(3)));
    // The area has 512 probe slots; 3 are written. A new session keeps them.
    client.done(RequestBody::Goodbye);
    client.open();
    client.done(RequestBody::Start);
    for index in 0..509 {
        client.arm_dynamic(NOPS + 3 + index, &noop());
    }
    assert_eq!(slot_writes().len(), 512);
    // Every slot is written: a new site is refused with the number of slots, but
    // a site that owns its slot still arms, and emulated instructions need none.
    client
        .arm(
            Site::Dynamic {
                address: NOPS + 600,
                expected: &[0x53],
            },
            &noop(),
        )
        .assert_err(ErrorCode::NO_SPACE, ErrorDetail::Value(512));
    client.arm_dynamic(NOPS, &noop());
    client.arm_dynamic(F_CALL, &noop());
    assert_eq!(slot_writes().len(), 512);
}
