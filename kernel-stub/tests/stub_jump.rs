//! Jump probes on the simulated kernel: the `Jump` request, the detour the stub
//! writes, the jump written and taken back with the platform's stopped writes,
//! hits through `on_jump`, and every refusal. (The detour's code runs for real
//! inside the demo kernel: `tests/tests/demo_probes.rs`.)

#[macro_use]
mod common;

use common::*;
use kernel_stub::TrapOutcome;
use kernel_stub::arch::TrapRegisters;
use probe_port_protocol::context::{ProbeContext, slot};
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::frame::crc32;
use probe_port_protocol::message::{
    Capabilities, ErrorDetail, ProbeId, ReplyBody, RequestBody, Site,
};

const STACK_TOP: u64 = STACK_BASE + 0x8000;

fn jump(client: &mut Client, probe: u32, window: u8) -> Reply {
    client.send(RequestBody::Jump {
        probe: ProbeId(probe),
        window,
    })
}

/// The frame a detour hands the stub: the registers, `pc` (the probe's own
/// address) and the flags in their context slots, every later slot zero.
fn detour_context(pc: u64, args: &[u64]) -> ProbeContext {
    let regs: TrapRegisters = call_registers(pc, STACK_TOP, args);
    let mut context = ProbeContext::default();
    context.slots[..16].copy_from_slice(&regs.regs);
    context.slots[slot::PC] = regs.pc;
    context.slots[slot::FLAGS] = regs.flags;
    context
}

#[test]
fn a_jump_replaces_the_breakpoint_and_runs_the_handler_without_a_trap() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    let before = sim.text();
    match client.hello().ok() {
        ReplyBody::Hello(hello) => assert!(hello.capabilities.has(Capabilities::JUMP)),
        other => panic!("{other:?}"),
    }
    let probe = client.arm_dynamic(F_PUSH, &emit_slots(&[5, 16, 18]));
    assert_eq!(jump(&mut client, probe, 8).ok(), ReplyBody::Done);
    // Staged: the text is untouched; the detour follows the displaced `push rbp`'s
    // slot and ends with copies of the window (push rbp; mov rbp, rsp; mov rax,
    // [rdi+8]: 8 bytes) and a jump back past them.
    assert_eq!(sim.text(), before);
    let detour = slot_address(2);
    let code = sim.read(detour, 14 * 32);
    let copies = code
        .windows(8)
        .position(|window| window == [0x55, 0x48, 0x89, 0xe5, 0x48, 0x8b, 0x47, 0x08])
        .expect("the window's copies in the detour");
    assert_eq!(code[0], 0x9c, "pushfq first");
    assert_eq!(
        code[copies - 8..copies],
        [0x48, 0x8d, 0xa4, 0x24, 0x08, 0x01, 0x00, 0x00],
        "lea rsp, [rsp + 264] (the frame and the saved flags) just before the copies"
    );
    assert_eq!(jump_target(sim, detour + copies as u64 + 8), F + 8);

    client.done(RequestBody::Start);
    assert_eq!(jump_target(sim, F), detour);
    assert_eq!(sim.read(F + 5, 3), before[0x105..0x108]);
    // The breakpoint went in first (one byte), then the jump over it, stopped.
    assert_eq!(sim.stopped_writes().len(), 1);
    let mut trapped = call_registers(F, STACK_TOP, &[7]);
    assert_eq!(
        sim.fetch(stub, 0, &mut trapped),
        None,
        "no breakpoint at the address any more"
    );

    // SAFETY: the simulated platform has one thread and no interrupts.
    unsafe { stub.on_jump(&mut detour_context(F, &[7])) };
    sim.set_cpu(1);
    // SAFETY: the simulated platform has one thread and no interrupts.
    unsafe { stub.on_jump(&mut detour_context(F, &[8])) };
    sim.set_cpu(0);
    client.drain();
    let words: Vec<_> = client.events.iter().map(|event| event.words()).collect();
    assert_eq!(
        words,
        [vec![7, F, u64::from(probe)], vec![8, F, u64::from(probe)]]
    );
    let stats = client.probe_stats(probe);
    assert_eq!((stats.hits, stats.misses, stats.faults), (2, 0, 0));

    // Stop takes the jump back, then the breakpoint: the text is the kernel's.
    client.done(RequestBody::Stop);
    assert_eq!(crc32(&sim.text()), crc32(&before));
    let mut restored = before[0x100..0x105].to_vec();
    restored[0] = 0xcc;
    assert_eq!(sim.stopped_writes()[1], (F, restored));
    // A later Start writes the same jump to the same detour.
    client.done(RequestBody::Start);
    assert_eq!(jump_target(sim, F), detour);
    client.done(RequestBody::Goodbye);
    assert_eq!(crc32(&sim.text()), crc32(&before));
}

#[test]
fn rip_relative_operands_in_the_window_keep_their_targets() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    // mov rax, [rdi+8] (4 bytes) and lea rax, [rip+0x1000] (7 bytes): 11 bytes.
    let probe = client.arm_dynamic(F_LOAD, &noop());
    jump(&mut client, probe, 11).ok();
    client.done(RequestBody::Start);
    let detour = jump_target(sim, F_LOAD);
    let code = sim.read(detour, 14 * 32);
    let lea = code
        .windows(3)
        .position(|window| window == [0x48, 0x8d, 0x05])
        .expect("the lea's copy");
    let displacement = i32::from_le_bytes(code[lea + 3..lea + 7].try_into().unwrap());
    let copy_end = detour + lea as u64 + 7;
    assert_eq!(
        copy_end.wrapping_add(displacement as i64 as u64),
        F_LEA + 7 + 0x1000,
        "the copy addresses the same byte as the original"
    );
    assert_eq!(jump_target(sim, copy_end), F_CALL);
    client.done(RequestBody::Goodbye);
}

#[test]
fn jumps_are_refused_with_precise_errors() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    let before = sim.text();
    jump(&mut client, 99, 8).assert_err(ErrorCode::UNKNOWN_PROBE, ErrorDetail::Value(99));

    let probe = client.arm_dynamic(F_PUSH, &noop());
    jump(&mut client, probe, 4)
        .assert_err(ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text("window"));
    // push rbp; mov rbp, rsp is 4 bytes; the next instruction ends at 8 > 5.
    jump(&mut client, probe, 5)
        .assert_err(ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text("window"));
    // A call in the window cannot run from the detour.
    let at_call = client.arm_dynamic(F_CALL, &noop());
    jump(&mut client, at_call, 7)
        .assert_err(ErrorCode::UNRELOCATABLE, ErrorDetail::Address(F_CALL));
    // The lea at F+8 would sit inside the window of a jump at F_LOAD: another
    // probe there refuses it.
    let at_lea = client.arm_dynamic(F_LEA, &noop());
    let at_load = client.arm_dynamic(F_LOAD, &noop());
    jump(&mut client, at_load, 11).assert_err(
        ErrorCode::ALREADY_PROBED,
        ErrorDetail::Value(u64::from(at_lea)),
    );
    for probe in [at_lea, at_load] {
        client.done(RequestBody::Disarm {
            probe: ProbeId(probe),
        });
    }
    // A later probe inside a planned window (but its first byte) takes the jump
    // back: both probes keep breakpoints.
    jump(&mut client, probe, 8).ok();
    let inside = client
        .arm(
            Site::Dynamic {
                address: F_MOV_RBP,
                expected: &[0x48],
            },
            &noop(),
        )
        .probe();
    client.done(RequestBody::Start);
    assert_eq!(sim.read(F, 2), [0xcc, 0xcc]);
    client.done(RequestBody::Stop);
    client.done(RequestBody::Disarm {
        probe: ProbeId(inside),
    });
    // Return probes have no jump; a platform that cannot stop CPUs has none.
    let expected = sim.read(G, 1);
    let returned = client
        .arm(
            Site::Return {
                address: G,
                expected: &expected,
                entry_program: &[],
            },
            &noop(),
        )
        .probe();
    jump(&mut client, returned, 8).assert_err(ErrorCode::UNSUPPORTED, ErrorDetail::None);
    sim.set_no_stopped_writes(true);
    let at_g = client.arm_dynamic(G + 1, &noop());
    jump(&mut client, at_g, 8).assert_err(ErrorCode::UNSUPPORTED, ErrorDetail::None);
    sim.set_no_stopped_writes(false);
    client.done(RequestBody::Goodbye);
    assert_eq!(crc32(&sim.text()), crc32(&before));
}

#[test]
fn a_thread_that_would_resume_inside_the_window_keeps_the_breakpoint() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    let before = sim.text();
    let probe = client.arm_dynamic(F_PUSH, &emit_slots(&[5]));
    jump(&mut client, probe, 8).ok();
    // A thread preempted after `push rbp`: it would resume at F + 1.
    sim.set_resume_points(&[F_MOV_RBP]);
    client.done(RequestBody::Start);
    assert_eq!(sim.read(F, 1), [0xcc], "the breakpoint stays");
    client.done(RequestBody::Stop);
    // Or one preempted in an out-of-line slot (this site's, or one an earlier
    // probe left, whose jump back may land inside the window).
    sim.set_resume_points(&[slot_address(1) + 1]);
    client.done(RequestBody::Start);
    assert_eq!(sim.read(F, 1), [0xcc], "the breakpoint stays");
    let mut regs = call_registers(F, STACK_TOP, &[3]);
    assert_eq!(sim.fetch(stub, 0, &mut regs), Some(TrapOutcome::Handled));
    client.done(RequestBody::Stop);
    // Once it has gone on, the next Start writes the jump.
    sim.set_resume_points(&[]);
    client.done(RequestBody::Start);
    assert_eq!(sim.read(F, 1), [0xe9]);
    // SAFETY: the simulated platform has one thread and no interrupts.
    unsafe { stub.on_jump(&mut detour_context(F, &[4])) };
    client.done(RequestBody::Stop);
    client.drain();
    let words: Vec<_> = client.events.iter().map(|event| event.words()[0]).collect();
    assert_eq!(words, [3, 4]);
    client.done(RequestBody::Goodbye);
    assert_eq!(crc32(&sim.text()), crc32(&before));
}

#[test]
fn a_return_probe_at_the_address_takes_the_jump_back() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    let before = sim.text();
    let probe = client.arm_dynamic(F_PUSH, &noop());
    jump(&mut client, probe, 8).ok();
    client.done(RequestBody::Start);
    assert_eq!(sim.read(F, 1), [0xe9]);
    let expected = sim.read(F, 1);
    assert_eq!(expected, [0xe9], "the live text");
    let returned = client
        .arm(
            Site::Return {
                address: F,
                expected: &before[0x100..0x101],
                entry_program: &[],
            },
            &noop(),
        )
        .probe();
    assert_eq!(sim.read(F, 5), {
        let mut bytes = before[0x100..0x105].to_vec();
        bytes[0] = 0xcc;
        bytes
    });
    client.done(RequestBody::Disarm {
        probe: ProbeId(returned),
    });
    client.done(RequestBody::Goodbye);
    assert_eq!(crc32(&sim.text()), crc32(&before));
}
