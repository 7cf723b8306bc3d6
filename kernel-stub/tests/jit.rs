//! The x86-64 JIT against the interpreter, case by case.
//!
//! Every program here is verified, compiled, copied into executable memory and
//! run on both executors with the same context, the same handler-stack buffer
//! (so `r10` is the same number) and the same helper behaviour; the outcomes
//! (`r0` or trap, helper calls with their buffers, final stack bytes, maps) must
//! be identical. Cases: the verifier's valid corpus and the benchmark handlers;
//! every ALU and jump opcode, in every register combination, on edge values;
//! every load and store width; helper traps; code-size bounds and refusals;
//! position independence.

mod jit_common;

use std::fs;
use std::path::Path;

use jit_common::{
    Behaviour, ExecBuffer, Jit, Stack, assert_same, is_unknown_map, listing, map_specs, run_both,
    verify_with,
};
use kernel_stub::jit::x86_64::{MAX_SLOT_BYTES, compile, max_code_size};
use kernel_stub::jit::{JitError, JitScratch};
use probe_port_protocol::asm::assemble;
use probe_port_protocol::context::{CONTEXT_SLOTS, ProbeContext};
use probe_port_protocol::isa::{Helper, Insn, op};
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};
use probe_port_protocol::verifier::ProgramKind;

/// Contexts with values that matter: zeros, sign bits, addresses of the
/// recorder's kernel memory in the argument slots, all-ones.
fn contexts() -> Vec<ProbeContext> {
    let mut all = Vec::new();
    all.push(ProbeContext::default());
    let mut context = ProbeContext::default();
    for (index, slot) in context.slots.iter_mut().enumerate() {
        *slot = 0x8070_6050_4030_2010u64.rotate_left(index as u32 * 8) ^ index as u64;
    }
    all.push(context);
    let mut kernel = context;
    for slot in [4, 5, 1, 2, 8, 9] {
        kernel.slots[slot] = jit_common::KERNEL_BASE + slot as u64 * 3;
    }
    kernel.slots[18] = 7;
    all.push(kernel);
    let mut ones = ProbeContext {
        slots: [u64::MAX; CONTEXT_SLOTS],
    };
    ones.slots[5] = 3000;
    ones.slots[4] = 5;
    all.push(ones);
    all
}

fn behaviours() -> [Behaviour; 3] {
    [
        Behaviour {
            emit_capacity: 8,
            ..Behaviour::default()
        },
        Behaviour {
            emit_capacity: 0,
            entry_save: 1,
            lie_about_length: Some(1000),
            ..Behaviour::default()
        },
        Behaviour {
            emit_capacity: 1,
            entry_save: 2,
            lie_about_length: Some(0),
            ..Behaviour::default()
        },
    ]
}

/// Runs `insns` on every context and behaviour; returns the number of runs.
fn differential(name: &str, insns: &[Insn], kind: ProgramKind, specs: &[MapSpec]) -> usize {
    let verified = verify_with(insns, kind, specs)
        .unwrap_or_else(|error| panic!("{name} does not verify: {error}\n{}", listing(insns)));
    let mut jit = Jit::new();
    let program = jit.load(&verified);
    let mut stack = Box::new(Stack([0; 512]));
    let mut runs = 0;
    for (context_index, context) in contexts().iter().enumerate() {
        for (behaviour_index, behaviour) in behaviours().into_iter().enumerate() {
            let (interpreted, compiled) =
                run_both(&verified, &program, context, behaviour, specs, &mut stack);
            assert_same(&interpreted, &compiled, &|| {
                format!(
                    "{name}, context {context_index}, behaviour {behaviour_index}\n{}",
                    listing(insns)
                )
            });
            runs += 1;
        }
    }
    runs
}

// ---------------------------------------------------------------------------
// Corpora
// ---------------------------------------------------------------------------

/// The maps of the verifier corpus (see its README).
fn corpus_maps() -> Vec<MapSpec> {
    let spec = |map, kind, key_size, value_size| MapSpec {
        map: MapId(map),
        kind,
        key_size,
        value_size,
        max_entries: 8,
    };
    let mut maps = vec![
        spec(1, MapKind::Hash, 8, 8),
        spec(2, MapKind::Aggregate(AggregateKind::Count), 8, 8),
        spec(3, MapKind::Aggregate(AggregateKind::Log2Hist), 8, 520),
    ];
    maps.extend((100..140).map(|map| spec(map, MapKind::Hash, 8, 8)));
    maps
}

#[test]
fn the_verifier_corpus_runs_the_same_compiled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../probe-port-protocol/tests/data/programs/valid");
    let mut paths: Vec<_> = fs::read_dir(&root)
        .expect("corpus directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "s"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 18, "corpus has {} programs", paths.len());
    let maps = corpus_maps();
    let mut runs = 0;
    for path in &paths {
        let text = fs::read_to_string(path).expect("readable");
        let insns = assemble(&text).expect("assembles");
        let kind = if text.contains("; kind: entry") {
            ProgramKind::Entry
        } else {
            ProgramKind::Probe
        };
        runs += differential(&path.display().to_string(), &insns, kind, &maps);
    }
    println!("verifier corpus: {} programs, {runs} runs", paths.len());
}

/// The handlers of `benches/interpreter.rs` and `benches/jit.rs`, plus the
/// `count()` handler.
const HANDLERS: [(&str, &str); 4] = [
    (
        "count",
        "mov64 r6, 0\nstxdw [r10-8], r6\nmov64 r1, 2\nmov64 r2, r10\nadd64 r2, -8\n\
         mov64 r3, 0\ncall aggregate\nmov64 r0, 0\nexit",
    ),
    (
        "predicate count",
        "mov64 r0, 0\nldxdw r6, [r1+40]\njle r6, 2, done\nldxdw r7, [r1+144]\nstxdw [r10-16], r7\n\
         stxdw [r10-8], r6\nstdw [r10-24], 0\nmov64 r1, 5\nmov64 r2, r10\nadd64 r2, -16\n\
         mov64 r3, r10\nadd64 r3, -24\ncall map_lookup\nldxdw r0, [r10-24]\nadd64 r0, 1\n\
         stxdw [r10-24], r0\nmov64 r1, 5\nmov64 r2, r10\nadd64 r2, -16\nmov64 r3, r10\n\
         add64 r3, -24\ncall map_update\nldxdw r0, [r10-24]\ndone:\nexit",
    ),
    (
        "log2 histogram",
        "ldxdw r6, [r1+32]\nmov64 r7, 0\njslt r6, 0, store\nmov64 r7, 1\njeq r6, 0, store\n\
         mov64 r7, 2\nmov64 r8, r6\nrsh64 r8, 32\njeq r8, 0, +2\nmov64 r6, r8\nadd64 r7, 32\n\
         mov64 r8, r6\nrsh64 r8, 16\njeq r8, 0, +2\nmov64 r6, r8\nadd64 r7, 16\n\
         mov64 r8, r6\nrsh64 r8, 8\njeq r8, 0, +2\nmov64 r6, r8\nadd64 r7, 8\n\
         mov64 r8, r6\nrsh64 r8, 4\njeq r8, 0, +2\nmov64 r6, r8\nadd64 r7, 4\n\
         mov64 r8, r6\nrsh64 r8, 2\njeq r8, 0, +2\nmov64 r6, r8\nadd64 r7, 2\n\
         mov64 r8, r6\nrsh64 r8, 1\njeq r8, 0, +1\nadd64 r7, 1\nstore:\nstxdw [r10-8], r7\n\
         mov64 r1, 4\nmov64 r2, r10\nadd64 r2, -8\nmov64 r3, 1\ncall aggregate\n\
         mov64 r0, r7\nexit",
    ),
    (
        "string event",
        "ldxdw r6, [r1+144]\nstxdw [r10-80], r6\nldxdw r3, [r1+40]\nmov64 r1, r10\n\
         add64 r1, -64\nmov64 r2, 64\ncall read_kernel_str\nstxdw [r10-72], r0\n\
         mov64 r1, r10\nadd64 r1, -80\nmov64 r2, 80\ncall emit\nldxdw r0, [r10-72]\nexit",
    ),
];

#[test]
fn benchmark_handlers_run_the_same_compiled() {
    let mut runs = 0;
    for (name, text) in HANDLERS {
        let insns = assemble(text).unwrap_or_else(|error| panic!("{name}: {error}"));
        runs += differential(name, &insns, ProgramKind::Probe, &map_specs());
    }
    println!(
        "benchmark handlers: {} programs, {runs} runs",
        HANDLERS.len()
    );
}

// ---------------------------------------------------------------------------
// Every ALU and jump opcode on edge values, in every register combination
// ---------------------------------------------------------------------------

/// Values every binary operation meets: zero, one, all ones, the signed
/// extremes of both widths, shift counts at and past the widths, and mixtures
/// whose halves differ.
const EDGE_VALUES: [u64; 24] = [
    0,
    1,
    2,
    u64::MAX,
    u64::MAX - 1,
    i64::MIN as u64,
    i64::MAX as u64,
    i32::MIN as i64 as u64,
    0x8000_0000,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    0xffff_ffff_0000_0000,
    31,
    32,
    33,
    63,
    64,
    65,
    0x1_0000_0020,
    0xdead_beef_0000_0007,
    0x8000_0000_ffff_ffff,
    0x0000_0001_8000_0000,
    0x1234_5678_9abc_def0,
];

/// A few values for the full register matrix.
const FEW_VALUES: [u64; 8] = [
    0,
    1,
    u64::MAX,
    i64::MIN as u64,
    0x8000_0000,
    0xffff_ffff,
    33,
    0x1234_5678_9abc_def0,
];

/// Immediates: the same kinds of edges, as 32-bit fields.
const EDGE_IMMEDIATES: [i32; 18] = [
    0,
    1,
    -1,
    2,
    -2,
    7,
    31,
    32,
    63,
    0x7f,
    0x80,
    -0x80,
    -0x81,
    i32::MAX,
    i32::MIN,
    0x1234_5678,
    -0x1234_5678,
    0x8000,
];

/// One operation under test: opcode, offset (variant) and, for the immediate
/// form, the immediate.
#[derive(Clone, Copy, Debug)]
struct Case {
    code: u8,
    off: i16,
    imm: i32,
}

/// Whether the operation reads a source register (`end` uses the bit for the
/// byte order instead).
fn from_register(code: u8) -> bool {
    code & op::SRC_MASK == op::SRC_X && code & op::OP_MASK != op::END
}

/// Every ALU operation the verifier accepts, in both widths and both source
/// forms, with every variant; immediate forms once per edge immediate.
fn alu_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for class in [op::CLASS_ALU, op::CLASS_ALU64] {
        let width = if class == op::CLASS_ALU64 { 64 } else { 32 };
        for operation in [
            op::ADD,
            op::SUB,
            op::MUL,
            op::DIV,
            op::OR,
            op::AND,
            op::LSH,
            op::RSH,
            op::MOD,
            op::XOR,
            op::MOV,
            op::ARSH,
        ] {
            let offsets: &[i16] = match operation {
                op::DIV | op::MOD => &[0, 1],
                _ => &[0],
            };
            for &off in offsets {
                for imm in EDGE_IMMEDIATES {
                    let shift = matches!(operation, op::LSH | op::RSH | op::ARSH);
                    if shift && !(0..width).contains(&imm) {
                        continue;
                    }
                    cases.push(Case {
                        code: class | op::SRC_K | operation,
                        off,
                        imm,
                    });
                }
                cases.push(Case {
                    code: class | op::SRC_X | operation,
                    off,
                    imm: 0,
                });
            }
        }
        cases.push(Case {
            code: class | op::NEG,
            off: 0,
            imm: 0,
        });
        let sign_extensions: &[i16] = if width == 64 { &[8, 16, 32] } else { &[8, 16] };
        for &off in sign_extensions {
            cases.push(Case {
                code: class | op::SRC_X | op::MOV,
                off,
                imm: 0,
            });
        }
    }
    for code in [
        op::CLASS_ALU | op::END | op::TO_LE,
        op::CLASS_ALU | op::END | op::TO_BE,
        op::CLASS_ALU64 | op::END,
    ] {
        for imm in [16, 32, 64] {
            cases.push(Case { code, off: 0, imm });
        }
    }
    cases
}

/// Every conditional jump in both widths and source forms.
fn jump_cases() -> Vec<Case> {
    let mut cases = Vec::new();
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
            for imm in EDGE_IMMEDIATES {
                cases.push(Case {
                    code: class | op::SRC_K | operation,
                    off: 0,
                    imm,
                });
            }
            cases.push(Case {
                code: class | op::SRC_X | operation,
                off: 0,
                imm: 0,
            });
        }
    }
    cases
}

/// Distinct recognisable initial values for `r0`–`r9`.
fn pattern(register: u8) -> u64 {
    0x0102_0304_0506_0708u64.wrapping_mul(u64::from(register) + 3) ^ 0x5a5a_0000_a5a5
}

fn lddw(dst: u8, value: u64) -> [Insn; 2] {
    [
        Insn::new(op::LDDW, dst, 0, 0, value as u32 as i32),
        Insn::new(0, 0, 0, 0, (value >> 32) as u32 as i32),
    ]
}

/// The program testing `case` on `dst` (and `src`): every register gets a
/// pattern, `dst` and `src` their values from context slots 0 and 1, the
/// operation runs, and every register `r0`–`r9` (plus, for jumps, which way it
/// went) is stored and emitted, so a clobbered register shows too.
fn matrix_program(case: Case, dst: u8, src: u8) -> Vec<Insn> {
    let jump = matches!(case.code & op::CLASS_MASK, op::CLASS_JMP | op::CLASS_JMP32);
    let mut program = Vec::new();
    for register in (0..=9).filter(|register| *register != 1) {
        program.extend(lddw(register, pattern(register)));
    }
    // The context pointer in a register that is neither operand.
    let base = (1..=9)
        .find(|register| *register != dst && *register != src)
        .expect("a free register");
    if base != 1 {
        program.push(Insn::new(
            op::CLASS_ALU64 | op::SRC_X | op::MOV,
            base,
            1,
            0,
            0,
        ));
    }
    let load = op::CLASS_LDX | op::MODE_MEM | op::SIZE_DW;
    if from_register(case.code) && src != 10 {
        program.push(Insn::new(load, src, base, 8, 0));
    }
    program.push(Insn::new(load, dst, base, 0, 0));
    let operand = if from_register(case.code) { src } else { 0 };
    let store = op::CLASS_ST | op::MODE_MEM | op::SIZE_DW;
    if jump {
        program.push(Insn::new(case.code, dst, operand, 2, case.imm));
        program.push(Insn::new(store, 10, 0, -88, 1));
        program.push(Insn::new(op::CLASS_JMP | op::JA, 0, 0, 1, 0));
        program.push(Insn::new(store, 10, 0, -88, 2));
    } else {
        program.push(Insn::new(case.code, dst, operand, case.off, case.imm));
    }
    for register in 0..=9u8 {
        program.push(Insn::new(
            op::CLASS_STX | op::MODE_MEM | op::SIZE_DW,
            10,
            register,
            -8 * (i16::from(register) + 1),
            0,
        ));
    }
    let mov = op::CLASS_ALU64 | op::MOV;
    program.push(Insn::new(mov | op::SRC_X, 1, 10, 0, 0));
    program.push(Insn::new(op::CLASS_ALU64 | op::ADD, 1, 0, 0, -88));
    program.push(Insn::new(mov, 2, 0, 0, 88));
    program.push(Insn::new(
        op::CLASS_JMP | op::CALL,
        0,
        0,
        0,
        Helper::Emit.id() as i32,
    ));
    program.push(Insn::new(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0));
    program
}

/// Runs `case` for the register pairs and value pairs given; returns the runs.
fn run_matrix(
    jit: &mut Jit,
    stack: &mut Stack,
    case: Case,
    registers: &[(u8, u8)],
    values: &[u64],
) -> usize {
    let specs = map_specs();
    let behaviour = Behaviour {
        emit_capacity: 1,
        ..Behaviour::default()
    };
    let mut runs = 0;
    for &(dst, src) in registers {
        let insns = matrix_program(case, dst, src);
        let verified = verify_with(&insns, ProgramKind::Probe, &specs)
            .unwrap_or_else(|error| panic!("{case:?} r{dst} r{src}: {error}"));
        let program = jit.load(&verified);
        // Only `dst` varies for the immediate and one-operand forms.
        let sources: &[u64] = if from_register(case.code) {
            values
        } else {
            &[0]
        };
        for &left in values {
            for &right in sources {
                let mut context = ProbeContext::default();
                context.slots[0] = left;
                context.slots[1] = right;
                let (interpreted, compiled) =
                    run_both(&verified, &program, &context, behaviour, &specs, stack);
                assert_same(&interpreted, &compiled, &|| {
                    format!(
                        "{case:x?} dst r{dst} = {left:#x}, src r{src} = {right:#x}\n{}",
                        listing(&insns)
                    )
                });
                runs += 1;
            }
        }
    }
    runs
}

/// Every (dst, src) pair: dst `r0`–`r9`, src `r0`–`r10`.
fn all_pairs(with_source: bool) -> Vec<(u8, u8)> {
    let sources: Vec<u8> = if with_source {
        (0..=10).collect()
    } else {
        vec![0]
    };
    (0..=9)
        .flat_map(|dst| sources.iter().map(move |src| (dst, *src)))
        .collect()
}

/// Register pairs that stress the fixed registers (`rax` = r0, `rdx` = r3,
/// `rcx` = r4) and a plain pair.
const SPECIAL_PAIRS: [(u8, u8); 7] = [(2, 6), (0, 3), (3, 0), (4, 4), (4, 0), (0, 4), (3, 3)];

fn check_cases(cases: &[Case]) -> usize {
    let mut jit = Jit::new();
    let mut stack = Box::new(Stack([0; 512]));
    let mut runs = 0;
    for &case in cases {
        let with_source = from_register(case.code);
        // The full register matrix on a few values, then the full value set on
        // the pairs that need care.
        runs += run_matrix(
            &mut jit,
            &mut stack,
            case,
            &all_pairs(with_source),
            &FEW_VALUES,
        );
        let pairs: Vec<(u8, u8)> = if with_source {
            SPECIAL_PAIRS.to_vec()
        } else {
            vec![(0, 0), (3, 0), (4, 0), (7, 0)]
        };
        runs += run_matrix(&mut jit, &mut stack, case, &pairs, &EDGE_VALUES);
    }
    runs
}

#[test]
fn every_alu_opcode_on_edge_values_in_every_register() {
    let cases = alu_cases();
    let runs = check_cases(&cases);
    println!("ALU: {} operations, {runs} runs", cases.len());
}

#[test]
fn every_jump_opcode_on_edge_values_in_every_register() {
    let cases = jump_cases();
    let runs = check_cases(&cases);
    println!("jumps: {} operations, {runs} runs", cases.len());
}

// ---------------------------------------------------------------------------
// Loads and stores of every width
// ---------------------------------------------------------------------------

#[test]
fn loads_and_stores_of_every_width_and_register() {
    let sizes = [
        (op::SIZE_B, 1i16),
        (op::SIZE_H, 2),
        (op::SIZE_W, 4),
        (op::SIZE_DW, 8),
    ];
    let mut lines = Vec::new();
    // Context loads, plain and sign-extending, into every register, through r1
    // and through a copy of it, at offsets inside the context of every alignment.
    for (size, bytes) in sizes {
        let modes: &[u8] = if size == op::SIZE_DW {
            &[op::MODE_MEM]
        } else {
            &[op::MODE_MEM, op::MODE_MEMSX]
        };
        for &mode in modes {
            for dst in 0..=9u8 {
                for (base, off) in [(1u8, 0i16), (6, bytes * 3), (9, 256 - bytes), (1, 136)] {
                    let base = if base == dst { 7 - dst.min(6) } else { base };
                    lines.push(vec![
                        Insn::new(op::CLASS_ALU64 | op::SRC_X | op::MOV, base, 1, 0, 0),
                        Insn::new(op::CLASS_LDX | mode | size, dst, base, off, 0),
                        Insn::new(op::CLASS_STX | op::MODE_MEM | op::SIZE_DW, 10, dst, -8, 0),
                    ]);
                }
            }
        }
        // Stores of registers (every register, r10 included) and of immediates,
        // through r10 and through a moved stack pointer, then loaded back.
        for src in 0..=10u8 {
            for (pointer, off) in [(10u8, -bytes), (6, -8), (8, 0), (10, -512)] {
                let mut line = Vec::new();
                if src != 10 && src != 1 {
                    line.extend(lddw(src, 0x8182_8384_8586_8788 ^ u64::from(src)));
                }
                if pointer != 10 {
                    line.push(Insn::new(
                        op::CLASS_ALU64 | op::SRC_X | op::MOV,
                        pointer,
                        10,
                        0,
                        0,
                    ));
                    line.push(Insn::new(op::CLASS_ALU64 | op::ADD, pointer, 0, 0, -24));
                }
                let source = if src == pointer && pointer != 10 {
                    10
                } else {
                    src
                };
                line.push(Insn::new(
                    op::CLASS_STX | op::MODE_MEM | size,
                    pointer,
                    source,
                    off,
                    0,
                ));
                for imm in [-1, 0x7f, -0x80, 0x1234_5678, i32::MIN] {
                    line.push(Insn::new(
                        op::CLASS_ST | op::MODE_MEM | size,
                        pointer,
                        0,
                        off,
                        imm,
                    ));
                    line.push(Insn::new(
                        op::CLASS_LDX | op::MODE_MEM | size,
                        0,
                        pointer,
                        off,
                        0,
                    ));
                    line.push(Insn::new(
                        op::CLASS_STX | op::MODE_MEM | op::SIZE_DW,
                        10,
                        0,
                        -32,
                        0,
                    ));
                }
                lines.push(line);
            }
        }
    }
    let mut runs = 0;
    for (index, line) in lines.iter().enumerate() {
        let mut insns = line.clone();
        insns.push(Insn::new(op::CLASS_ALU64 | op::MOV, 0, 0, 0, 0));
        insns.push(Insn::new(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0));
        runs += differential(
            &format!("memory case {index}"),
            &insns,
            ProgramKind::Probe,
            &map_specs(),
        );
    }
    println!("loads and stores: {} programs, {runs} runs", lines.len());
}

// ---------------------------------------------------------------------------
// Helpers and traps
// ---------------------------------------------------------------------------

/// Every helper with its arguments in place, one after another, each result
/// stored so later calls and the final emit show it.
const EVERY_HELPER: &str = "
    ldxdw r6, [r1+40]
    ldxdw r7, [r1+32]
    stxdw [r10-8], r6
    stxdw [r10-16], r7
    mov64 r1, r10
    add64 r1, -64
    mov64 r2, 24
    mov64 r3, r6
    call read_kernel
    stxdw [r10-72], r0
    mov64 r1, r10
    add64 r1, -96
    mov64 r2, 20
    mov64 r3, r6
    call read_kernel_str
    stxdw [r10-104], r0
    mov64 r1, r10
    add64 r1, -128
    mov64 r2, 16
    mov64 r3, r7
    call read_user
    mov64 r8, r0
    mov64 r1, r10
    add64 r1, -144
    mov64 r2, 9
    mov64 r3, r7
    call read_user_str
    add64 r8, r0
    call cpu
    add64 r8, r0
    call task_id
    add64 r8, r0
    call time_ns
    add64 r8, r0
    mov64 r1, r10
    add64 r1, -160
    mov64 r2, 13
    call task_name
    add64 r8, r0
    mov64 r1, r10
    add64 r1, -184
    mov64 r2, 24
    call stack_trace
    add64 r8, r0
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, r10
    add64 r3, -16
    call map_update
    add64 r8, r0
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, r10
    add64 r3, -8
    call map_lookup
    add64 r8, r0
    mov64 r1, 3
    mov64 r2, r10
    add64 r2, -20
    mov64 r3, r10
    add64 r3, -32
    call map_lookup
    add64 r8, r0
    mov64 r1, 4
    mov64 r2, r10
    add64 r2, -16
    mov64 r3, r6
    call aggregate
    add64 r8, r0
    mov64 r1, 2
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, 0
    call aggregate
    add64 r8, r0
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -8
    call map_delete
    add64 r8, r0
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -8
    call map_delete
    add64 r8, r0
    mov64 r1, 3
    mov64 r2, r8
    call entry_save
    add64 r8, r0
    stxdw [r10-192], r8
    mov64 r1, r10
    add64 r1, -192
    mov64 r2, 192
    call emit
    add64 r8, r0
    mov64 r1, r10
    add64 r1, -512
    mov64 r2, 512
    call emit
    add64 r0, r8
    exit
";

#[test]
fn every_helper_runs_the_same_compiled() {
    let insns = assemble(EVERY_HELPER).expect("assembles");
    let runs = differential("every helper", &insns, ProgramKind::Entry, &map_specs());
    println!("every helper: {runs} runs");
}

#[test]
fn helper_traps_stop_both_at_the_same_slot() {
    let insns = assemble(EVERY_HELPER).expect("assembles");
    let specs = map_specs();
    let verified = verify_with(&insns, ProgramKind::Entry, &specs).expect("verifies");
    let mut jit = Jit::new();
    let program = jit.load(&verified);
    let mut stack = Box::new(Stack([0; 512]));
    for hidden in 1..=4 {
        let behaviour = Behaviour {
            hidden_map: Some(hidden),
            ..Behaviour::default()
        };
        for context in contexts() {
            let (interpreted, compiled) =
                run_both(&verified, &program, &context, behaviour, &specs, &mut stack);
            assert!(
                is_unknown_map(&interpreted.result),
                "{:?}",
                interpreted.result
            );
            assert_same(&interpreted, &compiled, &|| format!("map {hidden} hidden"));
        }
    }
}

// ---------------------------------------------------------------------------
// Code: size bounds, refusals, position independence
// ---------------------------------------------------------------------------

#[test]
fn code_stays_within_its_bounds_and_small_buffers_are_refused() {
    let specs = map_specs();
    let mut scratch = Box::new(JitScratch::new());
    for case in alu_cases().into_iter().chain(jump_cases()) {
        for (dst, src) in all_pairs(from_register(case.code)) {
            let insns = matrix_program(case, dst, src);
            let verified = verify_with(&insns, ProgramKind::Probe, &specs).expect("verifies");
            let mut out = vec![0u8; max_code_size(insns.len())];
            let len = compile(&verified, &mut out, &mut scratch).expect("compiles");
            assert!(len <= max_code_size(insns.len()));

            // One byte short: refused, and nothing written past the buffer.
            let mut short = vec![0xeeu8; len + 64];
            let (inside, guard) = short.split_at_mut(len - 1);
            assert_eq!(
                compile(&verified, inside, &mut scratch),
                Err(JitError::TooLarge {
                    needed: len,
                    available: len - 1
                })
            );
            assert!(guard.iter().all(|byte| *byte == 0xee));
            let exact = compile(&verified, &mut short[..len], &mut scratch);
            assert_eq!(exact, Ok(len));
            assert_eq!(short[..len], out[..len], "compilation is deterministic");
        }
    }
    // The bound per slot holds for the worst single slot too.
    let divide = Insn::new(op::CLASS_ALU | op::SRC_X | op::MOD, 4, 3, 1, 0);
    let mut insns = vec![divide; 4000];
    insns.insert(0, Insn::new(op::CLASS_ALU64 | op::MOV, 3, 0, 0, 7));
    insns.insert(0, Insn::new(op::CLASS_ALU64 | op::MOV, 4, 0, 0, 7));
    insns.insert(0, Insn::new(op::CLASS_ALU64 | op::MOV, 0, 0, 0, 0));
    insns.push(Insn::new(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0));
    let verified = verify_with(&insns, ProgramKind::Probe, &specs).expect("verifies");
    let mut out = vec![0u8; max_code_size(insns.len())];
    let len = compile(&verified, &mut out, &mut scratch).expect("compiles");
    assert!(len <= 4000 * MAX_SLOT_BYTES + max_code_size(4));
    println!("4000 signed 32-bit modulos by a register: {len} bytes");
}

#[test]
fn code_runs_the_same_wherever_it_is_copied() {
    let insns = assemble(EVERY_HELPER).expect("assembles");
    let specs = map_specs();
    let verified = verify_with(&insns, ProgramKind::Entry, &specs).expect("verifies");
    let mut out = vec![0u8; max_code_size(insns.len())];
    let len = compile(&verified, &mut out, &mut JitScratch::new()).expect("compiles");
    let mut first = ExecBuffer::new(len);
    let mut second = ExecBuffer::new(len + 8192);
    let mut stack = Box::new(Stack([0; 512]));
    let context = &contexts()[2];
    let behaviour = behaviours()[0];
    let one = first.load(&out[..len], verified.stack_depth());
    let (reference, at_first) = run_both(&verified, &one, context, behaviour, &specs, &mut stack);
    let two = second.load(&out[..len], verified.stack_depth());
    let (_, at_second) = run_both(&verified, &two, context, behaviour, &specs, &mut stack);
    assert_same(&reference, &at_first, &|| "first copy".into());
    assert_same(&reference, &at_second, &|| "second copy".into());
}

/// Decodes compiled code with iced-x86 and checks its structure: it decodes
/// completely with no invalid instruction, every branch lands on an instruction
/// of the function, the only call is the indirect one through the environment
/// (`r12`), and the only return is the last instruction.
fn check_structure(code: &[u8]) -> Result<(), String> {
    use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic, OpKind, Register};
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut starts = std::collections::BTreeSet::new();
    let mut targets = Vec::new();
    let mut returns = Vec::new();
    for instruction in &mut decoder {
        if instruction.is_invalid() {
            return Err(format!("invalid instruction at {:#x}", instruction.ip()));
        }
        starts.insert(instruction.ip());
        match instruction.flow_control() {
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch => {
                targets.push((instruction.ip(), instruction.near_branch_target()));
            }
            FlowControl::IndirectCall => {
                let through_env = instruction.op0_kind() == OpKind::Memory
                    && instruction.memory_base() == Register::R12;
                if !through_env {
                    return Err(format!("call at {:#x} not through r12", instruction.ip()));
                }
            }
            FlowControl::Return => returns.push(instruction.ip()),
            FlowControl::Next => {}
            other => {
                return Err(format!(
                    "{other:?} ({:?}) at {:#x}",
                    instruction.mnemonic(),
                    instruction.ip()
                ));
            }
        }
        if instruction.mnemonic() == Mnemonic::INVALID {
            return Err(format!("invalid mnemonic at {:#x}", instruction.ip()));
        }
    }
    let last = starts.iter().next_back().copied();
    if returns != [last.unwrap_or(u64::MAX)] || last.map(|at| at + 1) != Some(code.len() as u64) {
        return Err(format!(
            "returns at {returns:x?}, code ends at {:#x}",
            code.len()
        ));
    }
    for (at, target) in targets {
        if !starts.contains(&target) {
            return Err(format!(
                "branch at {at:#x} to {target:#x}, not an instruction"
            ));
        }
    }
    Ok(())
}

#[test]
fn compiled_code_decodes_cleanly_and_branches_inside_itself() {
    let specs = map_specs();
    let mut jit = Jit::new();
    let mut programs: Vec<Vec<Insn>> = Vec::new();
    for case in alu_cases().into_iter().chain(jump_cases()) {
        for (dst, src) in all_pairs(from_register(case.code)) {
            programs.push(matrix_program(case, dst, src));
        }
    }
    for (_, text) in HANDLERS {
        programs.push(assemble(text).expect("assembles"));
    }
    programs.push(assemble(EVERY_HELPER).expect("assembles"));
    for insns in &programs {
        let verified = verify_with(insns, ProgramKind::Entry, &specs).expect("verifies");
        let len = jit.compile(&verified);
        if let Err(problem) = check_structure(&jit.code()[..len]) {
            panic!("{problem}\n{}", listing(insns));
        }
    }
    println!("{} programs decoded", programs.len());
}

/// The largest code of one slot, over every opcode, register pair and edge
/// immediate: the difference the slot makes to a program's code.
#[test]
fn the_largest_slot_is_within_the_bound() {
    let specs = map_specs();
    let mut jit = Jit::new();
    let mut largest = (0, None);
    for case in alu_cases().into_iter().chain(jump_cases()) {
        for (dst, src) in all_pairs(from_register(case.code)) {
            let mut prefix = Vec::new();
            for register in (0..=9).filter(|register| *register != 1) {
                prefix.extend(lddw(register, pattern(register)));
            }
            let exit = Insn::new(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0);
            let operand = if from_register(case.code) { src } else { 0 };
            let slot = Insn::new(case.code, dst, operand, case.off, case.imm);
            let without: Vec<Insn> = prefix.iter().copied().chain([exit]).collect();
            let with: Vec<Insn> = prefix.iter().copied().chain([slot, exit]).collect();
            let size = |insns: &[Insn], jit: &mut Jit| {
                let verified = verify_with(insns, ProgramKind::Probe, &specs).expect("verifies");
                jit.compile(&verified)
            };
            let bytes = size(&with, &mut jit) - size(&without, &mut jit);
            if bytes > largest.0 {
                largest = (bytes, Some(slot));
            }
        }
    }
    println!("largest slot: {} bytes, {:?}", largest.0, largest.1);
    assert!(largest.0 <= MAX_SLOT_BYTES);
}

#[test]
fn helpers_may_be_a_trait_object() {
    let insns = assemble(EVERY_HELPER).expect("assembles");
    let specs = map_specs();
    let verified = verify_with(&insns, ProgramKind::Entry, &specs).expect("verifies");
    let mut jit = Jit::new();
    let program = jit.load(&verified);
    let context = contexts()[2];
    let behaviour = behaviours()[0];
    let mut stack = Box::new(Stack([0; 512]));
    let (reference, _) = run_both(&verified, &program, &context, behaviour, &specs, &mut stack);
    let mut recorder = jit_common::Recorder::new(behaviour, &specs);
    let helpers: &mut dyn kernel_stub::interpreter::Helpers = &mut recorder;
    stack.0.fill(0xa5);
    let result = program.run(&context, helpers, &mut stack.0);
    assert_eq!(result, reference.result);
    assert_eq!(recorder.calls, reference.calls);
}

/// `r0` of `text` (ending in `mov64 r0, rX; exit` or similar), asserting both
/// executors agree.
fn r0_of_both(text: &str) -> u64 {
    let insns = assemble(text).unwrap_or_else(|error| panic!("{error}\n{text}"));
    let specs = map_specs();
    let verified = verify_with(&insns, ProgramKind::Probe, &specs)
        .unwrap_or_else(|error| panic!("{error}\n{text}"));
    let mut jit = Jit::new();
    let program = jit.load(&verified);
    let mut stack = Box::new(Stack([0; 512]));
    let context = ProbeContext::default();
    let (interpreted, compiled) = run_both(
        &verified,
        &program,
        &context,
        Behaviour::default(),
        &specs,
        &mut stack,
    );
    assert_same(&interpreted, &compiled, &|| text.to_owned());
    compiled
        .result
        .unwrap_or_else(|trap| panic!("{trap}\n{text}"))
}

/// The ISA's edge cases with their hand-computed results, on both executors:
/// what x86 does differently (or faults on) must not show.
#[test]
fn edge_semantics_have_the_isas_values() {
    let min64 = i64::MIN as u64;
    let cases: &[(&str, u64)] = &[
        // INT_MIN / -1 wraps (x86 idiv would raise #DE) and INT_MIN % -1 is 0.
        (
            "lddw r3, 0x8000000000000000\nmov64 r4, -1\nsdiv64 r3, r4\nmov64 r0, r3",
            min64,
        ),
        (
            "lddw r3, 0x8000000000000000\nmov64 r4, -1\nsmod64 r3, r4\nmov64 r0, r3",
            0,
        ),
        ("lddw r0, 0x8000000000000000\nsdiv64 r0, -1", min64),
        ("lddw r0, 0x8000000000000000\nsmod64 r0, -1", 0),
        (
            "lddw r0, 0xffffffff80000000\nmov32 r2, -1\nsdiv32 r0, r2",
            0x8000_0000,
        ),
        ("lddw r0, 0xffffffff80000000\nsmod32 r0, -1", 0),
        ("mov64 r0, -7\nsdiv64 r0, 2", -3i64 as u64),
        ("mov64 r0, -7\nsmod64 r0, 2", -1i64 as u64),
        // Division by zero: 0; modulo by zero keeps the dividend (32 bits in ALU).
        ("mov64 r0, 77\nmov64 r2, 0\ndiv64 r0, r2", 0),
        ("mov64 r0, 77\nmov64 r2, 0\nmod64 r0, r2", 77),
        ("mov64 r0, -77\nmov64 r2, 0\nsdiv64 r0, r2", 0),
        ("mov64 r0, -77\nmov64 r2, 0\nsmod64 r0, r2", -77i64 as u64),
        ("lddw r0, 0xffffffff00000005\nmov64 r2, 0\nmod32 r0, r2", 5),
        ("lddw r0, 0xffffffff00000005\nmod32 r0, 0", 5),
        ("lddw r0, 0xffffffff00000005\ndiv32 r0, 0", 0),
        ("lddw r0, 0xffffffff00000005\nsmod32 r0, 0", 5),
        // Shift counts are masked to the width.
        ("mov64 r0, 1\nmov64 r4, 33\nlsh32 r0, r4", 2),
        ("mov64 r0, 4\nmov64 r2, 65\nrsh64 r0, r2", 2),
        (
            "lddw r0, 0xffffffff80000000\nmov64 r2, 32\narsh32 r0, r2",
            0x8000_0000,
        ),
        ("lddw r0, 0xffffffff80000000\narsh32 r0, 31", 0xffff_ffff),
        ("lddw r0, 0x8000000000000000\narsh64 r0, 63", u64::MAX),
        // ALU32 results are zero-extended, even with nothing to compute.
        ("lddw r0, 0xffffffff12345678\nadd32 r0, 0", 0x1234_5678),
        ("lddw r0, 0xffffffff12345678\nlsh32 r0, 0", 0x1234_5678),
        ("lddw r0, 0xffffffff12345678\nmov32 r0, r0", 0x1234_5678),
        ("mov32 r0, -1", 0xffff_ffff),
        ("mov64 r0, -1", u64::MAX),
        ("lddw r0, 0xffffffff00000001\nneg32 r0", 0xffff_ffff),
        // Byte swaps and truncations.
        ("lddw r0, 0x123456789abcdef0\nbe16 r0", 0xf0de),
        ("lddw r0, 0x123456789abcdef0\nbe32 r0", 0xf0de_bc9a),
        (
            "lddw r0, 0x123456789abcdef0\nbe64 r0",
            0xf0de_bc9a_7856_3412,
        ),
        ("lddw r0, 0x123456789abcdef0\nle16 r0", 0xdef0),
        ("lddw r0, 0x123456789abcdef0\nle32 r0", 0x9abc_def0),
        ("lddw r0, 0x123456789abcdef0\nbswap16 r0", 0xf0de),
        // Sign-extending moves and loads.
        ("mov64 r2, 0x80\nmov64sx8 r0, r2", 0xffff_ffff_ffff_ff80),
        ("mov64 r2, 0x8000\nmov32sx16 r0, r2", 0xffff_8000),
        (
            "mov64 r2, 0x80000000\nmov64sx32 r0, r2",
            0xffff_ffff_8000_0000,
        ),
        (
            "stw [r10-4], 0x80\nldxsb r0, [r10-4]",
            0xffff_ffff_ffff_ff80,
        ),
        ("sth [r10-2], -2\nldxsh r0, [r10-2]", u64::MAX - 1),
        ("stw [r10-4], -3\nldxsw r0, [r10-4]", u64::MAX - 2),
        ("stw [r10-4], -3\nldxw r0, [r10-4]", 0xffff_fffd),
        ("stdw [r10-8], -3\nldxdw r0, [r10-8]", u64::MAX - 2),
        // Immediates are sign-extended in 64-bit operations and comparisons.
        ("mov64 r0, 0\nadd64 r0, -1", u64::MAX),
        (
            "mov64 r0, 0\nmov64 r2, -1\njeq r2, -1, +1\nexit\nmov64 r0, 1",
            1,
        ),
        (
            "mov64 r0, 0\nmov32 r2, -1\njeq r2, -1, +1\nexit\nmov64 r0, 1",
            0,
        ),
        (
            "mov64 r0, 0\nmov32 r2, -1\njeq32 r2, -1, +1\nexit\nmov64 r0, 1",
            1,
        ),
        (
            "mov64 r0, 0\nmov64 r2, -1\njsgt r2, -2, +1\nexit\nmov64 r0, 1",
            1,
        ),
        (
            "mov64 r0, 0\nmov64 r2, -1\njgt r2, -2, +1\nexit\nmov64 r0, 1",
            1,
        ),
        (
            "mov64 r0, 0\nlddw r2, 0x100000000\njset32 r2, -1, +1\nexit\nmov64 r0, 1",
            0,
        ),
    ];
    for (text, expected) in cases {
        let program = format!("{text}\nexit");
        assert_eq!(r0_of_both(&program), *expected, "{text}");
    }
}
