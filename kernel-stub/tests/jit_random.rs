//! The x86-64 JIT against the interpreter on random verified programs.
//!
//! A seeded generator writes programs the way a compiler would, keeping a small
//! shadow of the verifier's register types (uninitialised, scalar, stack or
//! context pointer with an offset) so that most of them verify: arithmetic of
//! every opcode and variant on registers holding edge values, loads and stores
//! of every width through `r10`, moved stack pointers and context pointers,
//! forward jumps of every condition over whole chunks, helper calls of every
//! helper with their arguments in place, early exits. Programs the verifier
//! refuses are dropped. Each verified program is compiled once and run on both
//! executors with several random contexts and helper behaviours; at the end
//! every register is stored and emitted, so the whole register file is compared,
//! with `r0`, the helper calls, the final stack and the maps.
//!
//! `PROBEPORT_JIT_PROGRAMS` sets how many programs each test generates and
//! `PROBEPORT_JIT_SEED` the seed (a failure prints both).

mod jit_common;

use std::collections::BTreeSet;
use std::time::Instant;

use jit_common::{
    Behaviour, Jit, KERNEL_BASE, Stack, assert_same, listing, map_specs, run_both, verify_with,
};
use probe_port_protocol::context::{CONTEXT_SIZE, ENTRY_SLOTS, ProbeContext};
use probe_port_protocol::isa::{ArgKind, Helper, Insn, STACK_SIZE, op};
use probe_port_protocol::verifier::ProgramKind;

/// SplitMix64: small, fast and good enough to drive a generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// A 64-bit value that is often an edge.
    fn value(&mut self) -> u64 {
        const EDGES: [u64; 16] = [
            0,
            1,
            u64::MAX,
            i64::MIN as u64,
            i64::MAX as u64,
            0x8000_0000,
            0x7fff_ffff,
            0xffff_ffff,
            0xffff_ffff_8000_0000,
            0x1_0000_0000,
            31,
            32,
            63,
            64,
            KERNEL_BASE,
            KERNEL_BASE + 15,
        ];
        match self.below(4) {
            0 => self.pick(&EDGES),
            1 => self.next() % 512,
            2 => self.next(),
            _ => self
                .pick(&EDGES)
                .wrapping_add(self.next() % 5)
                .wrapping_sub(2),
        }
    }

    /// A 32-bit immediate that is often an edge.
    fn imm(&mut self) -> i32 {
        const EDGES: [i32; 12] = [0, 1, -1, 2, 7, 31, 32, 63, 64, i32::MIN, i32::MAX, -0x80];
        match self.below(3) {
            0 => self.pick(&EDGES),
            1 => (self.next() % 600) as i32 - 100,
            _ => self.next() as i32,
        }
    }
}

/// The verifier's view of a register, as far as the generator tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Uninit,
    Scalar,
    Stack(i16),
    Context(i16),
}

type State = [Kind; 10];

fn meet(left: &State, right: &State) -> State {
    let mut result = *left;
    for (mine, theirs) in result.iter_mut().zip(right) {
        if *mine != *theirs {
            *mine = if *mine == Kind::Uninit || *theirs == Kind::Uninit {
                Kind::Uninit
            } else {
                Kind::Scalar
            };
        }
    }
    result
}

const ALU64_K: u8 = op::CLASS_ALU64 | op::SRC_K;
const ALU64_X: u8 = op::CLASS_ALU64 | op::SRC_X;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn::new(code, dst, src, off, imm)
}

struct Generator<'r> {
    rng: &'r mut Rng,
    insns: Vec<Insn>,
    /// The state on the fall-through path; `None` after an `exit`.
    state: Option<State>,
    /// The last reachable state, for generating dead code.
    last: State,
    /// Jumps waiting for their target chunk: (slot of the jump, chunk, state).
    pending: Vec<(usize, usize, State)>,
    /// The register that keeps the context pointer for the whole program.
    context_holder: u8,
    kind: ProgramKind,
}

impl Generator<'_> {
    fn current(&self) -> State {
        self.state.unwrap_or(self.last)
    }

    fn set(&mut self, register: u8, kind: Kind) {
        if let Some(state) = &mut self.state {
            state[usize::from(register)] = kind;
            self.last = *state;
        } else {
            self.last[usize::from(register)] = kind;
        }
    }

    fn kind_of(&self, register: u8) -> Kind {
        if register == 10 {
            Kind::Stack(0)
        } else {
            self.current()[usize::from(register)]
        }
    }

    fn push(&mut self, insn: Insn) {
        self.insns.push(insn);
    }

    /// A register the program may overwrite.
    fn writable(&mut self) -> u8 {
        loop {
            let register = self.rng.below(10) as u8;
            if register != self.context_holder {
                return register;
            }
        }
    }

    /// An initialised writable register, initialising one if none is.
    fn initialised_writable(&mut self) -> u8 {
        let state = self.current();
        let candidates: Vec<u8> = (0..10u8)
            .filter(|register| {
                *register != self.context_holder && state[usize::from(*register)] != Kind::Uninit
            })
            .collect();
        if candidates.is_empty() || self.rng.chance(5) {
            let register = self.writable();
            let value = self.rng.imm();
            self.push(insn(ALU64_K | op::MOV, register, 0, 0, value));
            self.set(register, Kind::Scalar);
            return register;
        }
        self.rng.pick(&candidates)
    }

    /// Any readable register, `r10` included.
    fn readable(&mut self) -> u8 {
        let state = self.current();
        let mut candidates: Vec<u8> = (0..10u8)
            .filter(|register| state[usize::from(*register)] != Kind::Uninit)
            .collect();
        candidates.push(10);
        self.rng.pick(&candidates)
    }

    fn chunk(&mut self, index: usize, chunks: usize) {
        match self.rng.below(100) {
            0..=34 => self.alu(),
            35..=39 => {
                let dst = self.writable();
                let value = self.rng.value();
                self.push(insn(op::LDDW, dst, 0, 0, value as u32 as i32));
                self.push(insn(0, 0, 0, 0, (value >> 32) as u32 as i32));
                self.set(dst, Kind::Scalar);
            }
            40..=54 => self.load(),
            55..=66 => self.store(),
            67..=78 => self.jump(index, chunks),
            79..=90 => self.call(),
            91..=94 => self.pointer(),
            _ => self.exit(),
        }
    }

    fn alu(&mut self) {
        let wide = self.rng.chance(60);
        let class = if wide { op::CLASS_ALU64 } else { op::CLASS_ALU };
        let width = if wide { 64 } else { 32 };
        let operation = self.rng.pick(&[
            op::ADD,
            op::SUB,
            op::MUL,
            op::DIV,
            op::OR,
            op::AND,
            op::LSH,
            op::RSH,
            op::NEG,
            op::MOD,
            op::XOR,
            op::MOV,
            op::ARSH,
            op::END,
        ]);
        let from_register = self.rng.chance(50);
        let dst = if operation == op::MOV {
            self.writable()
        } else {
            self.initialised_writable()
        };
        let before = self.kind_of(dst);
        let mut result = Kind::Scalar;
        let slot = match operation {
            op::NEG => insn(class | op::NEG, dst, 0, 0, 0),
            op::END => {
                let code = if wide {
                    class | op::END
                } else {
                    class | op::END | self.rng.pick(&[op::TO_LE, op::TO_BE])
                };
                insn(code, dst, 0, 0, self.rng.pick(&[16, 32, 64]))
            }
            _ if from_register => {
                let src = self.readable();
                let off = match operation {
                    op::DIV | op::MOD => self.rng.below(2) as i16,
                    op::MOV if wide => self.rng.pick(&[0, 0, 8, 16, 32]),
                    op::MOV => self.rng.pick(&[0, 0, 8, 16]),
                    _ => 0,
                };
                if operation == op::MOV && wide && off == 0 {
                    result = self.kind_of(src);
                }
                insn(class | op::SRC_X | operation, dst, src, off, 0)
            }
            _ => {
                let mut imm = self.rng.imm();
                if matches!(operation, op::LSH | op::RSH | op::ARSH) {
                    imm = imm.rem_euclid(width);
                }
                let off = if matches!(operation, op::DIV | op::MOD) {
                    self.rng.below(2) as i16
                } else {
                    0
                };
                // Pointer arithmetic by an immediate keeps a pointer.
                if wide && matches!(operation, op::ADD | op::SUB) {
                    let delta = if operation == op::ADD {
                        i64::from(imm)
                    } else {
                        -i64::from(imm)
                    };
                    let moved = |offset: i16| i16::try_from(i64::from(offset) + delta).ok();
                    result = match before {
                        Kind::Stack(offset) => moved(offset).map_or(Kind::Scalar, Kind::Stack),
                        Kind::Context(offset) => moved(offset).map_or(Kind::Scalar, Kind::Context),
                        _ => Kind::Scalar,
                    };
                }
                insn(class | operation, dst, 0, off, imm)
            }
        };
        self.push(slot);
        self.set(dst, result);
    }

    /// A base register and offset for an access of `size` bytes: the stack (any
    /// stack pointer) or, for loads, the context.
    fn address(&mut self, size: i16, load: bool) -> (u8, i16) {
        let state = self.current();
        let mut bases: Vec<(u8, Kind)> = vec![(10, Kind::Stack(0))];
        for register in 0..10u8 {
            match state[usize::from(register)] {
                kind @ Kind::Stack(_) => bases.push((register, kind)),
                kind @ Kind::Context(_) if load => bases.push((register, kind)),
                _ => {}
            }
        }
        let (base, kind) = self.rng.pick(&bases);
        let slots = |bytes: usize| (bytes / size as usize) as i16;
        match kind {
            Kind::Stack(offset) => {
                // Mostly near the top, sometimes anywhere in the 512 bytes.
                let depth = if self.rng.chance(80) { 96 } else { STACK_SIZE };
                let start = -(self.rng.below(slots(depth) as usize) as i16 + 1) * size;
                (base, start - offset)
            }
            Kind::Context(offset) => {
                let start = self.rng.below(slots(CONTEXT_SIZE) as usize) as i16 * size;
                (base, start - offset)
            }
            _ => unreachable!("only pointers are bases"),
        }
    }

    fn load(&mut self) {
        let (size_code, size) = self.rng.pick(&[
            (op::SIZE_B, 1),
            (op::SIZE_H, 2),
            (op::SIZE_W, 4),
            (op::SIZE_DW, 8),
            (op::SIZE_DW, 8),
        ]);
        let mode = if size != 8 && self.rng.chance(40) {
            op::MODE_MEMSX
        } else {
            op::MODE_MEM
        };
        let (base, off) = self.address(size, true);
        let dst = self.writable();
        self.push(insn(op::CLASS_LDX | mode | size_code, dst, base, off, 0));
        self.set(dst, Kind::Scalar);
    }

    fn store(&mut self) {
        let (size_code, size) = self.rng.pick(&[
            (op::SIZE_B, 1),
            (op::SIZE_H, 2),
            (op::SIZE_W, 4),
            (op::SIZE_DW, 8),
            (op::SIZE_DW, 8),
        ]);
        let (base, off) = self.address(size, false);
        if self.rng.chance(30) {
            let imm = self.rng.imm();
            self.push(insn(
                op::CLASS_ST | op::MODE_MEM | size_code,
                base,
                0,
                off,
                imm,
            ));
        } else {
            let src = self.readable();
            self.push(insn(
                op::CLASS_STX | op::MODE_MEM | size_code,
                base,
                src,
                off,
                0,
            ));
        }
    }

    fn jump(&mut self, index: usize, chunks: usize) {
        let target = (index + 1 + self.rng.below(4)).min(chunks);
        let at = self.insns.len();
        if self.rng.chance(10) {
            // ja (offset in `off`) or ja32 (offset in `imm`), patched later.
            let code = self
                .rng
                .pick(&[op::CLASS_JMP | op::JA, op::CLASS_JMP32 | op::JA]);
            self.push(insn(code, 0, 0, 0, 0));
            if let Some(state) = self.state.take() {
                self.pending.push((at, target, state));
            }
            return;
        }
        let class = self.rng.pick(&[op::CLASS_JMP, op::CLASS_JMP32]);
        let operation = self.rng.pick(&[
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
        ]);
        let dst = self.readable();
        let slot = if self.rng.chance(50) {
            let src = self.readable();
            insn(class | op::SRC_X | operation, dst, src, 0, 0)
        } else {
            let imm = self.rng.imm();
            insn(class | operation, dst, 0, 0, imm)
        };
        self.push(slot);
        if let Some(state) = self.state {
            self.pending.push((at, target, state));
        }
    }

    /// Resolves the jumps to chunk `index`, which starts at the current slot.
    fn land(&mut self, index: usize) {
        let here = self.insns.len();
        let mut arriving = Vec::new();
        self.pending.retain(|&(at, target, state)| {
            if target == index {
                arriving.push((at, state));
                false
            } else {
                true
            }
        });
        for (at, state) in arriving {
            let distance = (here - at - 1) as i32;
            let jump = &mut self.insns[at];
            if jump.code == op::CLASS_JMP32 | op::JA {
                jump.imm = distance;
            } else {
                jump.off = distance as i16;
            }
            self.state = Some(match self.state {
                Some(current) => meet(&current, &state),
                None => state,
            });
        }
        if let Some(state) = self.state {
            self.last = state;
        }
    }

    fn stack_pointer(&mut self, register: u8, size: usize) {
        let start = -(self.rng.below(STACK_SIZE - size + 1) as i32) - size as i32;
        self.push(insn(ALU64_X | op::MOV, register, 10, 0, 0));
        self.push(insn(ALU64_K | op::ADD, register, 0, 0, start));
    }

    fn call(&mut self) {
        let helpers: &[Helper] = if self.kind == ProgramKind::Entry {
            &Helper::ALL
        } else {
            &Helper::ALL[..14]
        };
        let helper = self.rng.pick(helpers);
        let specs = map_specs();
        let map = match helper {
            Helper::Aggregate => self.rng.pick(&[2u16, 4]),
            _ => self.rng.pick(&[1u16, 3, 5]),
        };
        let spec = specs
            .iter()
            .find(|spec| spec.map.0 == map)
            .copied()
            .expect("defined");
        let size = match self.rng.below(4) {
            0 => 1,
            1 => STACK_SIZE,
            _ => 1 + self.rng.below(64),
        };
        let mut key_pointer = None;
        for (position, kind) in helper.args().iter().enumerate() {
            let register = position as u8 + 1;
            match *kind {
                ArgKind::MapId => self.push(insn(ALU64_K | op::MOV, register, 0, 0, map.into())),
                ArgKind::Size => {
                    self.push(insn(ALU64_K | op::MOV, register, 0, 0, size as i32));
                }
                ArgKind::EntrySlot => {
                    let slot = self.rng.below(ENTRY_SLOTS) as i32;
                    self.push(insn(ALU64_K | op::MOV, register, 0, 0, slot));
                }
                ArgKind::Scalar => {
                    if helper.args().len() == 3 && self.rng.chance(60) {
                        // A source address the recorder can read, or not.
                        let base = if self.rng.chance(80) {
                            KERNEL_BASE
                        } else {
                            KERNEL_BASE - 0x1000
                        };
                        let address = base + self.rng.below(160) as u64;
                        self.push(insn(op::LDDW, register, 0, 0, address as u32 as i32));
                        self.push(insn(0, 0, 0, 0, (address >> 32) as u32 as i32));
                    } else {
                        let source = self.readable();
                        self.push(insn(ALU64_X | op::MOV, register, source, 0, 0));
                    }
                }
                ArgKind::StackIn { .. } | ArgKind::StackOut { .. } => {
                    self.stack_pointer(register, size);
                }
                ArgKind::MapKey { .. } => {
                    self.stack_pointer(register, usize::from(spec.key_size));
                    key_pointer = Some(register);
                }
                ArgKind::MapValue { .. } => {
                    let value_size = usize::from(spec.value_size);
                    // Sometimes the value overlaps the key (looked up in place).
                    match key_pointer {
                        Some(key) if self.rng.chance(25) && value_size >= 1 => {
                            self.push(insn(ALU64_X | op::MOV, register, key, 0, 0));
                            let delta = self.rng.below(4) as i32 - 2;
                            self.push(insn(ALU64_K | op::ADD, register, 0, 0, delta));
                        }
                        _ => self.stack_pointer(register, value_size),
                    }
                }
            }
        }
        self.push(insn(op::CLASS_JMP | op::CALL, 0, 0, 0, helper.id() as i32));
        self.set(0, Kind::Scalar);
        for register in 1..=5 {
            self.set(register, Kind::Uninit);
        }
    }

    fn pointer(&mut self) {
        let dst = self.writable();
        if self.rng.chance(60) {
            let offset = -(self.rng.below(64) as i32) * 8;
            self.push(insn(ALU64_X | op::MOV, dst, 10, 0, 0));
            self.push(insn(ALU64_K | op::ADD, dst, 0, 0, offset));
            self.set(dst, Kind::Stack(offset as i16));
        } else {
            let offset = self.rng.below(32) as i32 * 8;
            self.push(insn(ALU64_X | op::MOV, dst, self.context_holder, 0, 0));
            self.push(insn(ALU64_K | op::ADD, dst, 0, 0, offset));
            self.set(dst, Kind::Context(offset as i16));
        }
    }

    fn exit(&mut self) {
        if self.kind_of(0) == Kind::Uninit {
            let value = self.rng.imm();
            self.push(insn(ALU64_K | op::MOV, 0, 0, 0, value));
            self.set(0, Kind::Scalar);
        }
        self.push(insn(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0));
        self.state = None;
    }

    /// Stores every initialised register, emits them, and exits.
    fn finish(&mut self) {
        let state = self.current();
        if self.state.is_none() {
            // Only dead code could follow; end it cleanly.
            self.push(insn(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0));
            return;
        }
        for register in 0..10u8 {
            if state[usize::from(register)] != Kind::Uninit {
                self.push(insn(
                    op::CLASS_STX | op::MODE_MEM | op::SIZE_DW,
                    10,
                    register,
                    -8 * (i16::from(register) + 1),
                    0,
                ));
            }
        }
        self.push(insn(ALU64_X | op::MOV, 1, 10, 0, 0));
        self.push(insn(ALU64_K | op::ADD, 1, 0, 0, -80));
        self.push(insn(ALU64_K | op::MOV, 2, 0, 0, 80));
        self.push(insn(
            op::CLASS_JMP | op::CALL,
            0,
            0,
            0,
            Helper::Emit.id() as i32,
        ));
        self.push(insn(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0));
    }
}

/// One random program of the given kind.
fn generate(rng: &mut Rng, kind: ProgramKind) -> Vec<Insn> {
    let context_holder = 6 + rng.below(4) as u8;
    let mut state = [Kind::Uninit; 10];
    state[1] = Kind::Context(0);
    let mut generator = Generator {
        rng,
        insns: Vec::new(),
        state: Some(state),
        last: state,
        pending: Vec::new(),
        context_holder,
        kind,
    };
    generator.push(insn(ALU64_X | op::MOV, context_holder, 1, 0, 0));
    generator.set(context_holder, Kind::Context(0));
    for register in (0..10u8).filter(|register| *register != 1 && *register != context_holder) {
        if generator.rng.chance(70) {
            let value = generator.rng.value();
            generator.push(insn(op::LDDW, register, 0, 0, value as u32 as i32));
            generator.push(insn(0, 0, 0, 0, (value >> 32) as u32 as i32));
            generator.set(register, Kind::Scalar);
        }
    }
    let chunks = 6 + generator.rng.below(30);
    for index in 0..chunks {
        generator.land(index);
        generator.chunk(index, chunks);
    }
    generator.land(chunks);
    generator.finish();
    generator.insns
}

fn random_context(rng: &mut Rng) -> ProbeContext {
    let mut context = ProbeContext::default();
    for slot in &mut context.slots {
        *slot = rng.value();
    }
    context
}

fn random_behaviour(rng: &mut Rng) -> Behaviour {
    Behaviour {
        emit_capacity: rng.below(4),
        entry_save: rng.below(3) as u8,
        hidden_map: if rng.chance(3) {
            Some(1 + rng.below(5) as u16)
        } else {
            None
        },
        lie_about_length: match rng.below(6) {
            0 => Some(0),
            1 => Some(rng.below(600)),
            _ => None,
        },
    }
}

fn environment_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Generates, verifies, compiles and runs programs; returns a summary line.
fn campaign(kind: ProgramKind, default_seed: u64) -> String {
    let programs = environment_number("PROBEPORT_JIT_PROGRAMS", 30_000);
    let seed = environment_number("PROBEPORT_JIT_SEED", default_seed);
    const RUNS_PER_PROGRAM: usize = 8;
    let specs = map_specs();
    let mut jit = Jit::new();
    let mut stack = Box::new(Stack([0; STACK_SIZE]));
    let start = Instant::now();
    let (mut verified_count, mut runs, mut traps, mut slots) = (0u64, 0u64, 0u64, 0u64);
    let mut codes = BTreeSet::new();
    for number in 0..programs {
        // Each program has its own seed, so a failure names one to replay.
        let program_seed = seed ^ number.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let mut rng = Rng(program_seed);
        let insns = generate(&mut rng, kind);
        let Ok(verified) = verify_with(&insns, kind, &specs) else {
            continue;
        };
        verified_count += 1;
        slots += insns.len() as u64;
        codes.extend(insns.iter().map(|slot| slot.code));
        let program = jit.load(&verified);
        for run in 0..RUNS_PER_PROGRAM {
            let context = random_context(&mut rng);
            let behaviour = random_behaviour(&mut rng);
            let (interpreted, compiled) =
                run_both(&verified, &program, &context, behaviour, &specs, &mut stack);
            assert_same(&interpreted, &compiled, &|| {
                format!(
                    "PROBEPORT_JIT_SEED={seed} program {number} (seed {program_seed:#x}), \
                     run {run}, {behaviour:?}\n{}",
                    listing(&insns)
                )
            });
            traps += u64::from(interpreted.result.is_err());
            runs += 1;
        }
    }
    let elapsed = start.elapsed();
    assert!(
        verified_count * 10 >= programs * 7,
        "only {verified_count} of {programs} generated programs verify"
    );
    format!(
        "{kind:?}: {programs} generated, {verified_count} verified ({slots} slots, {} opcodes), \
         {runs} runs on both executors ({traps} trapped), identical; {:.1} s",
        codes.len(),
        elapsed.as_secs_f64()
    )
}

#[test]
fn random_probe_programs_run_the_same_compiled() {
    println!("{}", campaign(ProgramKind::Probe, 0x6a09_e667_f3bc_c908));
}

#[test]
fn random_entry_programs_run_the_same_compiled() {
    println!("{}", campaign(ProgramKind::Entry, 0xbb67_ae85_84ca_a73b));
}

/// The generator reaches every opcode the verifier accepts.
#[test]
fn the_generator_covers_every_allowed_opcode() {
    let specs = map_specs();
    let mut seen = BTreeSet::new();
    let mut rng = Rng(1);
    for _ in 0..3000 {
        let insns = generate(&mut rng, ProgramKind::Entry);
        if verify_with(&insns, ProgramKind::Entry, &specs).is_ok() {
            seen.extend(insns.iter().map(|slot| slot.code));
        }
    }
    let mut missing = Vec::new();
    for code in 0..=255u8 {
        // An opcode is allowed if some program using it verifies; test it alone.
        let probe = [
            insn(ALU64_K | op::MOV, 0, 0, 0, 0),
            insn(code, 0, 0, 0, 0),
            insn(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0),
        ];
        let candidates = shapes(code);
        let allowed = candidates.iter().any(|slot| {
            let mut program = probe.to_vec();
            program[1] = *slot;
            if slot.is_wide() {
                program.insert(2, insn(0, 0, 0, 0, 0));
            }
            verify_with(&program, ProgramKind::Entry, &specs).is_ok()
        });
        if allowed && !seen.contains(&code) {
            missing.push(format!("{code:#04x}"));
        }
    }
    assert!(missing.is_empty(), "never generated: {}", missing.join(" "));
}

/// Well-formed instances of an opcode, to ask the verifier whether it allows it.
fn shapes(code: u8) -> Vec<Insn> {
    let mut shapes = Vec::new();
    for (dst, src) in [(0u8, 0u8), (0, 10), (10, 0)] {
        for off in [0i16, 1, 8, -8] {
            for imm in [0, 1, 16, Helper::Cpu.id() as i32] {
                shapes.push(insn(code, dst, src, off, imm));
            }
        }
    }
    shapes
}
