//! Return probes: entry values, nested and recursive activations, returns on
//! another CPU, a full pending-return table, tail calls, and pending returns that
//! outlive their probe and their session.

#[macro_use]
mod common;

use common::*;
use kernel_stub::TrapOutcome;
use kernel_stub::arch::TrapRegisters;
use kernel_stub::limits::PENDING_RETURNS;
use kernel_stub::{Stub, TrapOutcome::Handled};
use probe_port_protocol::message::{ProbeId, RequestBody, Site};

const S: u64 = STACK_BASE + 0x8000;
const CALLER_RA: u64 = TEXT_BASE + 0x3000;

/// Saves rdi in entry slot 0 and rsi in entry slot 3.
fn save_arguments() -> Vec<u8> {
    program(
        "
        mov64 r6, r1
        ldxdw r2, [r6+40]
        mov64 r1, 0
        call entry_save
        ldxdw r2, [r6+32]
        mov64 r1, 3
        call entry_save
        mov64 r0, 0
        exit
        ",
    )
}

/// Emits rax, entry slots 0 and 3, RETURN_ADDRESS, ENTRY_SP and PC.
fn report_return() -> Vec<u8> {
    emit_slots(&[0, 24, 27, 19, 20, 16])
}

fn arm_return(client: &mut Client, address: u64, entry: &[u8], handler: &[u8]) -> u32 {
    let expected = client.sim().read(address, 1);
    client
        .arm(
            Site::Return {
                address,
                expected: &expected,
                entry_program: entry,
            },
            handler,
        )
        .probe()
}

/// A call of the function at `pc` on `cpu` with the stack pointer at `rsp`,
/// whose return address is `return_address`.
fn enter(
    stub: &Stub<Sim>,
    cpu: usize,
    pc: u64,
    rsp: u64,
    return_address: u64,
    args: &[u64],
) -> TrapRegisters {
    let sim = stub.platform();
    sim.poke_u64(rsp, return_address);
    let mut regs = call_registers(pc, rsp, args);
    assert_eq!(sim.fetch(stub, cpu, &mut regs), Some(Handled));
    regs
}

/// The function whose frame has its return address at `rsp` executes `ret` on
/// `cpu` with `rax`: the CPU pops the address and fetches there. Returns the
/// trap's outcome (None if no breakpoint there) and the registers after.
fn ret(stub: &Stub<Sim>, cpu: usize, rsp: u64, rax: u64) -> (Option<TrapOutcome>, TrapRegisters) {
    let sim = stub.platform();
    let mut regs = call_registers(sim.read_u64(rsp), rsp + 8, &[]);
    regs.regs[0] = rax;
    let outcome = sim.fetch(stub, cpu, &mut regs);
    (outcome, regs)
}

#[test]
fn the_return_program_sees_the_return_value_and_the_entry_values() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    let probe = arm_return(&mut client, G, &save_arguments(), &report_return());
    client.done(RequestBody::Start);
    let regs = enter(stub, 0, G, S, CALLER_RA, &[41, 42]);
    // g's `push rbp` runs out of line; its return address is now the trampoline's.
    assert!(in_area(regs.pc));
    assert_eq!(sim.read_u64(S), AREA_BASE);
    assert_eq!(stub.pending_returns(), 1);
    let (outcome, regs) = ret(stub, 0, S, 0x5150);
    assert_eq!(outcome, Some(Handled));
    assert_eq!(regs.pc, CALLER_RA);
    assert_eq!(regs.regs[7], S + 8);
    assert_eq!(stub.pending_returns(), 0);
    client.drain();
    assert_eq!(client.events.len(), 1);
    assert_eq!(client.events[0].probe, probe);
    assert_eq!(client.events[0].words(), [0x5150, 41, 42, CALLER_RA, S, G]);
    let stats = client.probe_stats(probe);
    assert_eq!((stats.hits, stats.misses), (1, 0));
}

#[test]
fn nested_and_recursive_activations_each_get_their_own_values() {
    let stub = new_stub!();
    let mut client = Client::new(stub);
    client.open();
    let on_f = arm_return(&mut client, F, &save_arguments(), &report_return());
    let on_g = arm_return(&mut client, G, &save_arguments(), &report_return());
    client.done(RequestBody::Start);
    // f(1) calls g(2), which recurses into g(3).
    enter(stub, 0, F, S, CALLER_RA, &[1]);
    enter(stub, 0, G, S - 0x10, F_POP, &[2]);
    enter(stub, 0, G, S - 0x40, G + 7, &[3]);
    assert_eq!(stub.pending_returns(), 3);
    let (_, regs) = ret(stub, 0, S - 0x40, 30);
    assert_eq!(regs.pc, G + 7);
    let (_, regs) = ret(stub, 0, S - 0x10, 20);
    assert_eq!(regs.pc, F_POP);
    let (_, regs) = ret(stub, 0, S, 10);
    assert_eq!(regs.pc, CALLER_RA);
    client.drain();
    let reports: Vec<(u32, Vec<u64>)> = client
        .events
        .iter()
        .map(|event| (event.probe, event.words()))
        .collect();
    assert_eq!(
        reports,
        [
            (on_g, vec![30, 3, 0, G + 7, S - 0x40, G]),
            (on_g, vec![20, 2, 0, F_POP, S - 0x10, G]),
            (on_f, vec![10, 1, 0, CALLER_RA, S, F]),
        ]
    );
    assert_eq!(stub.pending_returns(), 0);
}

#[test]
fn a_function_may_return_on_another_cpu() {
    let stub = new_stub!();
    let mut client = Client::new(stub);
    client.open();
    arm_return(&mut client, G, &save_arguments(), &report_return());
    client.done(RequestBody::Start);
    enter(stub, 0, G, S, CALLER_RA, &[77, 78]);
    // The thread slept and was woken on CPU 1.
    let (outcome, regs) = ret(stub, 1, S, 5);
    assert_eq!(outcome, Some(Handled));
    assert_eq!(regs.pc, CALLER_RA);
    client.drain();
    assert_eq!(client.events.len(), 1);
    assert_eq!(client.events[0].cpu, 1);
    assert_eq!(client.events[0].words(), [5, 77, 78, CALLER_RA, S, G]);
}

#[test]
fn pending_returns_outlive_disarm_and_goodbye_and_never_reach_a_new_session() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    let before = sim.text();
    client.open();
    let probe = arm_return(&mut client, G, &[], &report_return());
    client.done(RequestBody::Start);
    enter(stub, 0, G, S, CALLER_RA, &[]);
    enter(stub, 1, G, S - 0x1000, CALLER_RA + 1, &[]);
    client.done(RequestBody::Disarm {
        probe: ProbeId(probe),
    });
    assert_eq!(sim.text(), before);
    // The first activation returns after the disarm: no handler, right address.
    let (outcome, regs) = ret(stub, 0, S, 0);
    assert_eq!((outcome, regs.pc), (Some(Handled), CALLER_RA));

    // The second outlives the session (still started: the new probe is live at
    // once, in the table slot the first one left).
    arm_return(&mut client, G, &[], &report_return());
    enter(stub, 0, G, S - 0x2000, CALLER_RA + 2, &[]);
    client.done(RequestBody::Goodbye);
    assert_eq!(sim.text(), before);
    assert_eq!(stub.pending_returns(), 2);
    client.open();
    // Probe 1 again, in the same table slot as the probe of the activation at
    // S - 0x1000: the session number tells them apart.
    assert_eq!(arm_return(&mut client, G, &[], &report_return()), probe);
    client.done(RequestBody::Start);
    let (outcome, regs) = ret(stub, 1, S - 0x1000, 0);
    assert_eq!((outcome, regs.pc), (Some(Handled), CALLER_RA + 1));
    let (outcome, regs) = ret(stub, 0, S - 0x2000, 0);
    assert_eq!((outcome, regs.pc), (Some(Handled), CALLER_RA + 2));
    assert_eq!(stub.pending_returns(), 0);
    client.drain();
    assert!(client.events.is_empty());
    // The trampoline stays in place for good.
    assert_eq!(sim.read(AREA_BASE, 1), [0xcc]);
    assert_eq!(stub.anomalies(), (0, 0));
}

#[test]
fn activations_beyond_the_pending_table_are_misses_and_keep_their_return_address() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    let probe = arm_return(&mut client, G, &[], &report_return());
    client.done(RequestBody::Start);
    let rsp = |index: usize| S - 0x10 * index as u64;
    for index in 0..PENDING_RETURNS {
        enter(stub, index % 2, G, rsp(index), CALLER_RA, &[]);
    }
    assert_eq!(stub.pending_returns(), PENDING_RETURNS);
    let extra = rsp(PENDING_RETURNS);
    let regs = enter(stub, 0, G, extra, CALLER_RA + 9, &[]);
    // The instruction still runs; the return address is left alone.
    assert!(in_area(regs.pc));
    assert_eq!(sim.read_u64(extra), CALLER_RA + 9);
    let stats = client.probe_stats(probe);
    assert_eq!((stats.hits, stats.misses), (0, 1));
    for index in (0..PENDING_RETURNS).rev() {
        let (outcome, regs) = ret(stub, 1, rsp(index), 0);
        assert_eq!((outcome, regs.pc), (Some(Handled), CALLER_RA));
    }
    assert_eq!(client.probe_stats(probe).hits, PENDING_RETURNS as u64);
}

#[test]
fn a_tail_call_into_another_return_probed_function_keeps_the_first_activation() {
    let stub = new_stub!();
    let mut client = Client::new(stub);
    client.open();
    let on_f = arm_return(&mut client, F, &[], &report_return());
    let on_g = arm_return(&mut client, G, &[], &report_return());
    client.done(RequestBody::Start);
    enter(stub, 0, F, S, CALLER_RA, &[]);
    // f jumps to g: same stack pointer, and the return address there is the
    // trampoline already.
    let mut regs = call_registers(G, S, &[]);
    assert_eq!(stub.platform().fetch(stub, 0, &mut regs), Some(Handled));
    let (outcome, regs) = ret(stub, 0, S, 8);
    assert_eq!((outcome, regs.pc), (Some(Handled), CALLER_RA));
    assert_eq!(client.probe_stats(on_g).misses, 1);
    assert_eq!(client.probe_stats(on_f).hits, 1);
    client.drain();
    assert_eq!(client.events.len(), 1);
    assert_eq!(client.events[0].probe, on_f);
}

#[test]
fn a_dynamic_and_a_return_probe_share_one_breakpoint() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    let before = sim.text();
    client.open();
    let dynamic = client.arm_dynamic(G, &emit_slots(&[5]));
    let on_return = arm_return(&mut client, G, &[], &report_return());
    client.done(RequestBody::Start);
    enter(stub, 0, G, S, CALLER_RA, &[6]);
    ret(stub, 0, S, 1);
    client.drain();
    let probes: Vec<u32> = client.events.iter().map(|event| event.probe).collect();
    assert_eq!(probes, [dynamic, on_return]);
    // Removing one keeps the breakpoint for the other.
    client.done(RequestBody::Disarm {
        probe: ProbeId(dynamic),
    });
    assert_eq!(sim.read(G, 1), [0xcc]);
    enter(stub, 1, G, S, CALLER_RA, &[6]);
    ret(stub, 1, S, 2);
    assert_eq!(client.probe_stats(on_return).hits, 2);
    client.done(RequestBody::Disarm {
        probe: ProbeId(on_return),
    });
    assert_eq!(sim.text(), before);
}

#[test]
fn after_stop_pending_returns_resume_without_handlers() {
    let stub = new_stub!();
    let mut client = Client::new(stub);
    client.open();
    let probe = arm_return(&mut client, G, &[], &report_return());
    client.done(RequestBody::Start);
    enter(stub, 0, G, S, CALLER_RA, &[]);
    client.done(RequestBody::Stop);
    let (outcome, regs) = ret(stub, 0, S, 0);
    assert_eq!((outcome, regs.pc), (Some(Handled), CALLER_RA));
    assert_eq!(client.probe_stats(probe).hits, 0);
    client.drain();
    assert!(client.events.is_empty());
}
