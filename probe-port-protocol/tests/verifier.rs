//! The verifier against a corpus of assembler programs and against random programs.
//!
//! - The corpus under `tests/data/programs` (see its README) holds valid programs,
//!   which must verify, and invalid ones, each refused at the exact slot and rule its
//!   header names. Every rule has at least one invalid program.
//! - Random slot sequences must never panic the verifier.
//! - Random programs that pass are checked against the verifier's invariants twice:
//!   structurally (an independent walk of the reachable slots), and dynamically, by a
//!   small reference executor that runs them on random contexts and asserts that no
//!   run reads an unset register, touches memory outside the stack and context,
//!   writes the context, passes a bad helper argument, runs any slot twice or runs
//!   past the end. The valid corpus goes through the same executor.
#![cfg(feature = "alloc")]

use std::fs;
use std::path::{Path, PathBuf};

use probe_port_protocol::asm::assemble;
use probe_port_protocol::context::{CONTEXT_SIZE, ENTRY_SLOTS};
use probe_port_protocol::isa::{
    ArgKind, FRAME_POINTER, Helper, Insn, MAX_INSNS, STACK_SIZE, decode_into, op,
};
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapShapes, MapSpec};
use probe_port_protocol::verifier::{
    ProgramKind, Rule, VerifiedProgram, VerifierConfig, VerifierScratch, VerifyError, verify,
    verify_alloc,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

/// The maps every test program may use.
struct TestMaps(Vec<MapSpec>);

impl MapShapes for TestMaps {
    fn spec(&self, map: MapId) -> Option<MapSpec> {
        self.0.as_slice().spec(map)
    }
}

fn spec(map: u16, kind: MapKind, key_size: u16, value_size: u16) -> MapSpec {
    MapSpec {
        map: MapId(map),
        kind,
        key_size,
        value_size,
        max_entries: 64,
    }
}

/// Map 1: hash map with 8-byte keys and values; map 2: count aggregation; map 3:
/// log2 histogram; maps 100 to 139: more hash maps, for the map-count limit.
fn test_maps() -> TestMaps {
    let mut maps = vec![
        spec(1, MapKind::Hash, 8, 8),
        spec(2, MapKind::Aggregate(AggregateKind::Count), 8, 8),
        spec(3, MapKind::Aggregate(AggregateKind::Log2Hist), 8, 65 * 8),
    ];
    maps.extend((100..140).map(|map| spec(map, MapKind::Hash, 8, 8)));
    for map in &maps {
        map.validate().expect("test maps are valid");
    }
    TestMaps(maps)
}

// ---------------------------------------------------------------------------------------
// The corpus.

/// One corpus file: its program and the header lines that matter.
struct Case {
    path: PathBuf,
    insns: Vec<Insn>,
    kind: ProgramKind,
    max_insns: usize,
    expect: Option<(u32, String)>,
}

fn load_cases(directory: &str) -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/programs")
        .join(directory);
    let mut paths: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", root.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "s"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no programs in {}", root.display());
    paths.into_iter().map(load_case).collect()
}

fn load_case(path: PathBuf) -> Case {
    let text = fs::read_to_string(&path).expect("corpus file is readable");
    let insns = assemble(&text)
        .unwrap_or_else(|error| panic!("{} does not assemble: {error}", path.display()));
    let mut case = Case {
        path,
        insns,
        kind: ProgramKind::Probe,
        max_insns: MAX_INSNS,
        expect: None,
    };
    for line in text.lines() {
        let Some(header) = line.trim().strip_prefix(';') else {
            continue;
        };
        let header = header.trim();
        if let Some(expect) = header.strip_prefix("expect:") {
            let mut words = expect.split_whitespace();
            let index = words.next().and_then(|word| word.parse().ok());
            let rule = words.next();
            match (index, rule, words.next()) {
                (Some(index), Some(rule), None) => case.expect = Some((index, rule.to_owned())),
                _ => panic!("{}: bad expect header {line:?}", case.path.display()),
            }
        } else if let Some(kind) = header.strip_prefix("kind:") {
            case.kind = match kind.trim() {
                "entry" => ProgramKind::Entry,
                "probe" => ProgramKind::Probe,
                other => panic!("{}: unknown kind {other:?}", case.path.display()),
            };
        } else if let Some(limit) = header.strip_prefix("max-insns:") {
            case.max_insns = limit.trim().parse().expect("max-insns is a number");
        }
    }
    case
}

fn verify_case<'p>(case: &'p Case, maps: &TestMaps) -> Result<VerifiedProgram<'p>, VerifyError> {
    let config = VerifierConfig {
        max_insns: case.max_insns,
        kind: case.kind,
        maps,
    };
    verify_alloc(&case.insns, &config)
}

#[test]
fn valid_corpus_verifies_and_runs_safely() {
    let maps = test_maps();
    let mut failures = Vec::new();
    for case in load_cases("valid") {
        assert!(
            case.expect.is_none(),
            "{}: valid programs have no expect",
            case.path.display()
        );
        match verify_case(&case, &maps) {
            Ok(verified) => {
                for seed in 0..16 {
                    if let Err(violation) = run_reference(&verified, &maps, seed) {
                        failures.push(format!("{}: seed {seed}: {violation}", case.path.display()));
                    }
                }
            }
            Err(error) => failures.push(format!("{}: refused: {error}", case.path.display())),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn invalid_corpus_is_refused_exactly() {
    let maps = test_maps();
    let mut failures = Vec::new();
    let mut covered = Vec::new();
    for case in load_cases("invalid") {
        let Some((index, rule_name)) = &case.expect else {
            panic!(
                "{}: invalid programs start with `; expect: INDEX RULE`",
                case.path.display()
            );
        };
        let rule = Rule::from_name(rule_name)
            .unwrap_or_else(|| panic!("{}: unknown rule {rule_name}", case.path.display()));
        covered.push(rule);
        let expected = VerifyError {
            index: *index,
            rule,
        };
        match verify_case(&case, &maps) {
            Ok(_) => failures.push(format!(
                "{}: verified, expected {expected}",
                case.path.display()
            )),
            Err(error) if error != expected => failures.push(format!(
                "{}: got {} {} ({error}), expected {} {}",
                case.path.display(),
                error.index,
                error.rule.name(),
                expected.index,
                expected.rule.name()
            )),
            Err(_) => {}
        }
    }
    for rule in Rule::ALL {
        if !covered.contains(rule) {
            failures.push(format!("no invalid program breaks rule {}", rule.name()));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn length_limits_follow_the_protocol_and_the_scratch() {
    let maps = test_maps();
    let exit = Insn::new(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0);
    let mov = Insn::new(op::CLASS_ALU64 | op::MOV, 0, 0, 0, 0);
    let mut program = vec![mov; MAX_INSNS];
    program[MAX_INSNS - 1] = exit;
    let config = VerifierConfig {
        max_insns: usize::MAX,
        ..VerifierConfig::new(ProgramKind::Probe, &maps)
    };
    assert!(verify_alloc(&program, &config).is_ok());
    program.insert(0, mov);
    assert_eq!(
        verify_alloc(&program, &config).unwrap_err(),
        VerifyError {
            index: MAX_INSNS as u32,
            rule: Rule::TooLong
        }
    );
    // A small scratch caps the length too.
    let mut scratch = VerifierScratch::<8>::with_capacity();
    assert_eq!(
        verify(&program[..9], &config, &mut scratch).unwrap_err(),
        VerifyError {
            index: 8,
            rule: Rule::TooLong
        }
    );
    assert!(verify(&program[MAX_INSNS - 7..], &config, &mut scratch).is_ok());
    // Reusing a scratch gives the same answers.
    let mut scratch = Box::new(VerifierScratch::new());
    for _ in 0..2 {
        assert!(verify(&program[1..], &config, &mut scratch).is_ok());
        assert_eq!(
            verify(&[mov], &config, &mut scratch).unwrap_err().rule,
            Rule::FallOffEnd
        );
    }
}

// ---------------------------------------------------------------------------------------
// The reference executor.

/// Where the executor puts the stack (`r10` is `STACK_BASE + STACK_SIZE`) and the
/// context. Both are far from any value a random program computes by chance.
const STACK_BASE: u64 = 0x7f00_0000_0000;
const CONTEXT_BASE: u64 = 0x5500_0000_0000;

/// A small pseudo-random generator (xorshift64*), for contexts and helper results.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value that is often small or special, so that branches go both ways.
    fn value(&mut self) -> u64 {
        match self.next() % 4 {
            0 => self.next() % 8,
            1 => (self.next() % 16).wrapping_neg(),
            _ => self.next(),
        }
    }
}

struct Machine<'a> {
    insns: &'a [Insn],
    kind: ProgramKind,
    maps: &'a TestMaps,
    registers: [Option<u64>; 11],
    stack: [u8; STACK_SIZE],
    context: [u8; CONTEXT_SIZE],
    random: Random,
}

/// Runs a verified program on a random context; any unsafe step is an `Err`.
fn run_reference(program: &VerifiedProgram<'_>, maps: &TestMaps, seed: u64) -> Result<u64, String> {
    let mut random = Random(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut context = [0u8; CONTEXT_SIZE];
    for chunk in context.chunks_exact_mut(8) {
        chunk.copy_from_slice(&random.value().to_le_bytes());
    }
    let mut machine = Machine {
        insns: program.insns(),
        kind: program.kind(),
        maps,
        registers: [None; 11],
        stack: [0; STACK_SIZE],
        context,
        random,
    };
    machine.registers[1] = Some(CONTEXT_BASE);
    machine.registers[FRAME_POINTER as usize] = Some(STACK_BASE + STACK_SIZE as u64);
    let result = machine.run()?;
    // The deepest byte touched must be within the reported depth.
    if let Some(lowest) = machine.stack.iter().position(|byte| *byte != 0)
        && STACK_SIZE - lowest > program.stack_depth()
    {
        return Err(format!(
            "stack written {} bytes deep, verifier said {}",
            STACK_SIZE - lowest,
            program.stack_depth()
        ));
    }
    Ok(result)
}

fn sign_extend(value: u64, bits: u32) -> u64 {
    let shift = 64 - bits;
    (((value << shift) as i64) >> shift) as u64
}

fn alu64(operation: u8, off: i16, dst: u64, src: u64) -> Result<u64, String> {
    Ok(match operation {
        op::ADD => dst.wrapping_add(src),
        op::SUB => dst.wrapping_sub(src),
        op::MUL => dst.wrapping_mul(src),
        op::DIV if src == 0 => 0,
        op::DIV if off == 1 => (dst as i64).wrapping_div(src as i64) as u64,
        op::DIV => dst / src,
        op::OR => dst | src,
        op::AND => dst & src,
        op::LSH => dst << (src & 63),
        op::RSH => dst >> (src & 63),
        op::NEG => dst.wrapping_neg(),
        op::MOD if src == 0 => dst,
        op::MOD if off == 1 => (dst as i64).wrapping_rem(src as i64) as u64,
        op::MOD => dst % src,
        op::XOR => dst ^ src,
        op::MOV if off == 0 => src,
        op::MOV => sign_extend(src, off as u32),
        op::ARSH => ((dst as i64) >> (src & 63)) as u64,
        _ => return Err(format!("alu64 operation {operation:#x} ran")),
    })
}

fn alu32(operation: u8, off: i16, dst: u32, src: u32) -> Result<u32, String> {
    Ok(match operation {
        op::ADD => dst.wrapping_add(src),
        op::SUB => dst.wrapping_sub(src),
        op::MUL => dst.wrapping_mul(src),
        op::DIV if src == 0 => 0,
        op::DIV if off == 1 => (dst as i32).wrapping_div(src as i32) as u32,
        op::DIV => dst / src,
        op::OR => dst | src,
        op::AND => dst & src,
        op::LSH => dst << (src & 31),
        op::RSH => dst >> (src & 31),
        op::NEG => dst.wrapping_neg(),
        op::MOD if src == 0 => dst,
        op::MOD if off == 1 => (dst as i32).wrapping_rem(src as i32) as u32,
        op::MOD => dst % src,
        op::XOR => dst ^ src,
        op::MOV if off == 0 => src,
        op::MOV => sign_extend(u64::from(src), off as u32) as u32,
        op::ARSH => ((dst as i32) >> (src & 31)) as u32,
        _ => return Err(format!("alu32 operation {operation:#x} ran")),
    })
}

fn byte_swap(value: u64, width: i32, swap: bool) -> Result<u64, String> {
    Ok(match (width, swap) {
        (16, false) => value & 0xffff,
        (32, false) => value & 0xffff_ffff,
        (64, false) => value,
        (16, true) => u64::from((value as u16).swap_bytes()),
        (32, true) => u64::from((value as u32).swap_bytes()),
        (64, true) => value.swap_bytes(),
        _ => return Err(format!("byte swap of width {width} ran")),
    })
}

fn condition(operation: u8, wide: bool, dst: u64, src: u64) -> Result<bool, String> {
    let (dst, src) = if wide {
        (dst, src)
    } else {
        (dst & 0xffff_ffff, src & 0xffff_ffff)
    };
    let (signed_dst, signed_src) = if wide {
        (dst as i64, src as i64)
    } else {
        (i64::from(dst as u32 as i32), i64::from(src as u32 as i32))
    };
    Ok(match operation {
        op::JEQ => dst == src,
        op::JGT => dst > src,
        op::JGE => dst >= src,
        op::JSET => dst & src != 0,
        op::JNE => dst != src,
        op::JSGT => signed_dst > signed_src,
        op::JSGE => signed_dst >= signed_src,
        op::JLT => dst < src,
        op::JLE => dst <= src,
        op::JSLT => signed_dst < signed_src,
        op::JSLE => signed_dst <= signed_src,
        _ => return Err(format!("jump condition {operation:#x} ran")),
    })
}

impl Machine<'_> {
    fn read(&self, register: u8) -> Result<u64, String> {
        self.registers
            .get(usize::from(register))
            .copied()
            .flatten()
            .ok_or_else(|| format!("read of unset register r{register}"))
    }

    fn write(&mut self, register: u8, value: u64) -> Result<(), String> {
        match usize::from(register) {
            index if index < FRAME_POINTER as usize => {
                self.registers[index] = Some(value);
                Ok(())
            }
            _ => Err(format!("write of r{register}")),
        }
    }

    /// The bytes at `address`, if the whole access is on the stack or (for loads)
    /// in the context, and aligned.
    fn memory(&mut self, address: u64, size: usize, store: bool) -> Result<&mut [u8], String> {
        if !address.is_multiple_of(size as u64) {
            return Err(format!("misaligned {size}-byte access at {address:#x}"));
        }
        let end = address.checked_add(size as u64).ok_or("address overflow")?;
        if address >= STACK_BASE && end <= STACK_BASE + STACK_SIZE as u64 {
            let start = (address - STACK_BASE) as usize;
            return Ok(&mut self.stack[start..start + size]);
        }
        if address >= CONTEXT_BASE && end <= CONTEXT_BASE + CONTEXT_SIZE as u64 {
            if store {
                return Err(format!("store to the context at {address:#x}"));
            }
            let start = (address - CONTEXT_BASE) as usize;
            return Ok(&mut self.context[start..start + size]);
        }
        Err(format!(
            "{size}-byte access outside stack and context at {address:#x}"
        ))
    }

    /// A helper buffer of `size` bytes at `address`, which must be on the stack.
    fn buffer(&mut self, address: u64, size: u64) -> Result<&mut [u8], String> {
        let end = address.checked_add(size).ok_or("buffer overflow")?;
        if size == 0 || address < STACK_BASE || end > STACK_BASE + STACK_SIZE as u64 {
            return Err(format!(
                "helper buffer [{address:#x}, +{size}) outside the stack"
            ));
        }
        let start = (address - STACK_BASE) as usize;
        Ok(&mut self.stack[start..start + size as usize])
    }

    fn map(&self, value: u64) -> Result<MapSpec, String> {
        u16::try_from(value)
            .ok()
            .and_then(|map| self.maps.spec(MapId(map)))
            .ok_or_else(|| format!("helper got undefined map {value}"))
    }

    fn call(&mut self, helper: Helper) -> Result<(), String> {
        if helper == Helper::EntrySave && self.kind != ProgramKind::Entry {
            return Err("entry_save in a probe program".into());
        }
        let arguments = helper.args();
        let mut values = [0u64; 6];
        for (position, _) in arguments.iter().enumerate() {
            values[position + 1] = self.read(position as u8 + 1)?;
        }
        for (position, kind) in arguments.iter().enumerate() {
            let value = values[position + 1];
            let size = match *kind {
                ArgKind::Scalar => continue,
                ArgKind::MapId => {
                    let spec = self.map(value)?;
                    let fits = match helper {
                        Helper::Aggregate => matches!(spec.kind, MapKind::Aggregate(_)),
                        _ => spec.kind == MapKind::Hash,
                    };
                    if !fits {
                        return Err(format!("{helper} on map {value} of kind {:?}", spec.kind));
                    }
                    continue;
                }
                ArgKind::Size => {
                    if !(1..=STACK_SIZE as u64).contains(&value) {
                        return Err(format!("{helper} got size {value}"));
                    }
                    continue;
                }
                ArgKind::EntrySlot => {
                    if value >= ENTRY_SLOTS as u64 {
                        return Err(format!("entry_save to slot {value}"));
                    }
                    continue;
                }
                ArgKind::StackIn { size_arg } | ArgKind::StackOut { size_arg } => {
                    values[usize::from(size_arg)]
                }
                ArgKind::MapKey { map_arg } => {
                    u64::from(self.map(values[usize::from(map_arg)])?.key_size)
                }
                ArgKind::MapValue { map_arg } => {
                    u64::from(self.map(values[usize::from(map_arg)])?.value_size)
                }
            };
            let output = matches!(kind, ArgKind::StackOut { .. } | ArgKind::MapValue { .. });
            let fill = self.random.next();
            let buffer = self.buffer(value, size)?;
            if output && helper != Helper::MapUpdate {
                buffer.fill(fill as u8 | 1);
            }
        }
        let result = self.random.value();
        self.registers[0] = Some(result);
        for clobbered in &mut self.registers[1..=5] {
            *clobbered = None;
        }
        Ok(())
    }

    fn run(&mut self) -> Result<u64, String> {
        let insns = self.insns;
        let mut pc = 0usize;
        let mut last = None;
        loop {
            if last.is_some_and(|last| pc <= last) {
                return Err(format!("slot {pc} runs after slot {}", last.unwrap_or(0)));
            }
            last = Some(pc);
            let insn = *insns
                .get(pc)
                .ok_or_else(|| format!("ran past the end to slot {pc}"))?;
            let at = |message: String| format!("slot {pc} ({insn:?}): {message}");
            let wide = matches!(insn.class(), op::CLASS_ALU64 | op::CLASS_JMP);
            let from_register = insn.code & op::SRC_MASK == op::SRC_X;
            let operation = insn.code & op::OP_MASK;
            let operand = |machine: &Self| -> Result<u64, String> {
                if from_register {
                    machine.read(insn.src())
                } else if wide {
                    Ok(insn.imm as i64 as u64)
                } else {
                    Ok(u64::from(insn.imm as u32))
                }
            };
            let mut next = pc + 1;
            match insn.class() {
                op::CLASS_ALU64 | op::CLASS_ALU => {
                    let source = if operation == op::NEG || operation == op::END {
                        0
                    } else {
                        operand(self).map_err(at)?
                    };
                    let target = if operation == op::MOV {
                        0
                    } else {
                        self.read(insn.dst()).map_err(at)?
                    };
                    let result = if operation == op::END {
                        let swap = wide || from_register;
                        byte_swap(target, insn.imm, swap).map_err(at)?
                    } else if insn.class() == op::CLASS_ALU64 {
                        alu64(operation, insn.off, target, source).map_err(at)?
                    } else {
                        u64::from(
                            alu32(operation, insn.off, target as u32, source as u32).map_err(at)?,
                        )
                    };
                    self.write(insn.dst(), result).map_err(at)?;
                }
                op::CLASS_LDX => {
                    let size = access_size(insn.code);
                    let address = self
                        .read(insn.src())
                        .map_err(at)?
                        .wrapping_add(insn.off as i64 as u64);
                    let bytes = self.memory(address, size, false).map_err(at)?;
                    let mut raw = [0u8; 8];
                    raw[..size].copy_from_slice(bytes);
                    let mut value = u64::from_le_bytes(raw);
                    if insn.code & op::MODE_MASK == op::MODE_MEMSX {
                        value = sign_extend(value, size as u32 * 8);
                    }
                    self.write(insn.dst(), value).map_err(at)?;
                }
                op::CLASS_ST | op::CLASS_STX => {
                    let size = access_size(insn.code);
                    let value = if insn.class() == op::CLASS_STX {
                        self.read(insn.src()).map_err(at)?
                    } else {
                        insn.imm as i64 as u64
                    };
                    let address = self
                        .read(insn.dst())
                        .map_err(at)?
                        .wrapping_add(insn.off as i64 as u64);
                    // Stored bytes are made non-zero so the stack depth check sees them.
                    let bytes = self.memory(address, size, true).map_err(at)?;
                    bytes.copy_from_slice(&value.to_le_bytes()[..size]);
                    if bytes.iter().all(|byte| *byte == 0) {
                        bytes[0] = 0x80;
                    }
                }
                op::CLASS_LD => {
                    let tail = insns
                        .get(pc + 1)
                        .ok_or_else(|| at("lddw without a tail".into()))?;
                    let value = u64::from(insn.imm as u32) | (u64::from(tail.imm as u32) << 32);
                    self.write(insn.dst(), value).map_err(at)?;
                    next = pc + 2;
                }
                _ => match operation {
                    op::EXIT => return self.read(0).map_err(at),
                    op::CALL => {
                        let helper = Helper::from_id(insn.imm as u32)
                            .ok_or_else(|| at(format!("unknown helper {}", insn.imm)))?;
                        self.call(helper).map_err(at)?;
                    }
                    op::JA => {
                        let distance = if wide {
                            i64::from(insn.off)
                        } else {
                            i64::from(insn.imm)
                        };
                        next = jump(pc, distance).map_err(at)?;
                    }
                    _ => {
                        let left = self.read(insn.dst()).map_err(at)?;
                        let right = operand(self).map_err(at)?;
                        if condition(operation, wide, left, right).map_err(at)? {
                            next = jump(pc, i64::from(insn.off)).map_err(at)?;
                        }
                    }
                },
            }
            pc = next;
        }
    }
}

fn jump(pc: usize, distance: i64) -> Result<usize, String> {
    usize::try_from(pc as i64 + 1 + distance).map_err(|_| format!("jump by {distance} before 0"))
}

fn access_size(code: u8) -> usize {
    match code & op::SIZE_MASK {
        op::SIZE_B => 1,
        op::SIZE_H => 2,
        op::SIZE_W => 4,
        _ => 8,
    }
}

// ---------------------------------------------------------------------------------------
// Structural invariants, checked by an independent walk.

/// Checks what every verified program must satisfy, from the reachable slots alone.
fn check_structure(insns: &[Insn]) -> Result<(), String> {
    let len = insns.len();
    // Which slots start instructions.
    let mut starts = vec![false; len];
    let mut index = 0;
    while index < len {
        starts[index] = true;
        index += if insns[index].is_wide() { 2 } else { 1 };
    }
    let mut reachable = vec![false; len];
    reachable[0] = true;
    for index in 0..len {
        if !reachable[index] {
            continue;
        }
        if !starts[index] {
            return Err(format!("slot {index} is reached but is an lddw tail"));
        }
        let insn = insns[index];
        for register in [insn.dst(), insn.src()] {
            if register > FRAME_POINTER {
                return Err(format!("slot {index} names r{register}"));
            }
        }
        let class = insn.class();
        let operation = insn.code & op::OP_MASK;
        let is_jump_class = matches!(class, op::CLASS_JMP | op::CLASS_JMP32);
        let mut successors = Vec::new();
        if is_jump_class && operation == op::EXIT {
            // No successor.
        } else if is_jump_class && operation == op::JA {
            let distance = if class == op::CLASS_JMP {
                i64::from(insn.off)
            } else {
                i64::from(insn.imm)
            };
            successors.push((index, distance));
        } else if is_jump_class && operation != op::CALL {
            successors.push((index, i64::from(insn.off)));
            successors.push((index, 0));
        } else {
            successors.push((index, if insn.is_wide() { 1 } else { 0 }));
        }
        for (from, distance) in successors {
            if distance < 0 {
                return Err(format!("slot {from} jumps backward"));
            }
            let target = from as i64 + 1 + distance;
            let Some(target) = usize::try_from(target).ok().filter(|target| *target < len) else {
                return Err(format!(
                    "slot {from} continues to slot {target}, past the end"
                ));
            };
            if !starts[target] {
                return Err(format!("slot {from} continues into an lddw tail"));
            }
            reachable[target] = true;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Random programs.

/// Every opcode the verifier accepts, for the generator to pick from.
fn allowed_codes() -> Vec<u8> {
    let mut codes = Vec::new();
    for class in [op::CLASS_ALU, op::CLASS_ALU64] {
        for operation in (0..=0xd0).step_by(0x10) {
            codes.push(class | operation as u8);
            if operation as u8 != op::NEG && operation as u8 != op::END {
                codes.push(class | op::SRC_X | operation as u8);
            }
        }
    }
    codes.push(op::CLASS_ALU | op::SRC_X | op::END);
    for class in [op::CLASS_JMP, op::CLASS_JMP32] {
        for operation in [
            op::JEQ,
            op::JGT,
            op::JGE,
            op::JSET,
            op::JNE,
            op::JSGT,
            op::JSGE,
            op::JLT,
            op::JLE,
            op::JSLT,
            op::JSLE,
        ] {
            codes.push(class | operation);
            codes.push(class | op::SRC_X | operation);
        }
        codes.push(class | op::JA);
    }
    codes.push(op::CLASS_JMP | op::CALL);
    codes.push(op::CLASS_JMP | op::EXIT);
    for size in [op::SIZE_B, op::SIZE_H, op::SIZE_W, op::SIZE_DW] {
        codes.push(op::CLASS_LDX | op::MODE_MEM | size);
        codes.push(op::CLASS_ST | op::MODE_MEM | size);
        codes.push(op::CLASS_STX | op::MODE_MEM | size);
        if size != op::SIZE_DW {
            codes.push(op::CLASS_LDX | op::MODE_MEMSX | size);
        }
    }
    codes.push(op::LDDW);
    codes
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn::new(code, dst, src, off, imm)
}

/// A slot with an allowed opcode and fields drawn from values that often make sense;
/// most of them also get their unused fields zeroed and their variants in range.
fn plausible_slot() -> impl Strategy<Value = Insn> {
    // Mostly r0 and the registers helper calls preserve, so that reads often find a value.
    let register = prop_oneof![
        12 => prop::sample::select(vec![0u8, 6, 7, 8, 9, 10]),
        4 => 1u8..=5,
        1 => 11u8..=15,
    ];
    let off = prop_oneof![
        3 => 0i16..=4,
        3 => (-66i16..=1).prop_map(|slot| slot * 8),
        1 => prop::sample::select(vec![1i16, 8, 16, 32, -1, -4, -6, 256, 252]),
        1 => any::<i16>(),
    ];
    let imm = prop_oneof![
        4 => -16i32..=16,
        2 => 1i32..=15,
        2 => (-66i32..=1).prop_map(|slot| slot * 8),
        1 => prop::sample::select(vec![32, 63, 64, 100, 131, 512, 513, 0x1_0000, -1]),
        1 => any::<i32>(),
    ];
    let tidy = prop::bool::weighted(0.9);
    (
        prop::sample::select(allowed_codes()),
        register.clone(),
        register,
        off,
        imm,
        tidy,
    )
        .prop_map(|(code, dst, src, off, imm, tidy)| {
            let slot = insn(code, dst, src, off, imm);
            if tidy { tidy_slot(slot) } else { slot }
        })
}

/// Zeroes the fields `slot` does not use and brings its variant fields into range, so
/// that it passes the shape checks (an `lddw` becomes a `mov`, having no tail).
fn tidy_slot(slot: Insn) -> Insn {
    let Insn { code, off, imm, .. } = slot;
    let (dst, src) = (slot.dst(), slot.src());
    let from_register = code & op::SRC_MASK == op::SRC_X;
    let operation = code & op::OP_MASK;
    let small_jump = off.rem_euclid(4);
    match slot.class() {
        op::CLASS_ALU | op::CLASS_ALU64 => {
            let width = if slot.class() == op::CLASS_ALU64 {
                64
            } else {
                32
            };
            let dst = dst.min(9);
            match operation {
                op::NEG => insn(code, dst, 0, 0, 0),
                op::END => insn(code, dst, 0, 0, [16, 32, 64][imm.rem_euclid(3) as usize]),
                op::DIV | op::MOD if from_register => insn(code, dst, src, off.rem_euclid(2), 0),
                op::DIV | op::MOD => insn(code, dst, 0, off.rem_euclid(2), imm),
                op::MOV if from_register => {
                    let widths: &[i16] = if width == 64 {
                        &[0, 0, 8, 16, 32]
                    } else {
                        &[0, 0, 8, 16]
                    };
                    insn(
                        code,
                        dst,
                        src,
                        widths[off.rem_euclid(widths.len() as i16) as usize],
                        0,
                    )
                }
                op::LSH | op::RSH | op::ARSH if !from_register => {
                    insn(code, dst, 0, 0, imm.rem_euclid(width))
                }
                _ if from_register => insn(code, dst, src, 0, 0),
                _ => insn(code, dst, 0, 0, imm),
            }
        }
        op::CLASS_JMP | op::CLASS_JMP32 => match operation {
            op::JA if slot.class() == op::CLASS_JMP => insn(code, 0, 0, small_jump, 0),
            op::JA => insn(code, 0, 0, 0, i32::from(small_jump)),
            op::CALL => insn(code, 0, 0, 0, imm.rem_euclid(15) + 1),
            op::EXIT => insn(code, 0, 0, 0, 0),
            _ if from_register => insn(code, dst, src, small_jump, 0),
            _ => insn(code, dst, 0, small_jump, imm),
        },
        op::CLASS_LDX | op::CLASS_ST | op::CLASS_STX => {
            let size = access_size(code) as i16;
            let off = off - off.rem_euclid(size);
            match slot.class() {
                op::CLASS_LDX => insn(code, dst.min(9), src, off, 0),
                op::CLASS_ST => insn(code, dst, 0, off, imm),
                _ => insn(code, dst, src, off, 0),
            }
        }
        _ => insn(op::CLASS_ALU64 | op::MOV, dst.min(9), 0, 0, imm),
    }
}

/// Short idioms a compiler emits, so that many random programs verify.
fn idiom() -> impl Strategy<Value = Vec<Insn>> {
    let alu64_k = op::CLASS_ALU64 | op::SRC_K;
    let alu64_x = op::CLASS_ALU64 | op::SRC_X;
    let data_register = 0u8..=9;
    prop_oneof![
        // A stack pointer.
        (data_register.clone(), -66i32..=1).prop_map(move |(dst, slot)| vec![
            insn(alu64_x | op::MOV, dst, 10, 0, 0),
            insn(alu64_k | op::ADD, dst, 0, 0, slot * 8),
        ]),
        // A constant.
        (data_register.clone(), -4i32..=600).prop_map(move |(dst, value)| vec![insn(
            alu64_k | op::MOV,
            dst,
            0,
            0,
            value
        )]),
        // A context load.
        (data_register.clone(), 0i16..=33).prop_map(|(dst, slot)| vec![insn(
            op::CLASS_LDX | op::MODE_MEM | op::SIZE_DW,
            dst,
            1,
            slot * 8,
            0
        )]),
        // A stack store.
        (data_register.clone(), -65i16..=0).prop_map(|(src, slot)| vec![insn(
            op::CLASS_STX | op::MODE_MEM | op::SIZE_DW,
            10,
            src,
            slot * 8,
            0
        )]),
        // A helper call with its arguments in place.
        (1u32..=15, 1i32..=4, -8i32..=-1, 1i32..=70).prop_map(move |(helper, map, slot, size)| {
            let helper = Helper::from_id(helper).expect("1..=15 are helpers");
            let mut code = Vec::new();
            for (position, kind) in helper.args().iter().enumerate() {
                let register = position as u8 + 1;
                match kind {
                    ArgKind::MapId => code.push(insn(alu64_k | op::MOV, register, 0, 0, map)),
                    ArgKind::Size => code.push(insn(alu64_k | op::MOV, register, 0, 0, size)),
                    ArgKind::EntrySlot => code.push(insn(alu64_k | op::MOV, register, 0, 0, map)),
                    ArgKind::Scalar => code.push(insn(alu64_k | op::MOV, register, 0, 0, 7)),
                    _ => {
                        code.push(insn(alu64_x | op::MOV, register, 10, 0, 0));
                        code.push(insn(alu64_k | op::ADD, register, 0, 0, slot * 16));
                    }
                }
            }
            code.push(insn(op::CLASS_JMP | op::CALL, 0, 0, 0, helper.id() as i32));
            code
        }),
        // A forward branch.
        (data_register, 0i16..=4).prop_map(|(dst, off)| vec![insn(
            op::CLASS_JMP | op::JGT,
            dst,
            0,
            off,
            3
        )]),
        // An exit with a result.
        Just(vec![
            insn(alu64_k | op::MOV, 0, 0, 0, 0),
            insn(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0)
        ]),
        // A 64-bit constant.
        (0u8..=9, any::<i32>(), 0i32..=1).prop_map(|(dst, low, high)| vec![
            insn(op::LDDW, dst, 0, 0, low),
            insn(0, 0, 0, 0, high),
        ]),
    ]
}

/// Programs built from idioms and plausible slots, usually ending in an exit.
fn random_program() -> impl Strategy<Value = (Vec<Insn>, bool)> {
    let chunk = prop_oneof![3 => idiom(), 2 => plausible_slot().prop_map(|slot| vec![slot])];
    let prologue = prop::collection::vec(-4i32..=64, 10);
    (
        prop::collection::vec(chunk, 1..12),
        prologue,
        any::<[bool; 3]>(),
    )
        .prop_map(|(chunks, values, [initialise, end_with_exit, entry])| {
            let mut program = Vec::new();
            if initialise {
                for (register, value) in values.into_iter().enumerate() {
                    if register != 1 {
                        program.push(insn(op::CLASS_ALU64 | op::MOV, register as u8, 0, 0, value));
                    }
                }
            }
            program.extend(chunks.concat());
            if end_with_exit {
                program.push(insn(op::CLASS_ALU64 | op::MOV, 0, 0, 0, 0));
                program.push(insn(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0));
            }
            (program, entry)
        })
}

fn raw_slot() -> impl Strategy<Value = Insn> {
    any::<[u8; 8]>().prop_map(Insn::from_bytes)
}

fn kind_of(entry: bool) -> ProgramKind {
    if entry {
        ProgramKind::Entry
    } else {
        ProgramKind::Probe
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// Arbitrary slots never panic the verifier, and errors point inside the program.
    #[test]
    fn random_slots_never_panic(
        slots in prop::collection::vec(prop_oneof![raw_slot(), plausible_slot()], 0..72),
        entry in any::<bool>(),
    ) {
        let maps = test_maps();
        let config = VerifierConfig { max_insns: 64, ..VerifierConfig::new(kind_of(entry), &maps) };
        let mut scratch = VerifierScratch::<128>::with_capacity();
        match verify(&slots, &config, &mut scratch) {
            Ok(verified) => {
                prop_assert!(check_structure(verified.insns()).is_ok());
            }
            Err(error) => {
                prop_assert!(
                    (error.index as usize) < slots.len().max(1),
                    "error {error:?} outside a program of {} slots", slots.len()
                );
            }
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random programs that verify keep every invariant, on every path the executor takes.
    #[test]
    fn verified_programs_are_safe((slots, entry) in random_program(), seeds in any::<[u64; 4]>()) {
        let maps = test_maps();
        let config = VerifierConfig::new(kind_of(entry), &maps);
        let mut scratch = VerifierScratch::<256>::with_capacity();
        if let Ok(verified) = verify(&slots, &config, &mut scratch) {
            if let Err(violation) = check_structure(verified.insns()) {
                return Err(TestCaseError::fail(violation));
            }
            prop_assert!(verified.stack_depth() <= STACK_SIZE);
            for seed in seeds {
                if let Err(violation) = run_reference(&verified, &maps, seed) {
                    return Err(TestCaseError::fail(violation));
                }
            }
            for map in verified.maps_used().iter() {
                prop_assert!(maps.spec(map).is_some());
            }
        }
    }

    /// Decoding wire bytes and verifying never panics, whatever the bytes.
    #[test]
    fn wire_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let maps = test_maps();
        let mut slots = [Insn::default(); 64];
        if let Ok(insns) = decode_into(&bytes, &mut slots) {
            let mut scratch = VerifierScratch::<64>::with_capacity();
            for kind in [ProgramKind::Probe, ProgramKind::Entry] {
                let _ = verify(insns, &VerifierConfig::new(kind, &maps), &mut scratch);
            }
        }
    }
}

/// The generator must produce enough verifiable programs for the safety property to
/// mean something.
#[test]
fn random_programs_often_verify() {
    let maps = test_maps();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = random_program();
    let mut verified = 0;
    let mut with_calls = 0;
    for _ in 0..1000 {
        let (slots, entry) = strategy.new_tree(&mut runner).expect("strategy").current();
        let config = VerifierConfig::new(kind_of(entry), &maps);
        if let Ok(program) = verify_alloc(&slots, &config) {
            verified += 1;
            let calls = program
                .insns()
                .iter()
                .any(|slot| slot.code == op::CLASS_JMP | op::CALL);
            with_calls += usize::from(calls);
        }
    }
    assert!(
        verified >= 100,
        "only {verified} of 1000 random programs verify"
    );
    assert!(
        with_calls >= 30,
        "only {with_calls} verified random programs call helpers"
    );
}
