//! The in-kernel benchmark (`demo.bench`): what a probe costs, in TSC cycles per
//! call, measured in one boot.
//!
//! # Design
//!
//! The init thread runs it instead of the workload. It opens a session on the
//! stub itself, through the same request path the relay uses (requests encoded
//! here with the protocol crate and handed to `Stub::handle`; handler programs
//! written in the assembler's text form), and times, with `rdtsc` around
//! [`CALLS`] calls, [`ROUNDS`] times, keeping each figure's median round:
//!
//! 1. an un-probed call of [`bench_call`], a small `#[inline(never)]` function;
//! 2. a bare `int3` round trip: a call of `probeport_bench_int3` (`int3; ret`), whose
//!    breakpoint the #BP hook skips without asking the stub;
//! 3. [`bench_call`] probed with an empty handler (`r0 = 0; exit`);
//! 4. [`bench_call`] probed with a `count()` handler (the `aggregate` helper on a
//!    count map);
//! 5. [`bench_marked_call`], the same function with a marker (`bench:call`) in
//!    it, disabled;
//! 6. the same with a `count()` handler armed on the marker;
//! 7. and 8. a function doing real work (a checksum over a [`WORK_WORDS`]-word
//!    buffer, on the order of a thousand cycles: [`bench_work`]) without and with
//!    a disabled marker in it (the same `bench:call` site, so the kernel's marker
//!    table does not change), the realistic figure for the marker goal beside the
//!    tiny call's. Each is the best of five such figures, taken alternately, since
//!    the difference sought is smaller than the drift between rounds.
//! 9. and 10. 3. and 4. again as jump probes (`Jump`): `bench_call`'s prologue
//!    replaced by a jump to the stub's detour, no trap taken.
//!
//! Each round runs with interrupts off, so timer ticks do not land in it. It
//! prints one table on COM1, then the ratios the project's goals are about (a
//! probed `count()` call against a bare `int3` round trip; the disabled marker's
//! cost against the un-probed call, and against the call doing real work), checks
//! the count maps against the calls made and passes. Figures are TSC cycles of the host under QEMU's TCG, so they say
//! how the costs compare, not what hardware would measure.

use alloc::vec::Vec;
use core::arch::global_asm;
use core::hint::black_box;
use core::sync::atomic::Ordering;

use kernel_stub::Platform;
use probe_port_protocol::asm::assemble;
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::isa;
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};
use probe_port_protocol::message::{
    ArmRequest, Hello, PROTOCOL_VERSION, ProbeId, ReplyBody, Request, RequestBody, Site,
    StubMessage, encode_into,
};

use crate::console::println;
use crate::marker::trace_marker;
use crate::probe_platform::{BENCH_INT3, STUB};
use crate::{cpu, time, verdict};

/// Calls per round.
const CALLS: u64 = 2000;
/// Rounds per figure (the median is kept).
const ROUNDS: usize = 15;

/// The probed function: small, not inlined, with a frame (push rbp first).
#[inline(never)]
fn bench_call(value: u64) -> u64 {
    black_box(value).wrapping_mul(0x9e37_79b9).rotate_left(7)
}

/// Words of the buffer [`bench_work`] sums.
const WORK_WORDS: usize = 320;

/// The buffer [`bench_work`] and [`bench_marked_work`] read.
static WORK_BUFFER: [u64; WORK_WORDS] = {
    let mut words = [0u64; WORK_WORDS];
    let mut index = 0;
    while index < WORK_WORDS {
        words[index] = (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        index += 1;
    }
    words
};

/// A function doing real work: a rotating checksum over [`WORK_BUFFER`].
#[inline(never)]
fn bench_work(seed: u64) -> u64 {
    let words: &[u64; WORK_WORDS] = black_box(&WORK_BUFFER);
    words.iter().fold(black_box(seed), |sum, word| {
        (sum ^ word).rotate_left(5).wrapping_add(1)
    })
}

/// [`bench_work`] with a disabled marker in it.
#[inline(never)]
fn bench_marked_work(seed: u64) -> u64 {
    bench_marker(seed);
    let words: &[u64; WORK_WORDS] = black_box(&WORK_BUFFER);
    words.iter().fold(black_box(seed), |sum, word| {
        (sum ^ word).rotate_left(5).wrapping_add(1)
    })
}

/// The `bench:call` marker: one site (the `static` is defined once however often
/// this is inlined) shared by [`bench_marked_call`] and [`bench_marked_work`].
#[inline(always)]
fn bench_marker(value: u64) {
    trace_marker!("bench:call", value: U64 = value);
}

/// [`bench_call`] with a disabled (or enabled) marker in it.
#[inline(never)]
fn bench_marked_call(value: u64) -> u64 {
    bench_marker(value);
    black_box(value).wrapping_mul(0x9e37_79b9).rotate_left(7)
}

unsafe extern "C" {
    /// `int3; ret` (below).
    fn probeport_bench_int3();
}

global_asm!(
    r#"
    .pushsection .text.probeport_bench, "ax"
    .balign 16
    .global probeport_bench_int3
    .type probeport_bench_int3, @function
probeport_bench_int3:
    int3
    ret
    .size probeport_bench_int3, . - probeport_bench_int3
    .popsection
    "#
);

/// Cycles per call of `call`, the median of [`ROUNDS`] rounds of [`CALLS`] calls,
/// each round with interrupts off.
fn cycles_per_call(mut call: impl FnMut(u64)) -> f64 {
    let mut rounds = [0u64; ROUNDS];
    for round in &mut rounds {
        cpu::disable_interrupts();
        let start = time::read_tsc();
        for index in 0..CALLS {
            call(index);
        }
        *round = time::read_tsc().wrapping_sub(start);
        cpu::enable_interrupts();
    }
    rounds.sort_unstable();
    rounds[ROUNDS / 2] as f64 / CALLS as f64
}

/// A request's outcome: the reply body's probe number (for `Armed`) or counts (for
/// a map page), or the error code.
#[derive(Debug)]
#[allow(
    dead_code,
    reason = "the fields are read through Debug, in failure reports"
)]
enum Outcome {
    Done,
    Armed(u32),
    Page(Vec<u8>),
    Refused(ErrorCode),
}

/// A session on the stub, as the relay would drive it, without the wire.
struct Session {
    seq: u32,
}

impl Session {
    fn request(&mut self, body: RequestBody<'_>) -> Outcome {
        self.seq += 1;
        let mut payload = [0u8; 1024];
        let Ok(encoded) = encode_into(
            &Request {
                seq: self.seq,
                body,
            },
            &mut payload,
        ) else {
            verdict::fail(format_args!("bench: a request does not encode"));
        };
        let mut outcome = None;
        STUB.handle(encoded, &mut |message| {
            if let StubMessage::Reply { reply, .. } = message {
                outcome = Some(match reply {
                    Ok(ReplyBody::Armed { probe }) => Outcome::Armed(probe.0),
                    Ok(ReplyBody::MapPage(page)) => Outcome::Page(page.entries.to_vec()),
                    Ok(_) => Outcome::Done,
                    Err(error) => Outcome::Refused(error.code),
                });
            }
        });
        outcome.unwrap_or_else(|| verdict::fail(format_args!("bench: no reply")))
    }

    fn expect_done(&mut self, what: &str, body: RequestBody<'_>) {
        match self.request(body) {
            Outcome::Done => {}
            other => verdict::fail(format_args!("bench: {what}: {other:?}")),
        }
    }

    fn arm(&mut self, what: &str, site: Site<'_>, program: &str) -> u32 {
        let program = assemble(program)
            .unwrap_or_else(|error| verdict::fail(format_args!("bench: {what}: {error}")));
        let program = isa::encode(&program);
        match self.request(RequestBody::Arm(ArmRequest {
            site,
            program: &program,
        })) {
            Outcome::Armed(probe) => probe,
            other => verdict::fail(format_args!("bench: arming {what}: {other:?}")),
        }
    }

    /// Turns `probe` (on [`bench_call`], at `target`) into a jump probe and checks
    /// that the jump is written. `bench_call` has no branch: its whole prologue
    /// (`push rbp; mov rbp, rsp; push rax`, 5 bytes) is a window.
    fn jump(&mut self, probe: u32, target: u64) {
        self.expect_done(
            "jump",
            RequestBody::Jump {
                probe: ProbeId(probe),
                window: 5,
            },
        );
        let mut opcode = [0u8; 1];
        if STUB.platform().read_kernel(&mut opcode, target).is_err() || opcode != [0xe9] {
            verdict::fail(format_args!(
                "bench: no jump written at {target:#x}: {opcode:x?}"
            ));
        }
    }

    /// The count of key 0 of count map `map` (summed over the CPUs).
    fn count(&mut self, map: u16) -> u64 {
        match self.request(RequestBody::ReadMap {
            map: MapId(map),
            cursor: 0,
        }) {
            Outcome::Page(entries) => entries
                .get(8..)
                .unwrap_or(&[])
                .chunks_exact(8)
                .map(|word| u64::from_le_bytes(word.try_into().unwrap_or([0; 8])))
                .sum(),
            other => verdict::fail(format_args!("bench: reading map {map}: {other:?}")),
        }
    }
}

const EMPTY_HANDLER: &str = "mov64 r0, 0\nexit";

/// `count()` into map `map`, key 0 (8 bytes).
fn count_handler(map: u16) -> alloc::string::String {
    alloc::format!(
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

/// Runs the benchmark, prints the table and passes.
/// What the TSC counts in this boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// TSC cycles of the host running QEMU's TCG (`demo.bench`).
    Cycles,
    /// Guest instructions: QEMU runs with `-icount shift=0`, whose virtual clock,
    /// and so the TSC, advance by one per instruction (`demo.bench=instructions`).
    /// Exact and repeatable, whatever the host is doing; a trap counts as the one
    /// instruction that raised it.
    Instructions,
}

impl Unit {
    fn per_call(self) -> &'static str {
        match self {
            Unit::Cycles => "TSC cycles per call",
            Unit::Instructions => "guest instructions per call (QEMU -icount shift=0)",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Unit::Cycles => "cycles",
            Unit::Instructions => "insns",
        }
    }
}

pub(crate) fn run(unit: Unit) -> ! {
    println!(
        "bench: {ROUNDS} rounds of {CALLS} calls per figure, interrupts off, median round; {}",
        unit.per_call()
    );
    let mut session = Session { seq: 0 };
    match session.request(RequestBody::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        client: "demo-kernel bench",
    })) {
        Outcome::Done => {}
        other => verdict::fail(format_args!("bench: hello: {other:?}")),
    }
    let target = bench_call as *const () as u64;
    let mut expected = [0u8; 1];
    if STUB.platform().read_kernel(&mut expected, target).is_err() {
        verdict::fail(format_args!("bench: cannot read bench_call"));
    }
    let Some(marker) = STUB
        .platform()
        .markers()
        .iter()
        .position(|site| site.name == "bench:call")
    else {
        verdict::fail(format_args!("bench: no bench:call marker"));
    };
    let dynamic = Site::Dynamic {
        address: target,
        expected: &expected,
    };
    session.expect_done("start", RequestBody::Start);

    // 1. Un-probed, 2. bare int3, 5. disabled marker.
    let unprobed = cycles_per_call(|index| {
        black_box(bench_call(index));
    });
    BENCH_INT3.store(probeport_bench_int3 as *const () as u64, Ordering::SeqCst);
    let bare_int3 = cycles_per_call(|_| {
        // SAFETY: `int3; ret`; the #BP hook resumes after the int3 (BENCH_INT3).
        unsafe { probeport_bench_int3() };
    });
    BENCH_INT3.store(0, Ordering::SeqCst);
    let disabled_marker = cycles_per_call(|index| {
        black_box(bench_marked_call(index));
    });
    // 7. and 8. Real work, without and with a disabled marker: alternated, so
    // drift in the host's speed touches both alike, keeping each one's best.
    let (mut work, mut marked_work) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        work = work.min(cycles_per_call(|index| {
            black_box(bench_work(index));
        }));
        marked_work = marked_work.min(cycles_per_call(|index| {
            black_box(bench_marked_work(index));
        }));
    }

    // 3. Probed, empty handler.
    let probe = session.arm("the empty handler", dynamic.clone(), EMPTY_HANDLER);
    let empty = cycles_per_call(|index| {
        black_box(bench_call(index));
    });
    session.expect_done(
        "disarm",
        RequestBody::Disarm {
            probe: ProbeId(probe),
        },
    );

    // 4. Probed, count().
    session.expect_done("map 1", RequestBody::DefineMap(count_map(1)));
    let probe = session.arm("the count() handler", dynamic.clone(), &count_handler(1));
    let counted = cycles_per_call(|index| {
        black_box(bench_call(index));
    });
    session.expect_done(
        "disarm",
        RequestBody::Disarm {
            probe: ProbeId(probe),
        },
    );

    // 6. Enabled marker, count().
    session.expect_done("map 2", RequestBody::DefineMap(count_map(2)));
    let probe = session.arm(
        "the marker's count() handler",
        Site::Marker {
            index: marker as u32,
        },
        &count_handler(2),
    );
    let enabled_marker = cycles_per_call(|index| {
        black_box(bench_marked_call(index));
    });
    session.expect_done(
        "disarm",
        RequestBody::Disarm {
            probe: ProbeId(probe),
        },
    );

    // 9. and 10. The same probes entered by a jump instead of int3.
    let probe = session.arm("the empty handler (jump)", dynamic.clone(), EMPTY_HANDLER);
    session.jump(probe, target);
    let jump_empty = cycles_per_call(|index| {
        black_box(bench_call(index));
    });
    session.expect_done(
        "disarm",
        RequestBody::Disarm {
            probe: ProbeId(probe),
        },
    );
    session.expect_done("map 3", RequestBody::DefineMap(count_map(3)));
    let probe = session.arm("the count() handler (jump)", dynamic, &count_handler(3));
    session.jump(probe, target);
    let jump_counted = cycles_per_call(|index| {
        black_box(bench_call(index));
    });
    session.expect_done(
        "disarm",
        RequestBody::Disarm {
            probe: ProbeId(probe),
        },
    );

    let calls = CALLS * ROUNDS as u64;
    let counts = [session.count(1), session.count(2), session.count(3)];
    if counts != [calls; 3] {
        verdict::fail(format_args!(
            "bench: count maps say {counts:?} (probed, marker, jump-probed calls), {calls} each were made"
        ));
    }
    session.expect_done("goodbye", RequestBody::Goodbye);

    let row = |name: &str, cycles: f64| println!("bench: | {name:<36} | {cycles:>9.1} |");
    println!("bench: | {:<36} | {:>9} |", "what", unit.column());
    println!("bench: |{:-<38}|{:-<11}|", "", "");
    row("un-probed call", unprobed);
    row("bare int3 round trip", bare_int3);
    row("probed call, empty handler", empty);
    row("probed call, count() handler", counted);
    row("disabled marker (call with marker)", disabled_marker);
    row("enabled marker, count() handler", enabled_marker);
    row("work call (320-word checksum)", work);
    row("work call with a disabled marker", marked_work);
    row("jump probe, empty handler", jump_empty);
    row("jump probe, count() handler", jump_counted);
    let ratio = counted / bare_int3;
    let jump_ratio = jump_counted / bare_int3;
    let marker_overhead = (disabled_marker - unprobed) / unprobed * 100.0;
    println!(
        "bench: probed count() / bare int3 = {ratio:.2} (goal <= 1.2: {})",
        if ratio <= 1.2 { "met" } else { "not met" }
    );
    println!(
        "bench: jump-probed count() / bare int3 = {jump_ratio:.2} (goal <= 1.2: {})",
        if jump_ratio <= 1.2 { "met" } else { "not met" }
    );
    println!(
        "bench: disabled marker adds {marker_overhead:+.2} % to the un-probed call (goal < 1 %: {})",
        if marker_overhead < 1.0 {
            "met"
        } else {
            "not met"
        }
    );
    let work_overhead = (marked_work - work) / work * 100.0;
    println!(
        "bench: in a call doing real work ({work:.0} {}), a disabled marker adds {work_overhead:+.2} % (goal < 1 %: {})",
        unit.column(),
        if work_overhead < 1.0 {
            "met"
        } else {
            "not met"
        }
    );
    println!("bench: count maps agree with the {calls} calls of each counted figure");
    verdict::pass()
}
