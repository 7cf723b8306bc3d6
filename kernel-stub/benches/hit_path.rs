//! The stub's hit path on the host: what `Stub::on_breakpoint` and
//! `Stub::fire_marker` cost per hit, beside the interpreter alone on the same
//! programs, so the stub's own overhead is visible.
//!
//! Run with `cargo bench -p kernel-stub --bench hit_path` (or under
//! `valgrind --tool=callgrind` with `HIT_PATH_QUICK=1` for a short run).
//!
//! # Design
//!
//! The stub runs on the simulated kernel of the host tests (`tests/common`,
//! included by path): the session is opened and probes armed through the port
//! protocol, then each figure calls the entry point directly in a loop, as the
//! breakpoint trap or an enabled marker would. Figures:
//!
//! 1. a breakpoint that is not the stub's (the lookup-miss path, which reads the
//!    byte at the address back);
//! 2. a probed address (`mov rbp, rsp`, resumed out of line) with an empty
//!    handler (`mov64 r0, 0; exit`);
//! 3. the same with a `count()` handler (the `aggregate` helper on an 8-byte key);
//! 4. `fire_marker` on a marker armed with the `count()` handler;
//! 5. and 6. the interpreter alone (`interpreter::run`) on the empty and `count()`
//!    programs, with helpers that do nothing but answer the map's definition.
//!
//! Times are the median of several rounds of many hits, in nanoseconds per hit.

#![allow(
    dead_code,
    unused_macros,
    reason = "the shared harness has more than this bench uses"
)]

#[path = "../tests/common/mod.rs"]
#[macro_use]
mod common;

use std::hint::black_box;
use std::time::Instant;

use common::*;
use kernel_stub::interpreter::{self, EntrySaveError, Fault, Full, Helpers};
use kernel_stub::{ArgType, MarkerSite, Stub, TrapOutcome};
use probe_port_protocol::asm::assemble;
use probe_port_protocol::context::ProbeContext;
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};
use probe_port_protocol::message::{RequestBody, Site};

static STUB: Stub<Sim> = Stub::new(Sim::new());

static MARKERS: [MarkerSite; 1] = [MarkerSite::new("bench:call", &[("value", ArgType::U64)])];

const EMPTY: &str = "mov64 r0, 0\nexit";

/// `count()` into map `map`, key 0 (8 bytes), as the demo kernel's bench arms it.
fn count_handler(map: u16) -> String {
    format!(
        "stdw [r10-8], 0\nmov64 r1, {map}\nmov64 r2, r10\nadd64 r2, -8\nmov64 r3, 1\n\
         call aggregate\nmov64 r0, 0\nexit"
    )
}

fn count_map(map: u16) -> MapSpec {
    MapSpec {
        map: MapId(map),
        kind: MapKind::Aggregate(AggregateKind::Count),
        key_size: 8,
        value_size: 8,
        max_entries: 1,
    }
}

/// Nanoseconds per call of `hit`: the median of the rounds.
fn ns_per_hit(hits: u64, rounds: usize, mut hit: impl FnMut(u64)) -> f64 {
    for index in 0..hits / 10 {
        hit(index);
    }
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for index in 0..hits {
                hit(index);
            }
            start.elapsed().as_nanos() as f64 / hits as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[rounds / 2]
}

/// Helpers that only know the count map, for the interpreter alone.
struct Trivial;

impl Helpers for Trivial {
    fn read_kernel(&mut self, _dst: &mut [u8], src: u64) -> Result<(), Fault> {
        Err(Fault { address: src })
    }
    fn read_kernel_str(&mut self, _dst: &mut [u8], src: u64) -> Result<usize, Fault> {
        Err(Fault { address: src })
    }
    fn cpu(&mut self) -> u64 {
        0
    }
    fn task_id(&mut self) -> u64 {
        0
    }
    fn task_name(&mut self, _dst: &mut [u8]) -> usize {
        0
    }
    fn time_ns(&mut self) -> u64 {
        0
    }
    fn map_spec(&self, map: MapId) -> Option<MapSpec> {
        (map.0 == 1).then(|| count_map(1))
    }
    fn map_lookup(&mut self, _map: MapId, _key: &[u8], _value: &mut [u8]) -> bool {
        false
    }
    fn map_update(&mut self, _map: MapId, _key: &[u8], _value: &[u8]) -> Result<(), Full> {
        Err(Full)
    }
    fn map_delete(&mut self, _map: MapId, _key: &[u8]) -> bool {
        false
    }
    fn aggregate(&mut self, _map: MapId, key: &[u8], _value: i64) -> Result<(), Full> {
        black_box(key);
        Ok(())
    }
    fn emit(&mut self, _record: &[u8]) -> Result<(), Full> {
        Err(Full)
    }
    fn stack_trace(&mut self, _dst: &mut [u8]) -> usize {
        0
    }
    fn entry_save(&mut self, _slot: usize, _value: u64) -> Result<(), EntrySaveError> {
        Err(EntrySaveError::NotEntryProgram)
    }
}

fn main() {
    let quick = std::env::var_os("HIT_PATH_QUICK").is_some();
    let (hits, rounds) = if quick { (20_000, 3) } else { (200_000, 15) };
    let sim = STUB.platform();
    sim.set_markers(&MARKERS);
    let mut client = Client::new(&STUB);
    client.open();
    client.done(RequestBody::Start);

    // The probed instruction: `mov rbp, rsp` of `g`, which runs out of line.
    let site = G + 1;
    let hit = |index: u64| {
        let mut regs = call_registers(site + 1, STACK_BASE + 0x800, &[index]);
        let outcome = STUB.on_breakpoint(black_box(&mut regs));
        debug_assert_eq!(outcome, TrapOutcome::Handled);
        black_box(regs);
    };

    let miss = ns_per_hit(hits, rounds, |index| {
        let mut regs = call_registers(KERNEL_INT3 + 1, STACK_BASE + 0x800, &[index]);
        let outcome = STUB.on_breakpoint(black_box(&mut regs));
        debug_assert_eq!(outcome, TrapOutcome::NotMine);
        black_box(regs);
    });

    let empty_program = common::program(EMPTY);
    let probe = client.arm_dynamic(site, &empty_program);
    let empty = ns_per_hit(hits, rounds, hit);
    client.done(RequestBody::Disarm {
        probe: probe_port_protocol::message::ProbeId(probe),
    });

    client.done(RequestBody::DefineMap(count_map(1)));
    let count_program = common::program(&count_handler(1));
    let probe = client.arm_dynamic(site, &count_program);
    let counted = ns_per_hit(hits, rounds, hit);
    client.done(RequestBody::Disarm {
        probe: probe_port_protocol::message::ProbeId(probe),
    });

    client.done(RequestBody::DefineMap(count_map(2)));
    let probe = client
        .arm(
            Site::Marker { index: 0 },
            &common::program(&count_handler(2)),
        )
        .probe();
    let marker = ns_per_hit(hits, rounds, |index| {
        STUB.fire_marker(&MARKERS[0], black_box(&[index]));
    });
    client.done(RequestBody::Disarm {
        probe: probe_port_protocol::message::ProbeId(probe),
    });
    let (_, entries) = client.read_map(1);
    assert!(!entries.is_empty(), "the count() handler counted");

    let context = ProbeContext::default();
    let interpret = |text: &str| {
        let program = assemble(text).unwrap();
        ns_per_hit(hits, rounds, |_| {
            let result = interpreter::run(&program, black_box(&context), &mut Trivial);
            debug_assert_eq!(result, Ok(0));
            black_box(result).ok();
        })
    };
    let interp_empty = interpret(EMPTY);
    let interp_count = interpret(&count_handler(1));

    println!("hit_path: median of {rounds} rounds of {hits} hits; ns per hit");
    println!("| {:<44} | {:>8} |", "what", "ns");
    println!("|{:-<46}|{:-<10}|", "", "");
    let row = |name: &str, ns: f64| println!("| {name:<44} | {ns:>8.1} |");
    row("breakpoint not ours (lookup miss)", miss);
    row("probed, empty handler (on_breakpoint)", empty);
    row("probed, count() handler (on_breakpoint)", counted);
    row("marker, count() handler (fire_marker)", marker);
    row("interpreter alone, empty handler", interp_empty);
    row("interpreter alone, count() handler", interp_count);
    row(
        "stub overhead, empty (probed - interp.)",
        empty - interp_empty,
    );
    row(
        "stub overhead, count() (probed - interp.)",
        counted - interp_count,
    );
}
