//! Real concurrency: two threads play two CPUs hitting probes as fast as they can
//! while the session thread (a third CPU) drains, disarms and re-arms, stops and
//! starts, and clears maps. Checks what must hold whatever the interleaving:
//! every breakpoint trap is handled, per CPU the events and loss reports
//! partition the sequence numbers, and the text ends as it began.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use kernel_stub::TrapOutcome;
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};
use probe_port_protocol::message::{ProbeId, RequestBody};

/// Emits [rdi, cpu] and counts hits per CPU in aggregation 1.
const COUNT_AND_EMIT: &str = "
    ldxdw r6, [r1+40]
    stxdw [r10-16], r6
    call cpu
    stxdw [r10-8], r0
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, 1
    call aggregate
    mov64 r1, r10
    add64 r1, -16
    mov64 r2, 16
    call emit
    mov64 r0, 0
    exit
";

/// Stores rdi under key rdi % 16 in hash map 2.
const UPDATE: &str = "
    ldxdw r6, [r1+40]
    stxdw [r10-16], r6
    and64 r6, 15
    stxdw [r10-8], r6
    mov64 r1, 2
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, r10
    add64 r3, -16
    call map_update
    mov64 r0, 0
    exit
";

#[test]
fn probes_change_under_concurrent_hits_without_losing_track() {
    // A watchdog: a deadlock fails the test instead of hanging the suite.
    let finished = Arc::new(AtomicBool::new(false));
    let watched = Arc::clone(&finished);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        if !watched.load(Ordering::SeqCst) {
            eprintln!("deadlock: the concurrency test did not finish");
            std::process::abort();
        }
    });

    let stub = new_stub!();
    let sim = stub.platform();
    sim.set_cpu_count(3);
    pin_thread_to_cpu(2);
    let mut client = Client::new(stub);
    let before = sim.text();
    client.open();
    client.done(RequestBody::DefineMap(MapSpec {
        map: MapId(1),
        kind: MapKind::Aggregate(AggregateKind::Count),
        key_size: 8,
        value_size: 8,
        max_entries: 4,
    }));
    client.done(RequestBody::DefineMap(MapSpec {
        map: MapId(2),
        kind: MapKind::Hash,
        key_size: 8,
        value_size: 8,
        max_entries: 16,
    }));
    let mut counting = client.arm_dynamic(G, &program(COUNT_AND_EMIT));
    client.arm_dynamic(F_PUSH, &program(UPDATE));
    client.done(RequestBody::Start);

    let stop = Arc::new(AtomicBool::new(false));
    let traps = Arc::new(AtomicU64::new(0));
    let cpus: Vec<_> = (0..2)
        .map(|cpu| {
            let stop = Arc::clone(&stop);
            let traps = Arc::clone(&traps);
            std::thread::spawn(move || {
                pin_thread_to_cpu(cpu);
                let stack = STACK_BASE + 0x4000 + 0x4000 * cpu as u64;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for address in [G, F_PUSH] {
                        let mut regs = call_registers(address, stack, &[n]);
                        if let Some(outcome) = sim.fetch(stub, cpu, &mut regs) {
                            assert_eq!(outcome, TrapOutcome::Handled);
                            // Resumed in a slot, or (a probe removed meanwhile)
                            // at the restored instruction itself.
                            assert!(in_area(regs.pc) || regs.pc == address, "{:#x}", regs.pc);
                            traps.fetch_add(1, Ordering::Relaxed);
                        }
                        n += 1;
                    }
                }
            })
        })
        .collect();

    for round in 0..300 {
        client.drain();
        match round % 10 {
            3 => {
                client.done(RequestBody::Disarm {
                    probe: ProbeId(counting),
                });
                counting = client.arm_dynamic(G, &program(COUNT_AND_EMIT));
            }
            6 => {
                client.done(RequestBody::Stop);
                client.done(RequestBody::Start);
            }
            8 => client.done(RequestBody::ClearMap { map: MapId(1) }),
            9 => client.done(RequestBody::ClearMap { map: MapId(2) }),
            _ => std::thread::yield_now(),
        }
    }
    stop.store(true, Ordering::SeqCst);
    for cpu in cpus {
        cpu.join().unwrap();
    }
    client.done(RequestBody::Stop);
    assert!(traps.load(Ordering::Relaxed) > 0);

    for cpu in 0..2u16 {
        let stats = client.cpu_stats(cpu);
        assert_eq!(stats.emitted + stats.lost, stats.next_seq);
        let mut covered = vec![0u8; stats.next_seq as usize];
        for event in client.events.iter().filter(|event| event.cpu == cpu) {
            covered[event.seq as usize] += 1;
            assert_eq!(
                event.words()[1],
                u64::from(cpu),
                "the record of its own CPU"
            );
        }
        for loss in client.losses.iter().filter(|loss| loss.cpu == cpu) {
            for seq in loss.first_seq..loss.first_seq + loss.count {
                covered[seq as usize] += 1;
            }
        }
        assert!(covered.iter().all(|&times| times == 1), "cpu {cpu}");
    }
    // Hash map keys are rdi % 16: never more than 16 of them.
    assert!(client.read_map(2).0 <= 16);
    assert_eq!(stub.anomalies(), (0, 0));
    client.done(RequestBody::Goodbye);
    assert_eq!(sim.text(), before);
    finished.store(true, Ordering::SeqCst);
}
