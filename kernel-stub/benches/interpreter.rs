//! Interpreter speed against rbpf's interpreter, on realistic handlers.
//!
//! Run with `cargo bench -p kernel-stub --bench interpreter`.
//!
//! # Design
//!
//! Each handler is assembled once and the same wire bytes run on both
//! interpreters: ours through [`kernel_stub::interpreter::run`] with a [`Helpers`]
//! implementation, rbpf's through `EbpfVmRaw::execute_program` (its interpreter,
//! not its JIT) with plain `fn` helpers registered at the same numbers. Both helper
//! sets do the same work on the same kind of state ([`HostState`]): ours reach it
//! through `self`, rbpf's through a thread-local, because rbpf helpers are bare
//! functions. rbpf helpers receive real host addresses and trust them; ours receive
//! slices the interpreter has already bounds-checked.
//!
//! Every program sticks to opcodes rbpf 0.4.1 executes and to non-negative
//! immediates in jump comparisons (rbpf zero-extends those, RFC 9669 sign-extends).
//!
//! Per program: the instruction count comes from our [`InstructionCounter`] tracer
//! (the path is the same on both: both return the same `r0`, checked against an
//! independently computed value); times are the median over several rounds of
//! many runs, after a warm-up, alternating between the two interpreters.

use std::cell::RefCell;
use std::ffi::CStr;
use std::hint::black_box;
use std::time::Instant;

use kernel_stub::interpreter::{
    EntrySaveError, Fault, Full, Helpers, InstructionCounter, run, run_traced,
};
use probe_port_protocol::asm::assemble;
use probe_port_protocol::context::{ProbeContext, slot};
use probe_port_protocol::isa::{Helper, Insn, encode, helper_error};
use probe_port_protocol::maps::{MapId, MapSpec, log2_bucket};

#[path = "shared/programs.rs"]
mod programs;
use programs::{KERNEL_STRING, LOG2_HISTOGRAM, MAPS, PREDICATE_COUNT, STRING_EVENT};

fn map_spec(map: u64) -> Option<MapSpec> {
    MAPS.iter().find(|spec| spec.map.0 as u64 == map).copied()
}

/// A fixed-capacity open-addressing map with keys up to 16 bytes and 8-byte
/// values: the shape of a stub map, without allocation.
struct SmallMap {
    used: [bool; 64],
    keys: [[u8; 16]; 64],
    values: [[u8; 8]; 64],
}

impl SmallMap {
    const fn new() -> Self {
        Self {
            used: [false; 64],
            keys: [[0; 16]; 64],
            values: [[0; 8]; 64],
        }
    }

    /// The slot holding `key`, or the free slot where it would go.
    fn find(&self, key: &[u8]) -> Option<usize> {
        let mut hash = 0u64;
        for chunk in key.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            hash = (hash ^ u64::from_le_bytes(word)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        let start = (hash >> 58) as usize;
        (0..64)
            .map(|probe| (start + probe) % 64)
            .find(|&index| !self.used[index] || self.keys[index][..key.len()] == *key)
    }

    fn lookup(&self, key: &[u8], value: &mut [u8]) -> bool {
        match self.find(key) {
            Some(index) if self.used[index] => {
                value.copy_from_slice(&self.values[index][..value.len()]);
                true
            }
            _ => false,
        }
    }

    fn update(&mut self, key: &[u8], value: &[u8]) -> Result<(), Full> {
        let index = self.find(key).ok_or(Full)?;
        self.used[index] = true;
        self.keys[index][..key.len()].copy_from_slice(key);
        self.values[index][..value.len()].copy_from_slice(value);
        Ok(())
    }

    fn add(&mut self, key: &[u8], delta: u64) -> Result<(), Full> {
        let index = self.find(key).ok_or(Full)?;
        if !self.used[index] {
            self.used[index] = true;
            self.keys[index][..key.len()].copy_from_slice(key);
            self.values[index] = [0; 8];
        }
        let sum = u64::from_le_bytes(self.values[index]).wrapping_add(delta);
        self.values[index] = sum.to_le_bytes();
        Ok(())
    }
}

/// The state both helper sets work on.
struct HostState {
    counts: SmallMap,
    histogram: SmallMap,
    ring: [u8; 4096],
    ring_head: usize,
}

impl HostState {
    const fn new() -> Self {
        Self {
            counts: SmallMap::new(),
            histogram: SmallMap::new(),
            ring: [0; 4096],
            ring_head: 0,
        }
    }

    fn map(&mut self, map: u64) -> &mut SmallMap {
        if map == 1 {
            &mut self.counts
        } else {
            &mut self.histogram
        }
    }

    fn emit(&mut self, record: &[u8]) -> Result<(), Full> {
        if record.len() > self.ring.len() {
            return Err(Full);
        }
        if self.ring_head + record.len() > self.ring.len() {
            self.ring_head = 0;
        }
        self.ring[self.ring_head..self.ring_head + record.len()].copy_from_slice(record);
        self.ring_head += record.len();
        Ok(())
    }

    /// Copies the NUL-terminated "kernel" string at `src` into `dst`.
    fn read_str(dst: &mut [u8], src: u64) -> Result<usize, Fault> {
        let base = KERNEL_STRING.as_ptr() as u64;
        let offset = src.wrapping_sub(base);
        if offset >= KERNEL_STRING.len() as u64 {
            return Err(Fault { address: src });
        }
        let source = &KERNEL_STRING[offset as usize..];
        let limit = dst.len() - 1;
        // Word-at-a-time NUL search, as a kernel's string copy does.
        let window = &source[..source.len().min(limit)];
        let length = match CStr::from_bytes_until_nul(window) {
            Ok(string) => string.count_bytes(),
            Err(_) if window.len() == limit => limit,
            Err(_) => {
                return Err(Fault {
                    address: base + KERNEL_STRING.len() as u64,
                });
            }
        };
        dst[..length].copy_from_slice(&window[..length]);
        dst[length] = 0;
        Ok(length + 1)
    }
}

/// Our executor's helpers for the benchmark.
struct BenchHelpers {
    state: HostState,
}

impl Helpers for BenchHelpers {
    fn read_kernel(&mut self, _dst: &mut [u8], src: u64) -> Result<(), Fault> {
        Err(Fault { address: src })
    }
    fn read_kernel_str(&mut self, dst: &mut [u8], src: u64) -> Result<usize, Fault> {
        HostState::read_str(dst, src)
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
        map_spec(map.0 as u64)
    }
    fn map_lookup(&mut self, map: MapId, key: &[u8], value: &mut [u8]) -> bool {
        self.state.map(map.0 as u64).lookup(key, value)
    }
    fn map_update(&mut self, map: MapId, key: &[u8], value: &[u8]) -> Result<(), Full> {
        self.state.map(map.0 as u64).update(key, value)
    }
    fn map_delete(&mut self, _map: MapId, _key: &[u8]) -> bool {
        false
    }
    fn aggregate(&mut self, map: MapId, key: &[u8], _value: i64) -> Result<(), Full> {
        self.state.map(map.0 as u64).add(key, 1)
    }
    fn emit(&mut self, record: &[u8]) -> Result<(), Full> {
        self.state.emit(record)
    }
    fn stack_trace(&mut self, _dst: &mut [u8]) -> usize {
        0
    }
    fn entry_save(&mut self, _slot: usize, _value: u64) -> Result<(), EntrySaveError> {
        Err(EntrySaveError::NotEntryProgram)
    }
}

thread_local! {
    /// rbpf helpers are bare functions, so their state lives here.
    static RBPF_STATE: RefCell<HostState> = const { RefCell::new(HostState::new()) };
}

/// The stack bytes rbpf passes as a pointer and size.
///
/// # Safety
///
/// `address..address + size` must be memory the caller may read and write for the
/// returned lifetime: here, always a buffer on rbpf's own stack, at the offsets and
/// sizes the benchmark programs use.
unsafe fn rbpf_slice<'a>(address: u64, size: usize) -> &'a mut [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts_mut(address as *mut u8, size) }
}

fn rbpf_map_lookup(map: u64, key: u64, value: u64, _: u64, _: u64) -> u64 {
    let Some(spec) = map_spec(map) else {
        return helper_error::EINVAL as u64;
    };
    // SAFETY: the benchmark programs pass stack buffers of the map's sizes.
    let (key, value) = unsafe {
        (
            rbpf_slice(key, spec.key_size as usize),
            rbpf_slice(value, spec.value_size as usize),
        )
    };
    let found = RBPF_STATE.with(|state| state.borrow_mut().map(map).lookup(key, value));
    if found {
        0
    } else {
        helper_error::ENOENT as u64
    }
}

fn rbpf_map_update(map: u64, key: u64, value: u64, _: u64, _: u64) -> u64 {
    let Some(spec) = map_spec(map) else {
        return helper_error::EINVAL as u64;
    };
    // SAFETY: the benchmark programs pass stack buffers of the map's sizes.
    let (key, value) = unsafe {
        (
            rbpf_slice(key, spec.key_size as usize),
            rbpf_slice(value, spec.value_size as usize),
        )
    };
    match RBPF_STATE.with(|state| state.borrow_mut().map(map).update(key, value)) {
        Ok(()) => 0,
        Err(Full) => helper_error::ENOSPC as u64,
    }
}

fn rbpf_aggregate(map: u64, key: u64, _value: u64, _: u64, _: u64) -> u64 {
    let Some(spec) = map_spec(map) else {
        return helper_error::EINVAL as u64;
    };
    // SAFETY: the benchmark programs pass a stack buffer of the map's key size.
    let key = unsafe { rbpf_slice(key, spec.key_size as usize) };
    match RBPF_STATE.with(|state| state.borrow_mut().map(map).add(key, 1)) {
        Ok(()) => 0,
        Err(Full) => helper_error::ENOSPC as u64,
    }
}

fn rbpf_read_kernel_str(dst: u64, size: u64, src: u64, _: u64, _: u64) -> u64 {
    // SAFETY: the benchmark program passes a 64-byte stack buffer.
    let dst = unsafe { rbpf_slice(dst, size as usize) };
    match HostState::read_str(dst, src) {
        Ok(written) => written as u64,
        Err(_) => {
            dst.fill(0);
            helper_error::EFAULT as u64
        }
    }
}

fn rbpf_emit(data: u64, size: u64, _: u64, _: u64, _: u64) -> u64 {
    // SAFETY: the benchmark program passes an 80-byte stack buffer.
    let record = unsafe { rbpf_slice(data, size as usize) };
    match RBPF_STATE.with(|state| state.borrow_mut().emit(record)) {
        Ok(()) => 0,
        Err(Full) => helper_error::ENOSPC as u64,
    }
}

/// Timing rounds per program and interpreter.
const ROUNDS: usize = 41;

/// The time of `iterations` calls of `run_once`, in ns per call.
fn time_per_call(run_once: &mut impl FnMut() -> u64, iterations: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(run_once());
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

/// The median ns per call of `ours` and `theirs` over `rounds` rounds of
/// `iterations` calls each, after a warm-up. The rounds alternate between the two
/// so that a noisy neighbour slows both alike.
fn measure_pair(
    mut ours: impl FnMut() -> u64,
    mut theirs: impl FnMut() -> u64,
    iterations: u32,
    rounds: usize,
) -> (f64, f64) {
    time_per_call(&mut ours, iterations / 4);
    time_per_call(&mut theirs, iterations / 4);
    let mut our_samples = Vec::with_capacity(rounds);
    let mut their_samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        our_samples.push(time_per_call(&mut ours, iterations));
        their_samples.push(time_per_call(&mut theirs, iterations));
    }
    (median(&mut our_samples), median(&mut their_samples))
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

struct Row {
    name: &'static str,
    instructions: u64,
    ours_ns: f64,
    rbpf_ns: f64,
}

/// Runs one program on both interpreters; `expected` is its `r0` on fresh state.
fn bench(name: &'static str, text: &str, context: &ProbeContext, expected: u64) -> Row {
    let program: Vec<Insn> = assemble(text).unwrap_or_else(|error| panic!("{name}: {error}"));
    let bytes = encode(&program);

    let mut ours = BenchHelpers {
        state: HostState::new(),
    };
    let mut counter = InstructionCounter::default();
    let our_result = run_traced(&program, context, &mut ours, &mut counter)
        .unwrap_or_else(|trap| panic!("{name}: {trap}"));

    let mut vm = rbpf::EbpfVmRaw::new(Some(&bytes)).expect("rbpf accepts the program");
    let registrations: [(Helper, rbpf::ebpf::Helper); 5] = [
        (Helper::ReadKernelStr, rbpf_read_kernel_str),
        (Helper::MapLookup, rbpf_map_lookup),
        (Helper::MapUpdate, rbpf_map_update),
        (Helper::Aggregate, rbpf_aggregate),
        (Helper::Emit, rbpf_emit),
    ];
    for (helper, function) in registrations {
        vm.register_helper(helper.id(), function)
            .expect("helper registers");
    }
    let string_start = KERNEL_STRING.as_ptr() as u64;
    vm.register_allowed_memory(string_start..string_start + KERNEL_STRING.len() as u64);
    let mut rbpf_context = *context.as_bytes();
    RBPF_STATE.with(|state| *state.borrow_mut() = HostState::new());
    let rbpf_result = vm
        .execute_program(&mut rbpf_context)
        .expect("rbpf runs the program");
    assert_eq!(our_result, expected, "{name}: r0");
    assert_eq!(rbpf_result, expected, "{name}: rbpf's r0");

    let iterations = std::env::var("PROBEPORT_BENCH_ITERATIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20_000);
    let (ours_ns, rbpf_ns) = measure_pair(
        || run(black_box(&program), black_box(context), &mut ours).unwrap_or(u64::MAX),
        || {
            vm.execute_program(black_box(&mut rbpf_context))
                .unwrap_or(u64::MAX)
        },
        iterations,
        ROUNDS,
    );
    Row {
        name,
        instructions: counter.count,
        ours_ns,
        rbpf_ns,
    }
}

fn main() {
    let mut context = ProbeContext::default();
    context.slots[5] = 7; // rdi: passes the predicate of program 1
    context.slots[4] = 3000; // rsi: log2 bucket 13
    context.slots[slot::PROBE] = 42;
    let mut string_context = context;
    string_context.slots[5] = KERNEL_STRING.as_ptr() as u64;

    // PROBEPORT_BENCH_ONLY=<part of a name> runs only the matching programs (for
    // profiling one at a time); PROBEPORT_BENCH_ITERATIONS sets the round size.
    let only = std::env::var("PROBEPORT_BENCH_ONLY").unwrap_or_default();
    let programs = [
        // The first count of the key.
        ("predicate + map count", PREDICATE_COUNT, &context, 1),
        (
            "log2 histogram",
            LOG2_HISTOGRAM,
            &context,
            log2_bucket(3000) as u64,
        ),
        // 63 bytes of the string and the NUL.
        ("string read + emit", STRING_EVENT, &string_context, 64),
    ];
    let rows: Vec<Row> = programs
        .into_iter()
        .filter(|(name, ..)| name.contains(only.as_str()))
        .map(|(name, text, context, expected)| bench(name, text, context, expected))
        .collect();

    println!(
        "{:<24} {:>6} {:>12} {:>8} {:>12} {:>8} {:>7}",
        "program", "insns", "probeport", "ns/insn", "rbpf", "ns/insn", "ratio"
    );
    for row in &rows {
        let insns = row.instructions as f64;
        println!(
            "{:<24} {:>6} {:>9.1} ns {:>8.2} {:>9.1} ns {:>8.2} {:>6.2}x",
            row.name,
            row.instructions,
            row.ours_ns,
            row.ours_ns / insns,
            row.rbpf_ns,
            row.rbpf_ns / insns,
            row.rbpf_ns / row.ours_ns,
        );
    }
}
