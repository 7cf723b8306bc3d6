//! Conformance of the handler interpreter with RFC 9669 and probeport's helpers.
//!
//! Tables of hand-computed cases per instruction class, each run as a small
//! assembled program; helper tests against an in-memory [`Helpers`]; traps for
//! everything a program must not do; a property test that arbitrary slot
//! sequences never panic and always stop within the program's length.

use std::collections::BTreeMap;

use kernel_stub::interpreter::{
    EntrySaveError, Fault, Full, Helpers, InstructionCounter, Trap, TrapKind, run, run_on_stack,
    run_traced,
};
use probe_port_protocol::asm::assemble;
use probe_port_protocol::context::{ENTRY_SLOTS, ProbeContext};
use probe_port_protocol::isa::{Helper, Insn, helper_error, op};
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

const EFAULT: u64 = helper_error::EFAULT as u64;
const ENOENT: u64 = helper_error::ENOENT as u64;
const EINVAL: u64 = helper_error::EINVAL as u64;
const ENOSPC: u64 = helper_error::ENOSPC as u64;

/// Where [`TestHelpers`] pretends kernel memory lives.
const KERNEL_BASE: u64 = 0xffff_8000_0000_1000;
/// Map 1: a hash map, 8-byte keys, 16-byte values, two entries.
const HASH: u16 = 1;
/// Map 2: a sum aggregation, 4-byte keys, two entries.
const SUM: u16 = 2;
/// Map 3: a hash map with 4-byte keys and values.
const SMALL_HASH: u16 = 3;

fn map_specs() -> Vec<MapSpec> {
    vec![
        MapSpec {
            map: MapId(HASH),
            kind: MapKind::Hash,
            key_size: 8,
            value_size: 16,
            max_entries: 2,
        },
        MapSpec {
            map: MapId(SUM),
            kind: MapKind::Aggregate(AggregateKind::Sum),
            key_size: 4,
            value_size: 8,
            max_entries: 2,
        },
        MapSpec {
            map: MapId(SMALL_HASH),
            kind: MapKind::Hash,
            key_size: 4,
            value_size: 4,
            max_entries: 4,
        },
    ]
}

/// An executor in memory: "kernel" bytes at [`KERNEL_BASE`], maps in B-trees, an
/// event list with a capacity, entry slots, and a log of faults.
struct TestHelpers {
    kernel: Vec<u8>,
    specs: Vec<MapSpec>,
    maps: BTreeMap<(u16, Vec<u8>), Vec<u8>>,
    sums: BTreeMap<(u16, Vec<u8>), i64>,
    events: Vec<Vec<u8>>,
    event_capacity: usize,
    faults: Vec<u64>,
    entry_program: bool,
    entry: [Option<u64>; ENTRY_SLOTS],
    task_name: &'static [u8],
    stack: Vec<u64>,
    /// When set, `read_kernel_str` returns this count instead of the true one.
    lie_about_length: Option<usize>,
}

impl Default for TestHelpers {
    fn default() -> Self {
        let mut kernel = b"hello, kernel!\0".to_vec();
        kernel.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        kernel.extend_from_slice(b"a long kernel string\0");
        // A tail without a NUL, so string reads can run off the end.
        kernel.extend_from_slice(b"xyz");
        Self {
            kernel,
            specs: map_specs(),
            maps: BTreeMap::new(),
            sums: BTreeMap::new(),
            events: Vec::new(),
            event_capacity: 4,
            faults: Vec::new(),
            entry_program: true,
            entry: [None; ENTRY_SLOTS],
            task_name: b"init",
            stack: vec![
                0xffff_ffff_8100_0010,
                0xffff_ffff_8100_0020,
                0xffff_ffff_8100_0030,
            ],
            lie_about_length: None,
        }
    }
}

impl TestHelpers {
    fn count_of(&self, map: u16) -> usize {
        self.maps.keys().filter(|(id, _)| *id == map).count()
            + self.sums.keys().filter(|(id, _)| *id == map).count()
    }

    fn max_entries(&self, map: MapId) -> usize {
        self.map_spec(map)
            .map_or(0, |spec| spec.max_entries as usize)
    }

    /// Copies up to `dst.len()` kernel bytes from `src`, faulting at the first
    /// address outside the kernel bytes (after copying what came before, so the
    /// interpreter's zeroing is observable).
    fn copy_kernel(&mut self, dst: &mut [u8], src: u64) -> Result<(), Fault> {
        for (index, byte) in dst.iter_mut().enumerate() {
            let address = src.wrapping_add(index as u64);
            let offset = address.wrapping_sub(KERNEL_BASE);
            match self.kernel.get(offset as usize) {
                Some(value) if offset < self.kernel.len() as u64 => *byte = *value,
                _ => {
                    self.faults.push(address);
                    return Err(Fault { address });
                }
            }
        }
        Ok(())
    }
}

impl Helpers for TestHelpers {
    fn read_kernel(&mut self, dst: &mut [u8], src: u64) -> Result<(), Fault> {
        self.copy_kernel(dst, src)
    }

    fn read_kernel_str(&mut self, dst: &mut [u8], src: u64) -> Result<usize, Fault> {
        let limit = dst.len() - 1;
        for (index, slot) in dst[..limit].iter_mut().enumerate() {
            let mut byte = [0u8];
            self.copy_kernel(&mut byte, src.wrapping_add(index as u64))?;
            *slot = byte[0];
            if byte[0] == 0 {
                return Ok(self.lie_about_length.unwrap_or(index + 1));
            }
        }
        dst[limit] = 0;
        Ok(self.lie_about_length.unwrap_or(dst.len()))
    }

    fn cpu(&mut self) -> u64 {
        3
    }

    fn task_id(&mut self) -> u64 {
        1234
    }

    fn task_name(&mut self, dst: &mut [u8]) -> usize {
        let length = self.task_name.len().min(dst.len());
        dst[..length].copy_from_slice(&self.task_name[..length]);
        length
    }

    fn time_ns(&mut self) -> u64 {
        1_000_000_007
    }

    fn map_spec(&self, map: MapId) -> Option<MapSpec> {
        self.specs.iter().find(|spec| spec.map == map).copied()
    }

    fn map_lookup(&mut self, map: MapId, key: &[u8], value: &mut [u8]) -> bool {
        match self.maps.get(&(map.0, key.to_vec())) {
            Some(stored) => {
                value.copy_from_slice(stored);
                true
            }
            None => false,
        }
    }

    fn map_update(&mut self, map: MapId, key: &[u8], value: &[u8]) -> Result<(), Full> {
        let entry = (map.0, key.to_vec());
        if !self.maps.contains_key(&entry) && self.count_of(map.0) >= self.max_entries(map) {
            return Err(Full);
        }
        self.maps.insert(entry, value.to_vec());
        Ok(())
    }

    fn map_delete(&mut self, map: MapId, key: &[u8]) -> bool {
        self.maps.remove(&(map.0, key.to_vec())).is_some()
    }

    fn aggregate(&mut self, map: MapId, key: &[u8], value: i64) -> Result<(), Full> {
        let entry = (map.0, key.to_vec());
        if !self.sums.contains_key(&entry) && self.count_of(map.0) >= self.max_entries(map) {
            return Err(Full);
        }
        let sum = self.sums.entry(entry).or_insert(0);
        *sum = sum.wrapping_add(value);
        Ok(())
    }

    fn emit(&mut self, record: &[u8]) -> Result<(), Full> {
        if self.events.len() >= self.event_capacity {
            return Err(Full);
        }
        self.events.push(record.to_vec());
        Ok(())
    }

    fn stack_trace(&mut self, dst: &mut [u8]) -> usize {
        let mut written = 0;
        for (chunk, address) in dst.chunks_exact_mut(8).zip(&self.stack) {
            chunk.copy_from_slice(&address.to_le_bytes());
            written += 1;
        }
        written
    }

    fn entry_save(&mut self, slot: usize, value: u64) -> Result<(), EntrySaveError> {
        if !self.entry_program {
            return Err(EntrySaveError::NotEntryProgram);
        }
        if self.entry.iter().all(Option::is_some) {
            return Err(EntrySaveError::Full);
        }
        self.entry[slot] = Some(value);
        Ok(())
    }
}

/// The context every test sees: recognisable values in the first slots.
fn context() -> ProbeContext {
    let mut context = ProbeContext::default();
    context.slots[0] = 0x8877_6655_4433_2211;
    context.slots[1] = 0xffff_ffff_ffff_fffe;
    context.slots[2] = 0x0000_0000_8000_0080;
    context.slots[5] = 42;
    context.slots[31] = 0xdead_beef_cafe_f00d;
    context
}

fn program(text: &str) -> Vec<Insn> {
    assemble(text).unwrap_or_else(|error| panic!("{error}\n{text}"))
}

fn run_with(text: &str, helpers: &mut TestHelpers) -> Result<u64, Trap> {
    run(&program(text), &context(), helpers)
}

fn exec(text: &str) -> Result<u64, Trap> {
    run_with(text, &mut TestHelpers::default())
}

/// `r0` of a program that must not trap.
fn r0(text: &str) -> u64 {
    exec(text).unwrap_or_else(|trap| panic!("{trap}\n{text}"))
}

/// The trap of a program that must trap.
fn trap_of(text: &str) -> Trap {
    match exec(text) {
        Ok(value) => panic!("expected a trap, got r0 = {value:#x}\n{text}"),
        Err(trap) => trap,
    }
}

/// One slot from its fields, as `.raw` text.
fn raw(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> String {
    let bytes = Insn::new(code, dst, src, off, imm).to_bytes();
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(".raw 0x{hex}")
}

// ---------------------------------------------------------------------------
// Arithmetic
// ---------------------------------------------------------------------------

/// The source operand of an arithmetic case.
#[derive(Clone, Copy, Debug)]
enum Src {
    /// The immediate form.
    K(i64),
    /// The register form, with `r2` holding this.
    X(u64),
    /// A one-operand instruction.
    None,
}

use Src::{K, X};

/// Runs `op r1, <src>` with `r1 = dst` and returns `r1`.
fn alu(op: &str, dst: u64, src: Src) -> u64 {
    let instruction = match src {
        K(imm) => format!("{op} r1, {imm}"),
        X(_) => format!("{op} r1, r2"),
        Src::None => format!("{op} r1"),
    };
    let source = match src {
        X(value) => format!("lddw r2, {value:#x}"),
        _ => String::new(),
    };
    r0(&format!(
        "lddw r1, {dst:#x}\n{source}\n{instruction}\nmov64 r0, r1\nexit"
    ))
}

fn check_alu(cases: &[(&str, u64, Src, u64)]) {
    let mut failures = Vec::new();
    for &(op, dst, src, expected) in cases {
        let got = alu(op, dst, src);
        if got != expected {
            failures.push(format!(
                "{op} {dst:#x}, {src:?}: got {got:#x}, expected {expected:#x}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

const MIN64: u64 = i64::MIN as u64;
const MAX: u64 = u64::MAX;
const fn neg(value: i64) -> u64 {
    value as u64
}

#[test]
fn alu64_arithmetic() {
    check_alu(&[
        ("add64", 1, K(2), 3),
        ("add64", 5, K(-1), 4),
        ("add64", MAX, X(1), 0),
        ("add64", 0x1_0000_0000, X(0xffff_ffff), 0x1_ffff_ffff),
        ("sub64", 0, K(1), MAX),
        ("sub64", 10, X(3), 7),
        ("sub64", 3, K(-4), 7),
        ("mul64", 3, K(-2), neg(-6)),
        ("mul64", 0x1_0000_0000, X(0x1_0000_0000), 0),
        ("mul64", 0x1234, X(0x10), 0x12340),
        ("neg64", 5, Src::None, neg(-5)),
        ("neg64", 0, Src::None, 0),
        ("neg64", MIN64, Src::None, MIN64),
    ]);
}

#[test]
fn alu64_division_and_modulo() {
    check_alu(&[
        // Unsigned: the immediate is sign-extended, then divided unsigned.
        ("div64", 100, K(7), 14),
        ("div64", 100, K(-1), 0),
        ("div64", MAX, K(-1), 1),
        ("div64", MAX, X(2), 0x7fff_ffff_ffff_ffff),
        ("div64", 100, K(0), 0),
        ("div64", 100, X(0), 0),
        ("mod64", 100, K(7), 2),
        ("mod64", 100, K(-1), 100),
        ("mod64", 100, X(0), 100),
        ("mod64", 100, K(0), 100),
        ("mod64", MAX, X(10), 5),
        // Signed (offset 1): truncating division, remainder takes the dividend's sign.
        ("sdiv64", neg(-7), K(2), neg(-3)),
        ("sdiv64", 7, K(-2), neg(-3)),
        ("sdiv64", neg(-7), X(neg(-2)), 3),
        ("sdiv64", MIN64, X(neg(-1)), MIN64),
        ("sdiv64", MIN64, K(-1), MIN64),
        ("sdiv64", neg(-7), X(0), 0),
        ("sdiv64", neg(-7), K(0), 0),
        ("smod64", neg(-7), K(2), neg(-1)),
        ("smod64", 7, K(-2), 1),
        ("smod64", neg(-7), X(neg(-2)), neg(-1)),
        ("smod64", MIN64, X(neg(-1)), 0),
        ("smod64", MIN64, K(-1), 0),
        ("smod64", neg(-7), X(0), neg(-7)),
        ("smod64", neg(-7), K(0), neg(-7)),
    ]);
}

#[test]
fn alu64_bitwise_and_shifts() {
    check_alu(&[
        ("or64", 0x12, K(-256), 0xffff_ffff_ffff_ff12),
        (
            "or64",
            0xf0,
            X(0x0f00_0000_0000_000f),
            0x0f00_0000_0000_00ff,
        ),
        ("and64", 0x1234_5678_9abc_def0, K(-1), 0x1234_5678_9abc_def0),
        ("and64", 0x1234_5678_9abc_def0, K(0xff), 0xf0),
        (
            "and64",
            0x1234_5678_9abc_def0,
            X(0xffff_0000_0000_0000),
            0x1234_0000_0000_0000,
        ),
        ("xor64", 0, K(-1), MAX),
        ("xor64", 0xff00, X(0x0ff0), 0xf0f0),
        ("lsh64", 1, K(4), 16),
        ("lsh64", 1, K(63), MIN64),
        ("lsh64", 1, X(65), 2),
        ("lsh64", 3, X(64), 3),
        ("rsh64", 0xf000_0000_0000_0000, K(60), 0xf),
        ("rsh64", MAX, X(68), 0x0fff_ffff_ffff_ffff),
        ("arsh64", MIN64, K(63), MAX),
        ("arsh64", neg(-16), K(2), neg(-4)),
        ("arsh64", neg(-16), X(66), neg(-4)),
        ("arsh64", 0x4000_0000_0000_0000, X(62), 1),
    ]);
}

#[test]
fn alu64_moves() {
    check_alu(&[
        ("mov64", 7, K(-1), MAX),
        ("mov64", 7, K(0x7fff_ffff), 0x7fff_ffff),
        ("mov64", 7, X(0x1122_3344_5566_7788), 0x1122_3344_5566_7788),
        ("mov64sx8", 0, X(0x80), 0xffff_ffff_ffff_ff80),
        ("mov64sx8", 0, X(0x1234_567f), 0x7f),
        ("mov64sx16", 0, X(0x1234_8000), 0xffff_ffff_ffff_8000),
        ("mov64sx16", 0, X(0xffff_7fff), 0x7fff),
        ("mov64sx32", 0, X(0x8000_0000), 0xffff_ffff_8000_0000),
        ("mov64sx32", 0, X(0x1_7fff_ffff), 0x7fff_ffff),
    ]);
}

#[test]
fn alu32_arithmetic() {
    check_alu(&[
        ("add32", 0xffff_ffff, K(1), 0),
        ("add32", 0x1234_5678_0000_0001, K(1), 2),
        ("add32", 0x1_0000_0005, X(0xffff_ffff_0000_0003), 8),
        ("add32", 5, K(-1), 4),
        ("sub32", 0, K(1), 0xffff_ffff),
        ("sub32", 0xffff_ffff_0000_000a, X(3), 7),
        ("mul32", 0x1_0000, X(0x1_0000), 0),
        ("mul32", 2, K(-1), 0xffff_fffe),
        ("mul32", 0x1_0000_0003, K(5), 15),
        ("neg32", 1, Src::None, 0xffff_ffff),
        ("neg32", 0x1_0000_0000, Src::None, 0),
        ("neg32", 0x8000_0000, Src::None, 0x8000_0000),
    ]);
}

#[test]
fn alu32_division_and_modulo() {
    check_alu(&[
        ("div32", 0x1_0000_0064, K(10), 10),
        ("div32", 100, K(-1), 0),
        ("div32", 0xffff_ffff, K(-1), 1),
        ("div32", 100, X(0x1_0000_0000), 0),
        ("div32", 0xdead_0000_0064, K(0), 0),
        ("mod32", 0x1_0000_0064, K(7), 2),
        ("mod32", 0xdead_beef_0000_0064, X(0), 0x64),
        ("mod32", 0xdead_beef_0000_0064, K(0), 0x64),
        ("mod32", 100, X(0xffff_ffff_0000_0007), 2),
        ("sdiv32", neg(-7), K(2), 0xffff_fffd),
        ("sdiv32", 0xffff_fff9, X(neg(-2)), 3),
        ("sdiv32", 0x8000_0000, K(-1), 0x8000_0000),
        ("sdiv32", 0x8000_0000, X(0xffff_ffff), 0x8000_0000),
        ("sdiv32", neg(-7), X(0), 0),
        ("smod32", neg(-7), K(2), 0xffff_ffff),
        ("smod32", 7, K(-2), 1),
        ("smod32", 0x8000_0000, K(-1), 0),
        ("smod32", 0x8000_0000, X(0xffff_ffff), 0),
        ("smod32", 0xffff_ffff_ffff_fff9, X(0), 0xffff_fff9),
        ("smod32", 0xffff_ffff_ffff_fff9, K(0), 0xffff_fff9),
    ]);
}

#[test]
fn alu32_bitwise_shifts_and_moves() {
    check_alu(&[
        ("or32", 0xffff_ffff_0000_0000, K(1), 1),
        ("or32", 0x10, X(0xffff_0000_0000_0001), 0x11),
        ("and32", 0xffff_ffff_ffff_ffff, K(-1), 0xffff_ffff),
        ("and32", 0xffff_ffff_1234_5678, X(0xffff), 0x5678),
        ("xor32", 0xffff_ffff_0000_ffff, K(-1), 0xffff_0000),
        ("xor32", 0x1_0000_00ff, X(0x0f), 0xf0),
        ("lsh32", 1, K(31), 0x8000_0000),
        ("lsh32", 0x8000_0000, K(1), 0),
        ("lsh32", 1, X(33), 2),
        ("rsh32", 0xffff_ffff_8000_0000, K(31), 1),
        ("rsh32", 0x8000_0000, X(35), 0x1000_0000),
        ("arsh32", 0x8000_0000, K(4), 0xf800_0000),
        ("arsh32", 0xffff_ffff_7000_0000, K(4), 0x0700_0000),
        ("arsh32", 0x8000_0000, X(36), 0xf800_0000),
        ("mov32", 7, K(-1), 0xffff_ffff),
        ("mov32", 7, X(0x1234_5678_9abc_def0), 0x9abc_def0),
        ("mov32sx8", 0, X(0x80), 0xffff_ff80),
        ("mov32sx8", 0, X(0xffff_ff7f), 0x7f),
        ("mov32sx16", 0, X(0x8000), 0xffff_8000),
        ("mov32sx16", 0, X(0x1_0000_7fff), 0x7fff),
    ]);
}

#[test]
fn byte_swaps() {
    let value = 0x1122_3344_5566_7788;
    check_alu(&[
        ("le16", value, Src::None, 0x7788),
        ("le32", value, Src::None, 0x5566_7788),
        ("le64", value, Src::None, value),
        ("be16", value, Src::None, 0x8877),
        ("be32", value, Src::None, 0x8877_6655),
        ("be64", value, Src::None, 0x8877_6655_4433_2211),
        ("bswap16", value, Src::None, 0x8877),
        ("bswap32", value, Src::None, 0x8877_6655),
        ("bswap64", value, Src::None, 0x8877_6655_4433_2211),
    ]);
}

#[test]
fn lddw_loads_all_64_bits() {
    for value in [
        0x8000_0000_ffff_ffffu64,
        0xffff_ffff_0000_0001,
        0x1122_3344_5566_7788,
        0,
        MAX,
    ] {
        assert_eq!(r0(&format!("lddw r0, {value:#x}\nexit")), value);
    }
    // Two slots: a jump over an lddw skips both.
    assert_eq!(r0("mov64 r0, 1\nja +2\nlddw r0, 0x1234567890\nexit"), 1);
}

// ---------------------------------------------------------------------------
// Jumps
// ---------------------------------------------------------------------------

/// Runs `op r1, <src>, taken` with `r1 = dst` and says whether it jumped.
fn jumps(op: &str, dst: u64, src: Src) -> bool {
    let (source, operand) = match src {
        K(imm) => (String::new(), imm.to_string()),
        X(value) => (format!("lddw r2, {value:#x}"), "r2".to_string()),
        Src::None => unreachable!("every jump has a source"),
    };
    let text = format!(
        "lddw r1, {dst:#x}\n{source}\nmov64 r0, 0\n{op} r1, {operand}, taken\nexit\n\
         taken:\nmov64 r0, 1\nexit"
    );
    r0(&text) == 1
}

fn check_jumps(cases: &[(&str, u64, Src, bool)]) {
    let mut failures = Vec::new();
    for &(op, dst, src, expected) in cases {
        let got = jumps(op, dst, src);
        if got != expected {
            failures.push(format!(
                "{op} {dst:#x}, {src:?}: taken {got}, expected {expected}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn jmp64_conditions() {
    check_jumps(&[
        ("jeq", 5, K(5), true),
        ("jeq", 5, K(6), false),
        ("jeq", MAX, K(-1), true),
        ("jeq", 0xffff_ffff, K(-1), false),
        ("jeq", 7, X(7), true),
        ("jeq", 0x1_0000_0007, X(7), false),
        ("jne", 5, K(5), false),
        ("jne", 5, X(6), true),
        ("jgt", MAX, K(1), true),
        ("jgt", 1, K(1), false),
        ("jgt", 1, K(-1), false),
        ("jgt", 2, X(1), true),
        ("jge", 1, K(1), true),
        ("jge", 0, K(1), false),
        ("jge", MAX, X(MAX), true),
        ("jlt", 1, K(-1), true),
        ("jlt", 1, X(1), false),
        ("jlt", 0, X(1), true),
        ("jle", 1, K(1), true),
        ("jle", 2, K(1), false),
        ("jle", MAX, X(1), false),
        ("jset", 0b1010, K(0b0100), false),
        ("jset", 0b1010, K(0b0010), true),
        ("jset", 0x1_0000_0000, X(0x1_0000_0000), true),
        ("jset", 0x1_0000_0000, K(-1), true),
        ("jsgt", MAX, K(1), false),
        ("jsgt", 1, K(-1), true),
        ("jsgt", 2, X(1), true),
        ("jsgt", MIN64, X(0x7fff_ffff_ffff_ffff), false),
        ("jsge", neg(-1), K(-1), true),
        ("jsge", neg(-2), K(-1), false),
        ("jsge", 0, X(neg(-1)), true),
        ("jslt", neg(-1), K(1), true),
        ("jslt", 1, K(-1), false),
        ("jslt", MIN64, X(0), true),
        ("jsle", neg(-1), K(-1), true),
        ("jsle", 0, K(-1), false),
        ("jsle", neg(-5), X(neg(-4)), true),
    ]);
}

#[test]
fn jmp32_conditions_compare_low_halves() {
    check_jumps(&[
        ("jeq32", 0x1_ffff_ffff, K(-1), true),
        ("jeq", 0x1_ffff_ffff, K(-1), false),
        ("jeq32", 0xabcd_0000_0007, X(0x7), true),
        ("jeq32", 6, K(7), false),
        ("jne32", 0x1_0000_0007, K(7), false),
        ("jne32", 5, X(0x5_0000_0006), true),
        ("jgt32", 0x1_0000_0000, K(1), false),
        ("jgt", 0x1_0000_0000, K(1), true),
        ("jgt32", 0xffff_ffff, X(1), true),
        ("jge32", 0x1_0000_0001, K(1), true),
        ("jge32", 0x1_0000_0000, X(1), false),
        ("jlt32", 0x1_0000_0000, K(1), true),
        ("jlt32", 0xffff_ffff, X(1), false),
        ("jle32", 0x5_0000_0001, K(1), true),
        ("jle32", 2, X(0x1_0000_0001), false),
        ("jset32", 0x1_0000_0000, K(-1), false),
        ("jset32", 0x1_0000_0001, X(1), true),
        ("jsgt32", 0xffff_ffff, K(1), false),
        ("jsgt", 0xffff_ffff, K(1), true),
        ("jsgt32", 1, X(0xffff_ffff), true),
        ("jsge32", 0xffff_ffff, K(-1), true),
        ("jsge32", 0x8000_0000, X(0), false),
        ("jslt32", 0x8000_0000, K(0), true),
        ("jslt", 0x8000_0000, K(0), false),
        ("jslt32", 0x7fff_ffff, X(0x8000_0000), false),
        ("jsle32", 0xffff_fffe, K(-2), true),
        ("jsle32", 0, X(0xffff_ffff), false),
    ]);
}

#[test]
fn unconditional_jumps() {
    assert_eq!(r0("mov64 r0, 1\nja skip\nmov64 r0, 2\nskip:\nexit"), 1);
    assert_eq!(r0("mov64 r0, 1\nja +0\nadd64 r0, 1\nexit"), 2);
    assert_eq!(
        r0("mov64 r0, 1\nja32 +2\nmov64 r0, 2\nmov64 r0, 3\nexit"),
        1
    );
    assert_eq!(r0("mov64 r0, 1\nja32 done\nmov64 r0, 2\ndone:\nexit"), 1);
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

#[test]
fn stores_and_loads_of_every_width_on_the_stack() {
    let value = "lddw r1, 0x1122334455667788\n";
    let cases: &[(&str, u64)] = &[
        (
            "stxdw [r10-8], r1\nldxdw r0, [r10-8]",
            0x1122_3344_5566_7788,
        ),
        ("stxw [r10-8], r1\nldxw r0, [r10-8]", 0x5566_7788),
        ("stxh [r10-8], r1\nldxh r0, [r10-8]", 0x7788),
        ("stxb [r10-8], r1\nldxb r0, [r10-8]", 0x88),
        // Little-endian layout and partial overwrites.
        ("stxdw [r10-8], r1\nldxb r0, [r10-8]", 0x88),
        ("stxdw [r10-8], r1\nldxb r0, [r10-1]", 0x11),
        ("stxdw [r10-8], r1\nldxh r0, [r10-4]", 0x3344),
        ("stxdw [r10-8], r1\nldxw r0, [r10-4]", 0x1122_3344),
        (
            "stxdw [r10-8], r1\nstxb [r10-8], r0\nldxdw r0, [r10-8]",
            0x1122_3344_5566_7700,
        ),
        (
            "stxdw [r10-8], r1\nstxh [r10-6], r0\nldxdw r0, [r10-8]",
            0x1122_3344_0000_7788,
        ),
        (
            "stxdw [r10-8], r1\nstxw [r10-8], r0\nldxdw r0, [r10-8]",
            0x1122_3344_0000_0000,
        ),
        // Immediate stores: the immediate truncated, or sign-extended for stdw.
        ("stdw [r10-8], -1\nldxdw r0, [r10-8]", MAX),
        ("stdw [r10-8], 0x7fffffff\nldxdw r0, [r10-8]", 0x7fff_ffff),
        (
            "stxdw [r10-8], r1\nstw [r10-8], -1\nldxdw r0, [r10-8]",
            0x1122_3344_ffff_ffff,
        ),
        (
            "stxdw [r10-8], r1\nsth [r10-8], 0x1234\nldxdw r0, [r10-8]",
            0x1122_3344_5566_1234,
        ),
        (
            "stxdw [r10-8], r1\nstb [r10-1], 0x1ff\nldxdw r0, [r10-8]",
            0xff22_3344_5566_7788,
        ),
        // Sign-extending loads.
        (
            "stb [r10-1], 0x80\nldxsb r0, [r10-1]",
            0xffff_ffff_ffff_ff80,
        ),
        ("stb [r10-1], 0x7f\nldxsb r0, [r10-1]", 0x7f),
        (
            "sth [r10-2], 0x8001\nldxsh r0, [r10-2]",
            0xffff_ffff_ffff_8001,
        ),
        (
            "stw [r10-4], 0x80000000\nldxsw r0, [r10-4]",
            0xffff_ffff_8000_0000,
        ),
        ("stw [r10-4], 0x7fffffff\nldxsw r0, [r10-4]", 0x7fff_ffff),
        // Through a register other than r10, and at both ends of the stack.
        (
            "mov64 r2, r10\nadd64 r2, -16\nstxdw [r2+8], r1\nldxdw r0, [r10-8]",
            0x1122_3344_5566_7788,
        ),
        (
            "stxdw [r10-512], r1\nldxdw r0, [r10-512]",
            0x1122_3344_5566_7788,
        ),
        ("stxb [r10-1], r1\nldxb r0, [r10-1]", 0x88),
        // Unaligned accesses on the stack are allowed.
        ("stxdw [r10-13], r1\nldxw r0, [r10-11]", 0x3344_5566),
    ];
    for (body, expected) in cases {
        let text = format!("{value}mov64 r0, 0\n{body}\nexit");
        assert_eq!(r0(&text), *expected, "{body}");
    }
}

#[test]
fn stack_starts_zeroed_on_every_run() {
    let text = "ldxdw r0, [r10-8]\nldxdw r2, [r10-512]\nor64 r0, r2\n\
                stdw [r10-8], -1\nstdw [r10-512], -1\nexit";
    let program = program(text);
    let mut helpers = TestHelpers::default();
    for _ in 0..3 {
        assert_eq!(run(&program, &context(), &mut helpers), Ok(0));
    }
}

#[test]
fn context_loads_of_every_width() {
    let cases: &[(&str, u64)] = &[
        ("ldxdw r0, [r1+0]", 0x8877_6655_4433_2211),
        ("ldxw r0, [r1+0]", 0x4433_2211),
        ("ldxw r0, [r1+4]", 0x8877_6655),
        ("ldxh r0, [r1+6]", 0x8877),
        ("ldxb r0, [r1+7]", 0x88),
        ("ldxsb r0, [r1+7]", 0xffff_ffff_ffff_ff88),
        ("ldxsh r0, [r1+6]", 0xffff_ffff_ffff_8877),
        ("ldxsw r0, [r1+4]", 0xffff_ffff_8877_6655),
        ("ldxdw r0, [r1+8]", 0xffff_ffff_ffff_fffe),
        ("ldxsw r0, [r1+16]", 0xffff_ffff_8000_0080),
        ("ldxsb r0, [r1+16]", 0xffff_ffff_ffff_ff80),
        ("ldxdw r0, [r1+40]", 42),
        ("ldxdw r0, [r1+248]", 0xdead_beef_cafe_f00d),
        ("ldxb r0, [r1+255]", 0xde),
        ("mov64 r2, r1\nadd64 r2, 248\nldxw r0, [r2+4]", 0xdead_beef),
    ];
    for (body, expected) in cases {
        assert_eq!(r0(&format!("{body}\nexit")), *expected, "{body}");
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

#[test]
fn read_kernel_copies_and_faults_zero_the_buffer() {
    let mut helpers = TestHelpers::default();
    // The u64 stored after "hello, kernel!\0".
    let text = format!(
        "mov64 r1, r10\nadd64 r1, -8\nmov64 r2, 8\nlddw r3, {:#x}\ncall read_kernel\n\
         ldxdw r6, [r10-8]\nstxdw [r10-16], r0\nldxdw r0, [r10-16]\nadd64 r0, r6\nexit",
        KERNEL_BASE + 15
    );
    assert_eq!(run_with(&text, &mut helpers), Ok(0x1122_3344_5566_7788));

    // A read straddling the end of kernel memory: the helper copies a prefix, then
    // faults; the program sees EFAULT and a zeroed buffer, the executor a fault.
    let end = KERNEL_BASE + helpers.kernel.len() as u64;
    let text = format!(
        "stdw [r10-16], -1\nstdw [r10-8], -1\nmov64 r1, r10\nadd64 r1, -16\nmov64 r2, 16\n\
         lddw r3, {:#x}\ncall read_kernel\nmov64 r6, r0\n\
         ldxdw r7, [r10-16]\nldxdw r8, [r10-8]\nor64 r7, r8\njne r7, 0, bad\nmov64 r0, r6\nexit\n\
         bad:\nmov64 r0, 1\nexit",
        end - 4
    );
    assert_eq!(run_with(&text, &mut helpers), Ok(EFAULT));
    assert_eq!(helpers.faults, vec![end]);
}

#[test]
fn read_user_defaults_to_a_fault() {
    let text = "stdw [r10-8], -1\nmov64 r1, r10\nadd64 r1, -8\nmov64 r2, 8\nmov64 r3, 0x1000\n\
                call read_user\nldxdw r6, [r10-8]\njne r6, 0, bad\nexit\nbad:\nmov64 r0, 1\nexit";
    assert_eq!(r0(text), EFAULT);
    let text =
        "mov64 r1, r10\nadd64 r1, -8\nmov64 r2, 8\nmov64 r3, 0x1000\ncall read_user_str\nexit";
    assert_eq!(r0(text), EFAULT);
}

/// Reads the kernel string at `offset` into an 8-byte buffer pre-filled with 0xff;
/// returns `r0` and the buffer.
fn read_str(helpers: &mut TestHelpers, src: u64) -> (u64, [u8; 8]) {
    let text = format!(
        "stdw [r10-8], -1\nmov64 r1, r10\nadd64 r1, -8\nmov64 r2, 8\nlddw r3, {src:#x}\n\
         call read_kernel_str\nstxdw [r10-16], r0\nldxdw r0, [r10-8]\nexit"
    );
    let buffer = run_with(&text, helpers).unwrap_or_else(|trap| panic!("{trap}"));
    let text = format!(
        "stdw [r10-8], -1\nmov64 r1, r10\nadd64 r1, -8\nmov64 r2, 8\nlddw r3, {src:#x}\n\
         call read_kernel_str\nexit"
    );
    let result = run_with(&text, helpers).unwrap_or_else(|trap| panic!("{trap}"));
    (result, buffer.to_le_bytes())
}

#[test]
fn read_kernel_str_terminates_and_counts_the_nul() {
    let mut helpers = TestHelpers::default();
    // "hello, kernel!" is longer than 7: truncated to 7 bytes and a NUL.
    assert_eq!(read_str(&mut helpers, KERNEL_BASE), (8, *b"hello, \0"));
    // "kernel!": exactly 7 bytes and its NUL.
    assert_eq!(read_str(&mut helpers, KERNEL_BASE + 7), (8, *b"kernel!\0"));
    // "!": 2 bytes written; the rest of the buffer is left alone.
    assert_eq!(
        read_str(&mut helpers, KERNEL_BASE + 13),
        (2, [b'!', 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
    );
    // The empty string: just the NUL.
    assert_eq!(
        read_str(&mut helpers, KERNEL_BASE + 14),
        (1, [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
    );
    // A fault part-way: EFAULT and a zeroed buffer.
    let end = KERNEL_BASE + helpers.kernel.len() as u64;
    assert_eq!(read_str(&mut helpers, end - 3), (EFAULT, [0; 8]));
    assert_eq!(read_str(&mut helpers, 0x10), (EFAULT, [0; 8]));
}

#[test]
fn read_kernel_str_distrusts_the_executors_count() {
    // An executor claiming more than the buffer: clamped, and the NUL forced in.
    let mut helpers = TestHelpers {
        lie_about_length: Some(100),
        ..TestHelpers::default()
    };
    assert_eq!(
        read_str(&mut helpers, KERNEL_BASE + 13),
        (8, [b'!', 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0])
    );
    // Claiming nothing: at least the NUL.
    let mut helpers = TestHelpers {
        lie_about_length: Some(0),
        ..TestHelpers::default()
    };
    assert_eq!(read_str(&mut helpers, KERNEL_BASE), (1, *b"\0ello, \0"));
}

#[test]
fn task_and_time_helpers() {
    assert_eq!(r0("call cpu\nexit"), 3);
    assert_eq!(r0("call task_id\nexit"), 1234);
    assert_eq!(r0("call time_ns\nexit"), 1_000_000_007);
    // task_name NUL-pads its buffer and returns the name's length.
    let text = "stdw [r10-16], -1\nstdw [r10-8], -1\nmov64 r1, r10\nadd64 r1, -16\nmov64 r2, 16\n\
                call task_name\nmov64 r6, r0\nldxdw r7, [r10-16]\nldxdw r8, [r10-8]\n\
                jne r8, 0, bad\nlsh64 r6, 32\nor64 r7, r6\nmov64 r0, r7\nexit\n\
                bad:\nmov64 r0, 1\nexit";
    assert_eq!(r0(text), (4 << 32) | u32::from_le_bytes(*b"init") as u64);
}

#[test]
fn stack_trace_writes_addresses() {
    let text = "mov64 r1, r10\nadd64 r1, -32\nmov64 r2, 32\ncall stack_trace\nmov64 r6, r0\n\
                ldxdw r7, [r10-16]\nldxdw r8, [r10-8]\nadd64 r7, r8\nadd64 r7, r6\n\
                mov64 r0, r7\nexit";
    assert_eq!(r0(text), 0xffff_ffff_8100_0030 + 3);
    // A buffer for two addresses gets two.
    let text = "mov64 r1, r10\nadd64 r1, -20\nmov64 r2, 20\ncall stack_trace\nexit";
    assert_eq!(r0(text), 2);
}

/// Stores `key` at r10-8 and `value` at r10-24..-8, then calls `helper` on map `map`.
fn map_call(map: u16, helper: &str, key: u64, value: u64) -> String {
    format!(
        "lddw r6, {key:#x}\nstxdw [r10-8], r6\nlddw r6, {value:#x}\nstxdw [r10-24], r6\n\
         stxdw [r10-16], r6\nmov64 r1, {map}\nmov64 r2, r10\nadd64 r2, -8\n\
         mov64 r3, r10\nadd64 r3, -24\ncall {helper}\n"
    )
}

#[test]
fn map_update_lookup_delete() {
    let mut helpers = TestHelpers::default();
    let update = format!("{}exit", map_call(HASH, "map_update", 7, 0x1111));
    assert_eq!(run_with(&update, &mut helpers), Ok(0));
    assert_eq!(
        helpers.maps[&(HASH, 7u64.to_le_bytes().to_vec())],
        [0x11, 0x11, 0, 0, 0, 0, 0, 0, 0x11, 0x11, 0, 0, 0, 0, 0, 0]
    );

    // Lookup of a present key overwrites the value buffer with the stored value.
    let lookup = format!(
        "{}mov64 r6, r0\nldxdw r0, [r10-24]\nadd64 r0, r6\nexit",
        map_call(HASH, "map_lookup", 7, 0x9999)
    );
    assert_eq!(run_with(&lookup, &mut helpers), Ok(0x1111));
    // Lookup of an absent key: ENOENT, buffer untouched.
    let lookup = format!(
        "{}jne r0, {}, bad\nldxdw r0, [r10-24]\nexit\nbad:\nmov64 r0, 1\nexit",
        map_call(HASH, "map_lookup", 8, 0x9999),
        helper_error::ENOENT
    );
    assert_eq!(run_with(&lookup, &mut helpers), Ok(0x9999));

    let delete = format!("{}exit", map_call(HASH, "map_delete", 7, 0));
    assert_eq!(run_with(&delete, &mut helpers), Ok(0));
    assert_eq!(run_with(&delete, &mut helpers), Ok(ENOENT));
    assert!(helpers.maps.is_empty());
}

#[test]
fn map_update_when_full_is_enospc() {
    let mut helpers = TestHelpers::default();
    for key in [1, 2] {
        let update = format!("{}exit", map_call(HASH, "map_update", key, key));
        assert_eq!(run_with(&update, &mut helpers), Ok(0));
    }
    let update = format!("{}exit", map_call(HASH, "map_update", 3, 3));
    assert_eq!(run_with(&update, &mut helpers), Ok(ENOSPC));
    // Replacing an existing key still works.
    let update = format!("{}exit", map_call(HASH, "map_update", 2, 5));
    assert_eq!(run_with(&update, &mut helpers), Ok(0));
}

#[test]
fn map_lookup_into_its_own_key() {
    // Key and value overlap: a 4-byte map whose value is looked up over its key.
    let mut helpers = TestHelpers::default();
    helpers.maps.insert(
        (SMALL_HASH, 5u32.to_le_bytes().to_vec()),
        77u32.to_le_bytes().to_vec(),
    );
    let text = format!(
        "stw [r10-4], 5\nmov64 r1, {SMALL_HASH}\nmov64 r2, r10\nadd64 r2, -4\nmov64 r3, r10\n\
         add64 r3, -4\ncall map_lookup\nldxw r6, [r10-4]\nlsh64 r0, 32\nor64 r0, r6\nexit"
    );
    assert_eq!(run_with(&text, &mut helpers), Ok(77));
    // Partial overlap, value below the key.
    let text = format!(
        "stw [r10-4], 5\nmov64 r1, {SMALL_HASH}\nmov64 r2, r10\nadd64 r2, -4\nmov64 r3, r10\n\
         add64 r3, -6\ncall map_lookup\nldxw r0, [r10-6]\nexit"
    );
    assert_eq!(run_with(&text, &mut helpers), Ok(77));
    // Value directly after the key.
    let text = format!(
        "stw [r10-8], 5\nmov64 r1, {SMALL_HASH}\nmov64 r2, r10\nadd64 r2, -8\nmov64 r3, r10\n\
         add64 r3, -4\ncall map_lookup\nldxw r0, [r10-4]\nexit"
    );
    assert_eq!(run_with(&text, &mut helpers), Ok(77));
}

#[test]
fn aggregate_folds_values() {
    let mut helpers = TestHelpers::default();
    let aggregate = |key: u32, value: i32| {
        format!(
            "stw [r10-4], {key}\nmov64 r1, {SUM}\nmov64 r2, r10\nadd64 r2, -4\nmov64 r3, {value}\n\
             call aggregate\nexit"
        )
    };
    assert_eq!(run_with(&aggregate(1, 10), &mut helpers), Ok(0));
    assert_eq!(run_with(&aggregate(1, -3), &mut helpers), Ok(0));
    assert_eq!(run_with(&aggregate(2, 5), &mut helpers), Ok(0));
    assert_eq!(helpers.sums[&(SUM, 1u32.to_le_bytes().to_vec())], 7);
    assert_eq!(helpers.sums[&(SUM, 2u32.to_le_bytes().to_vec())], 5);
    assert_eq!(run_with(&aggregate(3, 1), &mut helpers), Ok(ENOSPC));
}

#[test]
fn map_kinds_are_not_mixed() {
    // Hash operations on an aggregation and aggregation on a hash map: EINVAL.
    for helper in ["map_lookup", "map_update", "map_delete"] {
        assert_eq!(
            r0(&format!("{}exit", map_call(SUM, helper, 1, 1))),
            EINVAL,
            "{helper}"
        );
    }
    let text = format!("{}exit", map_call(HASH, "aggregate", 1, 1));
    assert_eq!(r0(&text), EINVAL);
}

#[test]
fn emit_appends_records_until_full() {
    let mut helpers = TestHelpers {
        event_capacity: 2,
        ..TestHelpers::default()
    };
    let text = "lddw r6, 0x0807060504030201\nstxdw [r10-16], r6\nstw [r10-8], 9\n\
                mov64 r1, r10\nadd64 r1, -16\nmov64 r2, 12\ncall emit\nexit";
    assert_eq!(run_with(text, &mut helpers), Ok(0));
    assert_eq!(run_with(text, &mut helpers), Ok(0));
    assert_eq!(run_with(text, &mut helpers), Ok(ENOSPC));
    assert_eq!(
        helpers.events,
        vec![vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0]; 2]
    );
}

#[test]
fn entry_save() {
    let mut helpers = TestHelpers::default();
    let text = "mov64 r1, 3\nlddw r2, 0x123456789\ncall entry_save\nexit";
    assert_eq!(run_with(text, &mut helpers), Ok(0));
    assert_eq!(helpers.entry[3], Some(0x1_2345_6789));
    let mut helpers = TestHelpers {
        entry_program: false,
        ..TestHelpers::default()
    };
    assert_eq!(run_with(text, &mut helpers), Ok(EINVAL));
    let mut helpers = TestHelpers {
        entry: [Some(0); ENTRY_SLOTS],
        ..TestHelpers::default()
    };
    assert_eq!(run_with(text, &mut helpers), Ok(ENOSPC));
    let trap = trap_of(&format!(
        "mov64 r1, {ENTRY_SLOTS}\nmov64 r2, 0\ncall entry_save\nexit"
    ));
    assert_eq!(
        trap.kind,
        TrapKind::BadHelperArgument {
            helper: Helper::EntrySave,
            register: 1,
            value: ENTRY_SLOTS as u64
        }
    );
}

#[test]
fn helpers_work_through_a_trait_object() {
    let mut helpers = TestHelpers::default();
    let dynamic: &mut dyn Helpers = &mut helpers;
    assert_eq!(run(&program("call cpu\nexit"), &context(), dynamic), Ok(3));
}

// ---------------------------------------------------------------------------
// Traps
// ---------------------------------------------------------------------------

#[track_caller]
fn assert_trap(text: &str, pc: u32, kind: TrapKind) {
    assert_eq!(trap_of(text), Trap { pc, kind }, "{text}");
}

#[test]
fn stack_accesses_out_of_bounds_trap() {
    let out = |text: &str, pc: u32, size: u8| {
        let trap = trap_of(text);
        assert_eq!(trap.pc, pc, "{text}");
        assert!(
            matches!(trap.kind, TrapKind::OutOfBounds { size: s, .. } if s == size),
            "{text}: {trap}"
        );
    };
    out("ldxdw r0, [r10-520]\nexit", 0, 8);
    out("ldxb r0, [r10-513]\nexit", 0, 1);
    out("ldxdw r0, [r10+0]\nexit", 0, 8);
    out("ldxw r0, [r10-2]\nexit", 0, 4);
    out("mov64 r0, 0\nstxdw [r10-4], r0\nexit", 1, 8);
    out("stb [r10+0], 1\nexit", 0, 1);
    out("sth [r10-513], 1\nexit", 0, 2);
    out("lddw r2, 0x1000\nldxdw r0, [r2+0]\nexit", 2, 8);
    out("mov64 r2, 0\nstxdw [r2+0], r2\nexit", 1, 8);
    // Context bounds.
    out("ldxdw r0, [r1+256]\nexit", 0, 8);
    out("ldxw r0, [r1+253]\nexit", 0, 4);
    out("ldxb r0, [r1-1]\nexit", 0, 1);
    // The address of the fault is reported.
    let trap = trap_of("lddw r2, 0xdeadbeef\nldxh r0, [r2+1]\nexit");
    assert_eq!(
        trap.kind,
        TrapKind::OutOfBounds {
            address: 0xdead_bef0,
            size: 2
        }
    );
}

#[test]
fn stores_to_the_context_trap() {
    assert_trap(
        "stdw [r1+0], 1\nexit",
        0,
        TrapKind::ContextStore { offset: 0 },
    );
    assert_trap(
        "stxb [r1+17], r1\nexit",
        0,
        TrapKind::ContextStore { offset: 17 },
    );
    assert_trap(
        "mov64 r0, 0\nstxw [r1+252], r0\nexit",
        1,
        TrapKind::ContextStore { offset: 252 },
    );
}

#[test]
fn backward_jumps_trap() {
    assert_trap(
        "mov64 r0, 0\nja -2\nexit",
        1,
        TrapKind::BackwardJump { offset: -2 },
    );
    assert_trap(
        "loop:\nmov64 r0, 0\njeq r0, 0, loop\nexit",
        1,
        TrapKind::BackwardJump { offset: -2 },
    );
    assert_trap("ja32 -1\nexit", 0, TrapKind::BackwardJump { offset: -1 });
    assert_trap(
        "mov64 r0, 5\njslt32 r0, 6, -1\nexit",
        1,
        TrapKind::BackwardJump { offset: -1 },
    );
    // A backward jump that is not taken does nothing.
    assert_eq!(r0("mov64 r0, 5\njeq r0, 6, -2\nexit"), 5);
}

#[test]
fn leaving_the_program_traps() {
    assert_eq!(
        run(&[], &context(), &mut TestHelpers::default()),
        Err(Trap {
            pc: 0,
            kind: TrapKind::OutOfProgram
        })
    );
    assert_trap("mov64 r0, 1", 1, TrapKind::OutOfProgram);
    assert_trap("mov64 r0, 1\nja +5\nexit", 7, TrapKind::OutOfProgram);
    assert_trap(
        "mov64 r0, 1\njeq r0, 1, +1\nexit",
        3,
        TrapKind::OutOfProgram,
    );
    assert_trap(
        "mov64 r0, 1\nja32 +0x7fffffff\nexit",
        0x8000_0001,
        TrapKind::OutOfProgram,
    );
    let lddw = raw(op::LDDW, 0, 0, 0, 1);
    assert_trap(&format!("mov64 r0, 1\n{lddw}"), 1, TrapKind::IncompleteLddw);
}

#[test]
fn invalid_registers_and_frame_pointer_writes_trap() {
    assert_trap(
        "mov64 r11, 1\nexit",
        0,
        TrapKind::InvalidRegister { register: 11 },
    );
    assert_trap(
        "mov64 r0, r15\nexit",
        0,
        TrapKind::InvalidRegister { register: 15 },
    );
    assert_trap(
        "ldxdw r0, [r12+0]\nexit",
        0,
        TrapKind::InvalidRegister { register: 12 },
    );
    assert_trap(
        "stxdw [r10-8], r11\nexit",
        0,
        TrapKind::InvalidRegister { register: 11 },
    );
    assert_trap("mov64 r10, 0\nexit", 0, TrapKind::FramePointerWrite);
    assert_trap("add64 r10, -8\nexit", 0, TrapKind::FramePointerWrite);
    assert_trap("mov32 r10, 0\nexit", 0, TrapKind::FramePointerWrite);
    assert_trap("ldxdw r10, [r1+0]\nexit", 0, TrapKind::FramePointerWrite);
    assert_trap("lddw r10, 1\nexit", 0, TrapKind::FramePointerWrite);
    assert_trap("le16 r10\nexit", 0, TrapKind::FramePointerWrite);
    // Reading r10 and storing through it is fine.
    assert_eq!(r0("mov64 r0, r10\nsub64 r0, r10\nexit"), 0);
}

#[test]
fn invalid_instructions_trap() {
    let cases: Vec<(String, u8)> = vec![
        // Unassigned opcodes and modes the interpreter does not execute.
        (raw(0x00, 0, 0, 0, 0), 0x00),
        (raw(0xff, 0, 0, 0, 0), 0xff),
        (raw(op::CLASS_LD | op::SIZE_W | 0x20, 0, 0, 0, 0), 0x20), // legacy ld abs
        (raw(op::CLASS_STX | op::SIZE_DW | 0xc0, 10, 1, -8, 0), 0xdb), // atomic
        (
            raw(op::CLASS_LDX | op::MODE_MEMSX | op::SIZE_DW, 0, 10, -8, 0),
            0x99,
        ),
        (raw(op::CLASS_ALU64 | op::SRC_X | op::NEG, 0, 0, 0, 0), 0x8f),
        (
            raw(op::CLASS_ALU64 | op::TO_BE | op::END, 0, 0, 0, 16),
            0xdf,
        ),
        (raw(op::CLASS_JMP | op::SRC_X | op::JA, 0, 0, 0, 0), 0x0d),
        (raw(op::CLASS_JMP32 | op::CALL, 0, 0, 0, 5), 0x86),
        (raw(op::CLASS_JMP32 | op::EXIT, 0, 0, 0, 0), 0x96),
        // Known opcodes with undefined modifiers.
        (raw(op::CLASS_ALU64 | op::DIV, 0, 0, 2, 1), 0x37),
        (raw(op::CLASS_ALU | op::SRC_X | op::MOD, 0, 1, -1, 0), 0x9c),
        (raw(op::CLASS_ALU64 | op::SRC_X | op::MOV, 0, 1, 7, 0), 0xbf),
        (raw(op::CLASS_ALU | op::SRC_X | op::MOV, 0, 1, 32, 0), 0xbc),
        (raw(op::CLASS_ALU | op::END, 0, 0, 0, 8), 0xd4),
        (raw(op::CLASS_ALU | op::TO_BE | op::END, 0, 0, 0, 0), 0xdc),
        (raw(op::CLASS_ALU64 | op::END, 0, 0, 0, 128), 0xd7),
        (raw(op::CLASS_JMP | op::CALL, 0, 1, 0, 1), 0x85), // program-local call
        (raw(op::LDDW, 0, 1, 0, 1) + "\n" + &raw(0, 0, 0, 0, 0), 0x18), // map pseudo-load
        (
            raw(op::LDDW, 0, 0, 0, 1) + "\n" + &raw(0x07, 0, 0, 0, 0),
            0x18,
        ), // bad second slot
    ];
    for (text, code) in cases {
        assert_trap(
            &format!("{text}\nexit"),
            0,
            TrapKind::InvalidInstruction { code },
        );
    }
    // Jumping into the second slot of an lddw executes it as opcode 0.
    assert_trap(
        "ja +1\nlddw r0, 5\nexit",
        2,
        TrapKind::InvalidInstruction { code: 0 },
    );
}

#[test]
fn helper_calls_with_bad_arguments_trap() {
    let bad = |helper, register, value| TrapKind::BadHelperArgument {
        helper,
        register,
        value,
    };
    assert_trap("call 0\nexit", 0, TrapKind::UnknownHelper { id: 0 });
    assert_trap("call 99\nexit", 0, TrapKind::UnknownHelper { id: 99 });
    assert_trap(
        ".raw 0x85000000ffffffff\nexit",
        0,
        TrapKind::UnknownHelper { id: -1 },
    );
    // emit: size 0, size beyond the stack, buffer past r10, buffer in the context.
    assert_trap(
        "mov64 r1, r10\nadd64 r1, -8\nmov64 r2, 0\ncall emit\nexit",
        3,
        bad(Helper::Emit, 2, 0),
    );
    assert_trap(
        "mov64 r1, r10\nadd64 r1, -512\nmov64 r2, 513\ncall emit\nexit",
        3,
        bad(Helper::Emit, 2, 513),
    );
    let trap = trap_of("mov64 r1, r10\nadd64 r1, -4\nmov64 r2, 8\ncall emit\nexit");
    assert!(matches!(
        trap.kind,
        TrapKind::BadHelperArgument {
            helper: Helper::Emit,
            register: 1,
            ..
        }
    ));
    let trap = trap_of("mov64 r2, 8\ncall emit\nexit");
    assert!(matches!(
        trap.kind,
        TrapKind::BadHelperArgument {
            helper: Helper::Emit,
            register: 1,
            ..
        }
    ));
    let trap = trap_of("mov64 r1, 0x1000\nmov64 r2, 8\nmov64 r3, 0\ncall read_kernel\nexit");
    assert!(matches!(
        trap.kind,
        TrapKind::BadHelperArgument {
            helper: Helper::ReadKernel,
            register: 1,
            ..
        }
    ));
    // Whole-stack buffers are fine.
    assert_eq!(
        r0("mov64 r1, r10\nadd64 r1, -512\nmov64 r2, 512\ncall emit\nexit"),
        0
    );
    // Map helpers: unknown maps, keys and values outside the stack.
    assert_trap(
        "mov64 r1, 9\nmov64 r2, r10\nadd64 r2, -8\ncall map_delete\nexit",
        3,
        TrapKind::UnknownMap { map: 9 },
    );
    assert_trap(
        "lddw r1, 0x10001\nmov64 r2, r10\nadd64 r2, -8\ncall map_delete\nexit",
        4,
        TrapKind::UnknownMap { map: 0x10001 },
    );
    let trap = trap_of(&format!(
        "mov64 r1, {HASH}\nmov64 r2, r10\nadd64 r2, -4\ncall map_delete\nexit"
    ));
    assert!(matches!(
        trap.kind,
        TrapKind::BadHelperArgument {
            helper: Helper::MapDelete,
            register: 2,
            ..
        }
    ));
    // The key may not live in the context either.
    let trap = trap_of(&format!(
        "mov64 r2, r1\nmov64 r1, {HASH}\nmov64 r3, r10\nadd64 r3, -16\ncall map_update\nexit"
    ));
    assert!(matches!(
        trap.kind,
        TrapKind::BadHelperArgument {
            helper: Helper::MapUpdate,
            register: 2,
            ..
        }
    ));
    // The value must hold the map's whole value size (16 bytes for map 1).
    let trap = trap_of(&format!(
        "mov64 r1, {HASH}\nmov64 r2, r10\nadd64 r2, -16\nmov64 r3, r10\nadd64 r3, -8\n\
         call map_lookup\nexit"
    ));
    assert!(matches!(
        trap.kind,
        TrapKind::BadHelperArgument {
            helper: Helper::MapLookup,
            register: 3,
            ..
        }
    ));
}

#[test]
fn traps_display_what_and_where() {
    let trap = trap_of("mov64 r0, 0\nstxw [r1+8], r0\nexit");
    assert_eq!(
        trap.to_string(),
        "trap at slot 1: store into the read-only context at offset 8"
    );
    let trap = trap_of("call 99\nexit");
    assert_eq!(trap.to_string(), "trap at slot 0: unknown helper 99");
    let trap = trap_of("mov64 r2, 0\ncall emit\nexit");
    assert_eq!(
        trap.to_string(),
        "trap at slot 1: emit: argument r2 = 0x0 is out of range"
    );
    let trap = trap_of("ja -1");
    assert_eq!(
        trap.to_string(),
        "trap at slot 0: backward jump by -1 slots"
    );
}

// ---------------------------------------------------------------------------
// Tracing and robustness
// ---------------------------------------------------------------------------

#[test]
fn the_tracer_sees_every_executed_instruction() {
    struct Recorder(Vec<(usize, u64)>);
    impl kernel_stub::interpreter::Tracer for Recorder {
        fn step(&mut self, pc: usize, _insn: Insn, registers: &[u64]) {
            self.0.push((pc, registers[0]));
        }
    }
    let program = program("mov64 r0, 1\nja +1\nmov64 r0, 2\nlddw r0, 7\nadd64 r0, 1\nexit");
    let mut recorder = Recorder(Vec::new());
    let result = run_traced(
        &program,
        &context(),
        &mut TestHelpers::default(),
        &mut recorder,
    );
    assert_eq!(result, Ok(8));
    assert_eq!(recorder.0, vec![(0, 0), (1, 1), (3, 1), (5, 7), (6, 8)]);

    let mut counter = InstructionCounter::default();
    run_traced(
        &program,
        &context(),
        &mut TestHelpers::default(),
        &mut counter,
    )
    .unwrap();
    assert_eq!(counter.count, 5);
}

mod random_programs {
    use proptest::prelude::*;

    use super::*;

    /// Opcodes the interpreter executes, so random programs get past the first slot.
    fn known_opcodes() -> Vec<u8> {
        let mut codes = Vec::new();
        for class in [op::CLASS_ALU, op::CLASS_ALU64] {
            for operation in 0..=0xd {
                for source in [op::SRC_K, op::SRC_X] {
                    codes.push(class | source | (operation << 4));
                }
            }
        }
        for class in [op::CLASS_JMP, op::CLASS_JMP32] {
            for operation in 0..=0xd {
                for source in [op::SRC_K, op::SRC_X] {
                    codes.push(class | source | (operation << 4));
                }
            }
        }
        for size in [op::SIZE_W, op::SIZE_H, op::SIZE_B, op::SIZE_DW] {
            codes.push(op::CLASS_LDX | op::MODE_MEM | size);
            codes.push(op::CLASS_LDX | op::MODE_MEMSX | size);
            codes.push(op::CLASS_ST | op::MODE_MEM | size);
            codes.push(op::CLASS_STX | op::MODE_MEM | size);
        }
        codes.push(op::LDDW);
        codes
    }

    fn insn() -> impl Strategy<Value = Insn> {
        let code = prop_oneof![9 => proptest::sample::select(known_opcodes()), 1 => any::<u8>()];
        let register = prop_oneof![8 => 0u8..=10, 1 => 0u8..=15];
        let off = prop_oneof![4 => -4i16..16, 1 => -600i16..300, 1 => any::<i16>()];
        let imm = prop_oneof![
            3 => -8i32..64,
            1 => 1i32..=16,
            1 => Just(16),
            1 => Just(32),
            1 => Just(64),
            1 => any::<i32>(),
        ];
        (code, register.clone(), register, off, imm)
            .prop_map(|(code, dst, src, off, imm)| Insn::new(code, dst, src, off, imm))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn never_panic_and_always_stop(program in proptest::collection::vec(insn(), 0..48)) {
            let mut helpers = TestHelpers::default();
            let mut counter = InstructionCounter::default();
            let _ = run_traced(&program, &context(), &mut helpers, &mut counter);
            prop_assert!(counter.count <= program.len() as u64);
        }

        #[test]
        fn straight_line_arithmetic_never_traps(
            ops in proptest::collection::vec(
                (0u8..=0xc, any::<bool>(), 0u8..10, 0u8..11, any::<i32>()),
                0..32,
            )
        ) {
            // ALU instructions on r0–r9 with offset 0: always defined, never a trap.
            let mut program: Vec<Insn> = ops
                .into_iter()
                .map(|(operation, wide, dst, src, imm)| {
                    let class = if wide { op::CLASS_ALU64 } else { op::CLASS_ALU };
                    let source = if imm % 2 == 0 { op::SRC_K } else { op::SRC_X };
                    let code = if operation << 4 == op::NEG {
                        class | op::NEG
                    } else {
                        class | source | (operation << 4)
                    };
                    Insn::new(code, dst, src, 0, imm)
                })
                .collect();
            program.push(Insn::new(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0));
            let result = run(&program, &context(), &mut TestHelpers::default());
            prop_assert!(result.is_ok(), "{:?}", result);
        }
    }
}

// ---------------------------------------------------------------------------
// Running on a caller's stack, zeroing only the verified depth
// ---------------------------------------------------------------------------

/// Runs `text` with `run_on_stack` on a stack full of stale 0xaa bytes.
fn on_stale_stack(text: &str, depth: usize) -> (Result<u64, Trap>, Vec<u8>) {
    let mut stack = [0xaau8; STACK_SIZE];
    let result = run_on_stack(
        &program(text),
        &context(),
        &mut TestHelpers::default(),
        &mut stack,
        depth,
    );
    (result, stack.to_vec())
}

const STACK_SIZE: usize = probe_port_protocol::isa::STACK_SIZE;

#[test]
fn run_on_stack_zeroes_the_used_depth_and_leaves_the_rest_unreachable() {
    // Within the depth: a fresh, zeroed stack, and the same result as `run`.
    let text = "ldxdw r0, [r10-8]\nstdw [r10-16], 7\nldxdw r2, [r10-16]\nadd64 r0, r2\nexit";
    let (result, stack) = on_stale_stack(text, 16);
    assert_eq!(result, Ok(7));
    assert_eq!(result, exec(text));
    assert!(
        stack[STACK_SIZE - 16..STACK_SIZE - 8]
            .iter()
            .all(|byte| *byte == 7 || *byte == 0)
    );
    assert!(
        stack[..STACK_SIZE - 16].iter().all(|byte| *byte == 0xaa),
        "not zeroed below"
    );

    // Below the depth: loads, stores and helper buffers trap, so stale bytes are
    // never seen.
    let (result, _) = on_stale_stack("ldxdw r0, [r10-16]\nexit", 8);
    assert!(
        matches!(
            result,
            Err(Trap {
                kind: TrapKind::OutOfBounds { size: 8, .. },
                ..
            })
        ),
        "{result:?}"
    );
    let (result, stack) = on_stale_stack("stdw [r10-16], 1\nmov64 r0, 0\nexit", 8);
    assert!(
        matches!(
            result,
            Err(Trap {
                kind: TrapKind::OutOfBounds { size: 8, .. },
                ..
            })
        ),
        "{result:?}"
    );
    assert!(stack[..STACK_SIZE - 8].iter().all(|byte| *byte == 0xaa));
    let emit = "mov64 r1, r10\nadd64 r1, -16\nmov64 r2, 16\ncall emit\nexit";
    let (result, _) = on_stale_stack(emit, 8);
    assert!(
        matches!(
            result,
            Err(Trap {
                kind: TrapKind::BadHelperArgument { register: 1, .. },
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(on_stale_stack(emit, 16).0, exec(emit));

    // No stack at all, and a depth beyond the stack (the whole stack).
    let (result, stack) = on_stale_stack("ldxb r0, [r10-1]\nexit", 0);
    assert!(matches!(
        result,
        Err(Trap {
            kind: TrapKind::OutOfBounds { .. },
            ..
        })
    ));
    assert!(stack.iter().all(|byte| *byte == 0xaa));
    let text = "ldxdw r0, [r10-512]\nexit";
    let (result, stack) = on_stale_stack(text, 100_000);
    assert_eq!(result, Ok(0));
    assert!(stack.iter().all(|byte| *byte == 0));
}
