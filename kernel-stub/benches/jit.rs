//! The JIT against the interpreter on realistic handlers, in the same run.
//!
//! Run with `cargo bench -p kernel-stub --bench jit`.
//!
//! # Design
//!
//! Each handler is assembled, verified, compiled and copied into its own
//! executable mapping once. Both executors then run it the way the stub does: on
//! a kept 512-byte handler stack of which only the verified depth is zeroed
//! (`interpreter::run_on_stack` and `JitProgram::run`), with the same
//! [`Helpers`] (a fixed-capacity map, a count, an event counter: the shape of the
//! stub's, without allocation). The result of both is checked against an
//! independently computed `r0` before timing. Times are the median over rounds
//! of many runs, alternating between the executors.
//!
//! `PROBEPORT_BENCH_ONLY=<part of a name>` runs the matching handlers only,
//! `PROBEPORT_BENCH_ITERATIONS` sets the round size, and
//! `PROBEPORT_BENCH_EXECUTOR=interpreter|jit` runs only that executor's loop,
//! once, `PROBEPORT_BENCH_ITERATIONS` times (for `valgrind --tool=callgrind`
//! with `--toggle-collect='*run_many*'`, which counts the instructions of those
//! runs only).

#[path = "../tests/jit_common/mod.rs"]
mod jit_common;

use std::hint::black_box;
use std::time::Instant;

use jit_common::ExecBuffer;
use kernel_stub::interpreter::{
    EntrySaveError, Fault, Full, Helpers, InstructionCounter, run_on_stack, run_traced,
};
use kernel_stub::jit::JitScratch;
use kernel_stub::jit::x86_64::{JitProgram, compile, max_code_size};
use probe_port_protocol::asm::assemble;
use probe_port_protocol::context::{ProbeContext, slot};
use probe_port_protocol::isa::{Insn, STACK_SIZE};
use probe_port_protocol::maps::{MapId, MapShapes, MapSpec, log2_bucket};
use probe_port_protocol::verifier::{ProgramKind, VerifierConfig, verify_alloc};

#[path = "shared/programs.rs"]
mod programs;
use programs::{KERNEL_STRING, LOG2_HISTOGRAM, MAPS, PREDICATE_COUNT, STRING_EVENT};

/// `@ = count()`: one aggregation call with a constant key.
const COUNT: &str = "
    stdw [r10-8], 0
    mov64 r1, 2
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, 0
    call aggregate
    mov64 r0, 0
    exit
";

/// Pure arithmetic: a 64-bit hash of six context slots (xorshift-multiply
/// rounds), no helper, no stack.
const ARITHMETIC: &str = "
    ldxdw r0, [r1+0]
    ldxdw r2, [r1+8]
    ldxdw r3, [r1+16]
    ldxdw r4, [r1+32]
    ldxdw r5, [r1+40]
    ldxdw r6, [r1+64]
    xor64 r0, r2
    mov64 r7, r0
    rsh64 r7, 33
    xor64 r0, r7
    lddw r8, 0xff51afd7ed558ccd
    mul64 r0, r8
    xor64 r0, r3
    mov64 r7, r0
    rsh64 r7, 29
    xor64 r0, r7
    mul64 r0, r8
    add64 r0, r4
    mov64 r7, r0
    lsh64 r7, 13
    xor64 r0, r7
    xor64 r0, r5
    mov64 r7, r0
    rsh64 r7, 31
    xor64 r0, r7
    mul64 r0, r8
    sub64 r0, r6
    mov32 r7, r0
    arsh64 r0, 7
    add64 r0, r7
    exit
";

/// A fixed-capacity map with keys up to 16 bytes and 8-byte values.
struct SmallMap {
    used: [bool; 64],
    keys: [[u8; 16]; 64],
    values: [[u8; 8]; 64],
}

impl SmallMap {
    fn new() -> Self {
        Self {
            used: [false; 64],
            keys: [[0; 16]; 64],
            values: [[0; 8]; 64],
        }
    }

    fn find(&self, key: &[u8]) -> Option<usize> {
        (0..64).find(|&index| self.used[index] && &self.keys[index][..key.len()] == key)
    }
}

struct BenchHelpers {
    hash: SmallMap,
    counts: SmallMap,
    events: u64,
}

impl BenchHelpers {
    fn new() -> Self {
        Self {
            hash: SmallMap::new(),
            counts: SmallMap::new(),
            events: 0,
        }
    }
}

impl Helpers for BenchHelpers {
    fn read_kernel(&mut self, _dst: &mut [u8], src: u64) -> Result<(), Fault> {
        Err(Fault { address: src })
    }

    fn read_kernel_str(&mut self, dst: &mut [u8], src: u64) -> Result<usize, Fault> {
        // Only the benchmark's own string is "kernel memory".
        if src != KERNEL_STRING.as_ptr() as u64 {
            return Err(Fault { address: src });
        }
        let limit = dst.len() - 1;
        for (index, byte) in KERNEL_STRING.iter().take(limit).enumerate() {
            dst[index] = *byte;
            if *byte == 0 {
                return Ok(index + 1);
            }
        }
        dst[limit] = 0;
        Ok(dst.len())
    }

    fn cpu(&mut self) -> u64 {
        0
    }

    fn task_id(&mut self) -> u64 {
        1
    }

    fn task_name(&mut self, _dst: &mut [u8]) -> usize {
        0
    }

    fn time_ns(&mut self) -> u64 {
        0
    }

    fn map_spec(&self, map: MapId) -> Option<MapSpec> {
        MAPS.spec(map)
    }

    fn map_lookup(&mut self, _map: MapId, key: &[u8], value: &mut [u8]) -> bool {
        match self.hash.find(key) {
            Some(index) => {
                value.copy_from_slice(&self.hash.values[index]);
                true
            }
            None => false,
        }
    }

    fn map_update(&mut self, _map: MapId, key: &[u8], value: &[u8]) -> Result<(), Full> {
        let map = &mut self.hash;
        let index = match map.find(key) {
            Some(index) => index,
            None => map.used.iter().position(|used| !used).ok_or(Full)?,
        };
        map.used[index] = true;
        map.keys[index][..key.len()].copy_from_slice(key);
        map.values[index].copy_from_slice(value);
        Ok(())
    }

    fn map_delete(&mut self, _map: MapId, _key: &[u8]) -> bool {
        false
    }

    fn aggregate(&mut self, _map: MapId, key: &[u8], _value: i64) -> Result<(), Full> {
        let map = &mut self.counts;
        let index = match map.find(key) {
            Some(index) => index,
            None => map.used.iter().position(|used| !used).ok_or(Full)?,
        };
        map.used[index] = true;
        map.keys[index][..key.len()].copy_from_slice(key);
        let count = u64::from_le_bytes(map.values[index]) + 1;
        map.values[index] = count.to_le_bytes();
        Ok(())
    }

    fn emit(&mut self, _record: &[u8]) -> Result<(), Full> {
        self.events += 1;
        Ok(())
    }

    fn stack_trace(&mut self, _dst: &mut [u8]) -> usize {
        0
    }

    fn entry_save(&mut self, _slot: usize, _value: u64) -> Result<(), EntrySaveError> {
        Err(EntrySaveError::NotEntryProgram)
    }
}

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

/// `iterations` interpreter runs; a named function for callgrind's toggle.
#[inline(never)]
fn run_many_interpreter(
    program: &[Insn],
    depth: usize,
    context: &ProbeContext,
    helpers: &mut BenchHelpers,
    stack: &mut Stack,
    iterations: u32,
) -> u64 {
    let mut sum = 0u64;
    for _ in 0..iterations {
        let result = run_on_stack(
            black_box(program),
            black_box(context),
            helpers,
            &mut stack.0,
            depth,
        );
        sum = sum.wrapping_add(result.unwrap_or(u64::MAX));
    }
    sum
}

/// `iterations` JIT runs; a named function for callgrind's toggle.
#[inline(never)]
fn run_many_jit(
    program: &JitProgram,
    context: &ProbeContext,
    helpers: &mut BenchHelpers,
    stack: &mut Stack,
    iterations: u32,
) -> u64 {
    let mut sum = 0u64;
    for _ in 0..iterations {
        let result = black_box(program).run(black_box(context), helpers, &mut stack.0);
        sum = sum.wrapping_add(result.unwrap_or(u64::MAX));
    }
    sum
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

const ROUNDS: usize = 31;

struct Row {
    name: &'static str,
    slots: usize,
    instructions: u64,
    code_bytes: usize,
    compile_us: f64,
    interpreter_ns: f64,
    jit_ns: f64,
}

fn bench(
    name: &'static str,
    text: &str,
    context: &ProbeContext,
    expected: u64,
    executor: &str,
    iterations: u32,
) -> Option<Row> {
    let insns = assemble(text).unwrap_or_else(|error| panic!("{name}: {error}"));
    let verified = verify_alloc(&insns, &VerifierConfig::new(ProgramKind::Probe, &MAPS))
        .unwrap_or_else(|error| panic!("{name}: {error}"));
    let depth = verified.stack_depth();

    let mut scratch = Box::new(JitScratch::new());
    let mut code = vec![0u8; max_code_size(insns.len())];
    let compile_start = Instant::now();
    let compile_rounds = 200;
    let mut len = 0;
    for _ in 0..compile_rounds {
        len = compile(black_box(&verified), &mut code, &mut scratch).expect("compiles");
    }
    let compile_us = compile_start.elapsed().as_secs_f64() * 1e6 / f64::from(compile_rounds);
    let mut buffer = ExecBuffer::new(len);
    let jit = buffer.load(&code[..len], depth);

    let mut stack = Box::new(Stack([0; STACK_SIZE]));
    let mut counter = InstructionCounter::default();
    let traced = run_traced(&insns, context, &mut BenchHelpers::new(), &mut counter);
    let interpreted = run_on_stack(
        &insns,
        context,
        &mut BenchHelpers::new(),
        &mut stack.0,
        depth,
    );
    let compiled = jit.run(context, &mut BenchHelpers::new(), &mut stack.0);
    assert_eq!(traced, Ok(expected), "{name}: interpreter's r0");
    assert_eq!(
        interpreted,
        Ok(expected),
        "{name}: interpreter's r0 on a kept stack"
    );
    assert_eq!(compiled, Ok(expected), "{name}: JIT's r0");

    let mut helpers = BenchHelpers::new();
    match executor {
        "interpreter" => {
            black_box(run_many_interpreter(
                &insns,
                depth,
                context,
                &mut helpers,
                &mut stack,
                iterations,
            ));
            return None;
        }
        "jit" => {
            black_box(run_many_jit(
                &jit,
                context,
                &mut helpers,
                &mut stack,
                iterations,
            ));
            return None;
        }
        _ => {}
    }
    let mut time = |use_jit: bool, iterations: u32| {
        let start = Instant::now();
        if use_jit {
            black_box(run_many_jit(
                &jit,
                context,
                &mut helpers,
                &mut stack,
                iterations,
            ));
        } else {
            black_box(run_many_interpreter(
                &insns,
                depth,
                context,
                &mut helpers,
                &mut stack,
                iterations,
            ));
        }
        start.elapsed().as_nanos() as f64 / f64::from(iterations)
    };
    time(false, iterations / 4);
    time(true, iterations / 4);
    let mut interpreter_samples = Vec::new();
    let mut jit_samples = Vec::new();
    for _ in 0..ROUNDS {
        interpreter_samples.push(time(false, iterations));
        jit_samples.push(time(true, iterations));
    }
    Some(Row {
        name,
        slots: insns.len(),
        instructions: counter.count,
        code_bytes: len,
        compile_us,
        interpreter_ns: median(&mut interpreter_samples),
        jit_ns: median(&mut jit_samples),
    })
}

/// The result of [`ARITHMETIC`] on `context`, computed in Rust.
fn arithmetic_expected(context: &ProbeContext) -> u64 {
    let s = &context.slots;
    let k = 0xff51_afd7_ed55_8ccdu64;
    let mut r0 = s[0] ^ s[1];
    r0 ^= r0 >> 33;
    r0 = r0.wrapping_mul(k);
    r0 ^= s[2];
    r0 ^= r0 >> 29;
    r0 = r0.wrapping_mul(k);
    r0 = r0.wrapping_add(s[4]);
    r0 ^= r0 << 13;
    r0 ^= s[5];
    r0 ^= r0 >> 31;
    r0 = r0.wrapping_mul(k);
    r0 = r0.wrapping_sub(s[8]);
    let low = u64::from(r0 as u32);
    (((r0 as i64) >> 7) as u64).wrapping_add(low)
}

fn main() {
    let mut context = ProbeContext::default();
    context.slots[5] = 7; // rdi: passes the predicate
    context.slots[4] = 3000; // rsi: log2 bucket 13
    context.slots[0] = 0x0123_4567_89ab_cdef;
    context.slots[1] = 0xfedc_ba98_7654_3210;
    context.slots[2] = 42;
    context.slots[8] = 99;
    context.slots[slot::PROBE] = 42;
    let mut string_context = context;
    string_context.slots[5] = KERNEL_STRING.as_ptr() as u64;

    let only = std::env::var("PROBEPORT_BENCH_ONLY").unwrap_or_default();
    let executor = std::env::var("PROBEPORT_BENCH_EXECUTOR").unwrap_or_default();
    let iterations = std::env::var("PROBEPORT_BENCH_ITERATIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20_000);
    let programs = [
        ("count()", COUNT, &context, 0),
        ("predicate + map count", PREDICATE_COUNT, &context, 1),
        (
            "log2 histogram",
            LOG2_HISTOGRAM,
            &context,
            log2_bucket(3000) as u64,
        ),
        ("string read + emit", STRING_EVENT, &string_context, 64),
        (
            "arithmetic (no helper)",
            ARITHMETIC,
            &context,
            arithmetic_expected(&context),
        ),
    ];
    let rows: Vec<Row> = programs
        .into_iter()
        .filter(|(name, ..)| name.contains(only.as_str()))
        .filter_map(|(name, text, context, expected)| {
            bench(name, text, context, expected, &executor, iterations)
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    println!(
        "{:<24} {:>5} {:>6} {:>6} {:>9} {:>13} {:>10} {:>7}",
        "program", "slots", "insns", "bytes", "compile", "interpreter", "JIT", "speedup"
    );
    for row in &rows {
        println!(
            "{:<24} {:>5} {:>6} {:>6} {:>6.1} us {:>10.1} ns {:>7.1} ns {:>6.2}x",
            row.name,
            row.slots,
            row.instructions,
            row.code_bytes,
            row.compile_us,
            row.interpreter_ns,
            row.jit_ns,
            row.interpreter_ns / row.jit_ns,
        );
    }
}
