//! The x86_64 arch backend: decoding, slot code, emulation and boundaries.
//!
//! # Design
//!
//! Four tiers, from cheapest to strongest:
//!
//! 1. Table tests on hand-assembled instructions (each checked once with
//!    `objdump -D -b binary -mi386:x86-64`): what [`prepare`] decides and the exact
//!    slot bytes, and what [`resume`] does to registers and a fake stack.
//! 2. Differential execution on the host: a lab mapping (read, write, execute)
//!    holds an instruction at its "original" address and its prepared slot; a
//!    small assembly harness loads every general purpose register and the flags,
//!    jumps to either, and records the registers, flags and memory when execution
//!    reaches an exit stub placed at the next instruction (or at a branch target).
//!    Running the original bytes and running the slot must give identical results;
//!    for emulated instructions, [`resume`]'s result must equal what the CPU did.
//! 3. Real code: instruction boundaries of a function of this very test binary
//!    against `objdump -d`, and every function of the demo kernel through
//!    `prepare` (with the distribution of outcomes printed).
//! 4. Property tests: arbitrary bytes never panic, and whatever `prepare` accepts
//!    decodes back from the slot to the same instruction with the same operand
//!    target, followed by a jump back to the next original instruction.

#![cfg(target_arch = "x86_64")]

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic};
use kernel_stub::arch::{
    self, Displaced, PrepareError, SLOT_SIZE, StackAccess, TrapRegisters, breakpoint_address,
    is_instruction_boundary, prepare, resume,
};
use kernel_stub::interpreter::Fault;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Helpers shared by the tiers.

/// RFLAGS bits.
const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
/// Flags a test may set through `popfq` without changing how the CPU runs.
const ARITHMETIC_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;
/// Bit 1 of RFLAGS always reads as one.
const RESERVED_FLAG: u64 = 1 << 1;

/// DWARF numbers.
const RAX: usize = 0;
const RCX: usize = 2;
const RBX: usize = 3;
const RBP: usize = 6;
const RSP: usize = 7;
const R11: usize = 11;

/// A kernel-looking address for table tests.
const TEXT: u64 = 0xffff_ffff_8100_0000;
/// A slot 1 MiB after it.
const SLOT: u64 = 0xffff_ffff_8110_0000;

fn le32(value: i32) -> [u8; 4] {
    value.to_le_bytes()
}

/// `bytes` followed by the little-endian `value`.
fn with_i32(bytes: &[u8], value: i32) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out.extend_from_slice(&le32(value));
    out
}

fn prepared(address: u64, code: &[u8], slot: u64) -> (Displaced, Vec<u8>) {
    let (displaced, slot_code) =
        prepare(address, code, slot).unwrap_or_else(|error| panic!("{code:02x?}: {error}"));
    (displaced, slot_code.bytes().to_vec())
}

/// The `jmp rel32` a slot ends with, from the slot's `offset` back to `target`.
fn jump_back(slot: u64, offset: usize, target: u64) -> Vec<u8> {
    let end = slot + offset as u64 + 5;
    with_i32(
        &[0xe9],
        i32::try_from(target.wrapping_sub(end) as i64).unwrap(),
    )
}

/// A stack (or any memory) made of sparse u64 cells, optionally refusing a range.
#[derive(Default)]
struct FakeMemory {
    cells: BTreeMap<u64, u64>,
    bad: Option<std::ops::Range<u64>>,
}

impl FakeMemory {
    fn check(&self, address: u64) -> Result<(), Fault> {
        match &self.bad {
            Some(bad) if bad.contains(&address) => Err(Fault { address }),
            _ => Ok(()),
        }
    }
}

impl StackAccess for FakeMemory {
    fn read_u64(&mut self, address: u64) -> Result<u64, Fault> {
        self.check(address)?;
        Ok(self.cells.get(&address).copied().unwrap_or(0))
    }

    fn write_u64(&mut self, address: u64, value: u64) -> Result<(), Fault> {
        self.check(address)?;
        self.cells.insert(address, value);
        Ok(())
    }
}

/// Registers as after `int3` at `address`.
fn trapped_at(address: u64, rsp: u64, flags: u64) -> TrapRegisters {
    let mut regs = TrapRegisters {
        pc: address + 1,
        flags: flags | RESERVED_FLAG,
        ..Default::default()
    };
    for (number, value) in regs.regs.iter_mut().enumerate() {
        *value = 0x1000_0000_0000_0000 | (number as u64) << 8;
    }
    regs.regs[RSP] = rsp;
    regs
}

/// The reference meaning of each condition nibble, written from the SDM's table
/// rather than from the implementation's folding of it.
fn reference_condition(condition: u8, flags: u64) -> bool {
    let set = |bit: u64| flags & bit != 0;
    match condition {
        0x0 => set(OF),
        0x1 => !set(OF),
        0x2 => set(CF),
        0x3 => !set(CF),
        0x4 => set(ZF),
        0x5 => !set(ZF),
        0x6 => set(CF) || set(ZF),
        0x7 => !set(CF) && !set(ZF),
        0x8 => set(SF),
        0x9 => !set(SF),
        0xa => set(PF),
        0xb => !set(PF),
        0xc => set(SF) != set(OF),
        0xd => set(SF) == set(OF),
        0xe => set(ZF) || set(SF) != set(OF),
        0xf => !set(ZF) && set(SF) == set(OF),
        _ => unreachable!(),
    }
}

/// Every combination of the five flags the conditions test.
fn flag_combinations() -> impl Iterator<Item = u64> {
    (0u64..32).map(|bits| {
        [CF, PF, ZF, SF, OF]
            .iter()
            .enumerate()
            .filter(|(index, _)| bits & (1 << index) != 0)
            .fold(0, |flags, (_, flag)| flags | flag)
    })
}

// ---------------------------------------------------------------------------
// Tier 1: tables.

#[test]
fn simple_instructions_run_out_of_line_with_a_jump_back() {
    let cases: &[(&str, &[u8])] = &[
        ("push rbp", &[0x55]),
        ("push r12", &[0x41, 0x54]),
        ("mov rbp,rsp", &[0x48, 0x89, 0xe5]),
        ("sub rsp,0x28", &[0x48, 0x83, 0xec, 0x28]),
        (
            "sub rsp,0x1000",
            &[0x48, 0x81, 0xec, 0x00, 0x10, 0x00, 0x00],
        ),
        ("mov rax,[rdi+0x10]", &[0x48, 0x8b, 0x47, 0x10]),
        ("xor eax,eax", &[0x31, 0xc0]),
        (
            "mov rax,0x1122334455667788",
            &[0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11],
        ),
        ("jmp rax", &[0xff, 0xe0]),
        ("jmp [rax+8]", &[0xff, 0x60, 0x08]),
        ("pause", &[0xf3, 0x90]),
        ("cli", &[0xfa]),
        ("monitor", &[0x0f, 0x01, 0xc8]),
        ("wrmsr", &[0x0f, 0x30]),
        ("leave", &[0xc9]),
        ("lock xadd [rdi],rax", &[0xf0, 0x48, 0x0f, 0xc1, 0x07]),
        (
            "mov gs:[0x28],rax",
            &[0x65, 0x48, 0x89, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00],
        ),
    ];
    for (name, code) in cases {
        let (displaced, slot) = prepared(TEXT, code, SLOT);
        assert!(!displaced.is_emulated(), "{name}");
        assert_eq!(displaced.strategy(), "out-of-line", "{name}");
        assert_eq!(displaced.len(), code.len(), "{name}");
        assert_eq!(displaced.original(), *code, "{name}");
        assert_eq!(displaced.address(), TEXT, "{name}");
        let mut expected = code.to_vec();
        expected.extend(jump_back(SLOT, code.len(), TEXT + code.len() as u64));
        assert_eq!(slot, expected, "{name}");
        assert!(slot.len() <= SLOT_SIZE);

        let mut regs = trapped_at(TEXT, 0x8000, 0);
        let before = regs;
        resume(&displaced, &mut regs, SLOT, &mut FakeMemory::default()).unwrap();
        assert_eq!(regs, TrapRegisters { pc: SLOT, ..before }, "{name}");
    }
}

#[test]
fn trailing_bytes_after_the_instruction_are_ignored() {
    let code = [
        0x55, 0x48, 0x89, 0xe5, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
        0xcc, 0xcc,
    ];
    let (displaced, slot) = prepared(TEXT, &code, SLOT);
    assert_eq!(displaced.original(), &[0x55]);
    assert_eq!(slot[0], 0x55);
}

#[test]
fn nops_and_endbr_are_skipped() {
    let cases: &[&[u8]] = &[
        &[0x90],
        &[0x66, 0x90],
        &[0x0f, 0x1f, 0x00],
        &[0x0f, 0x1f, 0x40, 0x00],
        &[0x0f, 0x1f, 0x44, 0x00, 0x00],
        &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
        &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
        &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[0x0f, 0x1f, 0x05, 0x78, 0x56, 0x34, 0x12], // nop [rip+0x12345678]
        &[0xf3, 0x0f, 0x1e, 0xfa],                   // endbr64
        &[0xf3, 0x0f, 0x1e, 0xfb],                   // endbr32
    ];
    for code in cases {
        let (displaced, slot) = prepared(TEXT, code, SLOT);
        assert_eq!(displaced.strategy(), "skip", "{code:02x?}");
        assert!(displaced.is_emulated());
        assert!(slot.is_empty());
        let mut regs = trapped_at(TEXT, 0x8000, ZF);
        let before = regs;
        resume(&displaced, &mut regs, SLOT, &mut FakeMemory::default()).unwrap();
        assert_eq!(
            regs,
            TrapRegisters {
                pc: TEXT + code.len() as u64,
                ..before
            }
        );
    }
}

/// Checks that `slot` is `code` with the 4 bytes at `displacement_offset` replaced
/// so that they reach `target` from the slot, then the jump back.
fn assert_relocated(code: &[u8], displacement_offset: usize, target: u64) {
    let (displaced, slot) = prepared(TEXT, code, SLOT);
    assert!(!displaced.is_emulated());
    let len = code.len();
    let original_displacement = i32::from_le_bytes(
        code[displacement_offset..displacement_offset + 4]
            .try_into()
            .unwrap(),
    );
    assert_eq!(
        (TEXT + len as u64).wrapping_add(original_displacement as i64 as u64),
        target,
        "the test's own arithmetic"
    );
    let new_displacement = i32::from_le_bytes(
        slot[displacement_offset..displacement_offset + 4]
            .try_into()
            .unwrap(),
    );
    assert_eq!(
        (SLOT + len as u64).wrapping_add(new_displacement as i64 as u64),
        target
    );
    assert_eq!(
        new_displacement as i64,
        target as i64 - (SLOT + len as u64) as i64
    );
    let mut expected = code.to_vec();
    expected[displacement_offset..displacement_offset + 4].copy_from_slice(&le32(new_displacement));
    expected.extend(jump_back(SLOT, len, TEXT + len as u64));
    assert_eq!(slot, expected, "{code:02x?}");
}

#[test]
fn rip_relative_operands_keep_their_target() {
    // mov rax,[rip+0x1234]: 48 8b 05 disp32; target = next + 0x1234.
    assert_relocated(&with_i32(&[0x48, 0x8b, 0x05], 0x1234), 3, TEXT + 7 + 0x1234);
    // Backwards: mov rax,[rip-0x200000].
    assert_relocated(
        &with_i32(&[0x48, 0x8b, 0x05], -0x20_0000),
        3,
        TEXT + 7 - 0x20_0000,
    );
    // lea rdi,[rip+0x100]: 48 8d 3d disp32.
    assert_relocated(&with_i32(&[0x48, 0x8d, 0x3d], 0x100), 3, TEXT + 7 + 0x100);
    // mov [rip+0x40],ebx: 89 1d disp32.
    assert_relocated(&with_i32(&[0x89, 0x1d], 0x40), 2, TEXT + 6 + 0x40);
    // jmp [rip+0x80] (indirect jumps run out of line): ff 25 disp32.
    assert_relocated(&with_i32(&[0xff, 0x25], 0x80), 2, TEXT + 6 + 0x80);
    // movzx eax,byte gs:[rip+0x10]: 65 0f b6 05 disp32 (segment + RIP-relative).
    assert_relocated(
        &with_i32(&[0x65, 0x0f, 0xb6, 0x05], 0x10),
        4,
        TEXT + 8 + 0x10,
    );
    // movdqa xmm0,[rip+0x30]: 66 0f 6f 05 disp32.
    assert_relocated(
        &with_i32(&[0x66, 0x0f, 0x6f, 0x05], 0x30),
        4,
        TEXT + 8 + 0x30,
    );
    // vmovdqu ymm1,[rip+0x30]: c5 fe 6f 0d disp32 (VEX).
    assert_relocated(
        &with_i32(&[0xc5, 0xfe, 0x6f, 0x0d], 0x30),
        4,
        TEXT + 8 + 0x30,
    );
}

#[test]
fn rip_relative_displacement_followed_by_an_immediate() {
    // cmp dword [rip+0x200],0x11223344: 81 3d disp32 imm32; the immediate follows.
    let mut code = with_i32(&[0x81, 0x3d], 0x200);
    code.extend_from_slice(&[0x44, 0x33, 0x22, 0x11]);
    assert_relocated(&code, 2, TEXT + 10 + 0x200);
    let (_, slot) = prepared(TEXT, &code, SLOT);
    assert_eq!(
        &slot[6..10],
        &[0x44, 0x33, 0x22, 0x11],
        "immediate unchanged"
    );

    // cmp byte [rip+0x10],5: 80 3d disp32 ib.
    let mut code = with_i32(&[0x80, 0x3d], 0x10);
    code.push(0x05);
    assert_relocated(&code, 2, TEXT + 7 + 0x10);

    // add qword [rip-0x80],1: 48 83 05 disp32 ib.
    let mut code = with_i32(&[0x48, 0x83, 0x05], -0x80);
    code.push(0x01);
    assert_relocated(&code, 3, TEXT + 8 - 0x80);

    // imul rax,[rip+0x40],0x12345: 48 69 05 disp32 imm32.
    let mut code = with_i32(&[0x48, 0x69, 0x05], 0x40);
    code.extend_from_slice(&le32(0x12345));
    assert_relocated(&code, 3, TEXT + 11 + 0x40);

    // mov word [rip+0x8],0x1234: 66 c7 05 disp32 imm16.
    let mut code = with_i32(&[0x66, 0xc7, 0x05], 0x8);
    code.extend_from_slice(&[0x34, 0x12]);
    assert_relocated(&code, 3, TEXT + 9 + 0x8);
}

#[test]
fn out_of_reach_operands_are_refused() {
    let code = with_i32(&[0x48, 0x8b, 0x05], 0x1234);
    // A slot 4 GiB below the text cannot reach text + 0x123b with 32 bits.
    let far_slot = TEXT - (4 << 30);
    assert_eq!(
        prepare(TEXT, &code, far_slot),
        Err(PrepareError::OutOfReach)
    );
    // The exact edge: the new displacement is i32::MAX, then one more.
    let target = TEXT + 7 + 0x1234;
    let edge_slot = target - 7 - i32::MAX as u64;
    assert!(prepare(TEXT, &code, edge_slot).is_ok());
    assert_eq!(
        prepare(TEXT, &code, edge_slot - 1),
        Err(PrepareError::OutOfReach)
    );
}

#[test]
fn far_slots_jump_back_through_an_absolute_address() {
    let code = [0x48, 0x89, 0xe5];
    let far_slot = TEXT - (8 << 30);
    let (_, slot) = prepared(TEXT, &code, far_slot);
    let mut expected = code.to_vec();
    expected.extend_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
    expected.extend_from_slice(&(TEXT + 3).to_le_bytes());
    assert_eq!(slot, expected);
    // The longest slot: a 15-byte instruction and the 14-byte jump back.
    // lock add qword [rax+rbx*1+0x11223344],0x55667788 with redundant prefixes.
    let code = [
        0x2e, 0x2e, 0xf0, 0x48, 0x81, 0x84, 0x18, 0x44, 0x33, 0x22, 0x11, 0x88, 0x77, 0x66, 0x55,
    ];
    assert_eq!(code.len(), 15);
    let (displaced, slot) = prepared(TEXT, &code, far_slot);
    assert_eq!(displaced.len(), 15);
    assert_eq!(slot.len(), 29);
    assert!(slot.len() <= SLOT_SIZE);
}

#[test]
fn relative_calls_are_emulated() {
    // call +0x1000: e8 rel32.
    let code = with_i32(&[0xe8], 0x1000);
    let (displaced, slot) = prepared(TEXT, &code, SLOT);
    assert_eq!(displaced.strategy(), "call");
    assert!(slot.is_empty());
    let mut regs = trapped_at(TEXT, 0x8000, 0);
    let before = regs;
    let mut stack = FakeMemory::default();
    resume(&displaced, &mut regs, SLOT, &mut stack).unwrap();
    assert_eq!(regs.pc, TEXT + 5 + 0x1000);
    assert_eq!(regs.regs[RSP], 0x8000 - 8);
    assert_eq!(stack.cells.get(&(0x8000 - 8)), Some(&(TEXT + 5)));
    let mut untouched = regs;
    untouched.pc = before.pc;
    untouched.regs[RSP] = before.regs[RSP];
    assert_eq!(untouched, before, "nothing else changes");

    // A call backwards.
    let code = with_i32(&[0xe8], -0x40);
    let (displaced, _) = prepared(TEXT, &code, SLOT);
    let mut regs = trapped_at(TEXT, 0x8000, 0);
    resume(&displaced, &mut regs, SLOT, &mut FakeMemory::default()).unwrap();
    assert_eq!(regs.pc, TEXT + 5 - 0x40);

    // A push on a bad stack faults and leaves the registers alone.
    let mut stack = FakeMemory {
        bad: Some(0x7000..0x9000),
        ..Default::default()
    };
    let mut regs = trapped_at(TEXT, 0x8000, 0);
    let before = regs;
    assert_eq!(
        resume(&displaced, &mut regs, SLOT, &mut stack),
        Err(Fault {
            address: 0x8000 - 8
        })
    );
    assert_eq!(regs, before);
}

#[test]
fn indirect_calls_are_emulated() {
    let target = 0xffff_ffff_8123_4560;
    let rsp = 0x8000;
    // (name, bytes, setup of registers and memory)
    type Setup = fn(&mut TrapRegisters, &mut FakeMemory, u64);
    let cases: &[(&str, Vec<u8>, Setup)] = &[
        ("call rax", vec![0xff, 0xd0], |regs, _, target| {
            regs.regs[RAX] = target
        }),
        ("call r11", vec![0x41, 0xff, 0xd3], |regs, _, target| {
            regs.regs[R11] = target
        }),
        (
            "call [rax+8]",
            vec![0xff, 0x50, 0x08],
            |regs, memory, target| {
                regs.regs[RAX] = 0x5000;
                memory.cells.insert(0x5008, target);
            },
        ),
        (
            "call [rsp+8]",
            vec![0xff, 0x54, 0x24, 0x08],
            |_, memory, target| {
                // The operand is read with the stack pointer before the push.
                memory.cells.insert(0x8008, target);
            },
        ),
        (
            "call [rax+rbx*8+0x10]",
            vec![0xff, 0x54, 0xd8, 0x10],
            |regs, memory, target| {
                regs.regs[RAX] = 0x5000;
                regs.regs[RBX] = 3;
                memory.cells.insert(0x5000 + 24 + 0x10, target);
            },
        ),
        (
            "call [rbx*4-0x10]",
            vec![0xff, 0x14, 0x9d, 0xf0, 0xff, 0xff, 0xff],
            |regs, memory, target| {
                regs.regs[RBX] = 0x1000;
                memory.cells.insert(0x4000 - 0x10, target);
            },
        ),
        (
            "call [rip+0x100]",
            with_i32(&[0xff, 0x15], 0x100),
            |_, memory, target| {
                memory.cells.insert(TEXT + 6 + 0x100, target);
            },
        ),
        (
            "notrack call rax",
            vec![0x3e, 0xff, 0xd0],
            |regs, _, target| regs.regs[RAX] = target,
        ),
    ];
    for (name, code, setup) in cases {
        let (displaced, slot) = prepared(TEXT, code, SLOT);
        assert_eq!(displaced.strategy(), "call-indirect", "{name}");
        assert!(slot.is_empty());
        let mut regs = trapped_at(TEXT, rsp, 0);
        let mut memory = FakeMemory::default();
        setup(&mut regs, &mut memory, target);
        resume(&displaced, &mut regs, SLOT, &mut memory).unwrap();
        assert_eq!(regs.pc, target, "{name}");
        assert_eq!(regs.regs[RSP], rsp - 8, "{name}");
        assert_eq!(
            memory.cells.get(&(rsp - 8)),
            Some(&(TEXT + code.len() as u64)),
            "{name}"
        );
    }
    // A bad function pointer faults before anything changes.
    let (displaced, _) = prepared(TEXT, &[0xff, 0x50, 0x08], SLOT);
    let mut regs = trapped_at(TEXT, rsp, 0);
    regs.regs[RAX] = 0x5000;
    let before = regs;
    let mut memory = FakeMemory {
        bad: Some(0x5000..0x6000),
        ..Default::default()
    };
    assert_eq!(
        resume(&displaced, &mut regs, SLOT, &mut memory),
        Err(Fault { address: 0x5008 })
    );
    assert_eq!(regs, before);
    assert!(memory.cells.is_empty());
}

#[test]
fn jumps_are_emulated() {
    let cases: &[(Vec<u8>, u64)] = &[
        (vec![0xeb, 0x10], TEXT + 2 + 0x10),
        (vec![0xeb, 0xfe], TEXT), // jmp $
        (vec![0xeb, 0x80], TEXT + 2 - 0x80),
        (with_i32(&[0xe9], 0x12345), TEXT + 5 + 0x12345),
        (with_i32(&[0xe9], -0x12345), TEXT + 5 - 0x12345),
    ];
    for (code, target) in cases {
        let (displaced, slot) = prepared(TEXT, code, SLOT);
        assert_eq!(displaced.strategy(), "jump");
        assert!(slot.is_empty());
        let mut regs = trapped_at(TEXT, 0x8000, 0);
        let before = regs;
        resume(&displaced, &mut regs, SLOT, &mut FakeMemory::default()).unwrap();
        assert_eq!(
            regs,
            TrapRegisters {
                pc: *target,
                ..before
            },
            "{code:02x?}"
        );
    }
}

#[test]
fn conditional_jumps_follow_every_condition_on_every_flag_combination() {
    for condition in 0u8..16 {
        let short = vec![0x70 | condition, 0x20];
        let near = with_i32(&[0x0f, 0x80 | condition], -0x300);
        for (code, target) in [(short, TEXT + 2 + 0x20), (near, TEXT + 6 - 0x300)] {
            let (displaced, slot) = prepared(TEXT, &code, SLOT);
            assert_eq!(displaced.strategy(), "jcc");
            assert!(slot.is_empty());
            for flags in flag_combinations() {
                let mut regs = trapped_at(TEXT, 0x8000, flags);
                let before = regs;
                resume(&displaced, &mut regs, SLOT, &mut FakeMemory::default()).unwrap();
                let expected = if reference_condition(condition, flags) {
                    target
                } else {
                    TEXT + code.len() as u64
                };
                assert_eq!(
                    regs,
                    TrapRegisters {
                        pc: expected,
                        ..before
                    },
                    "{code:02x?} flags {flags:#x}"
                );
            }
        }
    }
}

#[test]
fn returns_are_emulated() {
    let return_address = 0xffff_ffff_8200_1234;
    for (code, release) in [
        (vec![0xc3], 0u64),
        (vec![0xf3, 0xc3], 0),
        (vec![0xc2, 0x10, 0x00], 0x10),
    ] {
        let (displaced, slot) = prepared(TEXT, &code, SLOT);
        assert_eq!(displaced.strategy(), "ret");
        assert!(slot.is_empty());
        let mut memory = FakeMemory::default();
        memory.cells.insert(0x8000, return_address);
        let mut regs = trapped_at(TEXT, 0x8000, 0);
        let before = regs;
        resume(&displaced, &mut regs, SLOT, &mut memory).unwrap();
        let mut expected = before;
        expected.pc = return_address;
        expected.regs[RSP] = 0x8000 + 8 + release;
        assert_eq!(regs, expected, "{code:02x?}");
    }
    // A bad stack faults and changes nothing.
    let (displaced, _) = prepared(TEXT, &[0xc3], SLOT);
    let mut regs = trapped_at(TEXT, 0x8000, 0);
    let before = regs;
    let mut memory = FakeMemory {
        bad: Some(0x8000..0x8001),
        ..Default::default()
    };
    assert_eq!(
        resume(&displaced, &mut regs, SLOT, &mut memory),
        Err(Fault { address: 0x8000 })
    );
    assert_eq!(regs, before);
}

#[test]
fn counting_branches_are_emulated() {
    // (code, rcx before, zf, taken, rcx after)
    let loop_ = [0xe2, 0x10];
    let loope = [0xe1, 0x10];
    let loopne = [0xe0, 0x10];
    let jrcxz = [0xe3, 0x10];
    let jecxz = [0x67, 0xe3, 0x10];
    let cases: &[(&[u8], u64, bool, bool, u64)] = &[
        (&loop_, 5, false, true, 4),
        (&loop_, 1, false, false, 0),
        (&loop_, 0, false, true, u64::MAX),
        (&loope, 5, true, true, 4),
        (&loope, 5, false, false, 4),
        (&loope, 1, true, false, 0),
        (&loopne, 5, false, true, 4),
        (&loopne, 5, true, false, 4),
        (&jrcxz, 0, false, true, 0),
        (&jrcxz, 1 << 32, false, false, 1 << 32),
        (&jecxz, 1 << 32, false, true, 1 << 32),
        (&jecxz, 1, false, false, 1),
    ];
    for &(code, rcx, zf, taken, rcx_after) in cases {
        let (displaced, slot) = prepared(TEXT, code, SLOT);
        assert_eq!(displaced.strategy(), "loop");
        assert!(slot.is_empty());
        let mut regs = trapped_at(TEXT, 0x8000, if zf { ZF } else { 0 });
        regs.regs[RCX] = rcx;
        let before = regs;
        resume(&displaced, &mut regs, SLOT, &mut FakeMemory::default()).unwrap();
        let next = TEXT + code.len() as u64;
        let mut expected = before;
        expected.pc = if taken { next + 0x10 } else { next };
        expected.regs[RCX] = rcx_after;
        assert_eq!(regs, expected, "{code:02x?} rcx {rcx:#x} zf {zf}");
    }
    // loop on ECX (address-size prefix) is refused: its effect on RCX's upper half
    // is not worth guessing.
    assert_eq!(
        prepare(TEXT, &[0x67, 0xe2, 0x10], SLOT),
        Err(PrepareError::Unrelocatable)
    );
}

#[test]
fn dangerous_instructions_are_refused() {
    let cases: &[(&str, &[u8])] = &[
        ("int3", &[0xcc]),
        ("int 0x80", &[0xcd, 0x80]),
        ("int1", &[0xf1]),
        ("ud2", &[0x0f, 0x0b]),
        ("ud1", &[0x0f, 0xb9, 0xc0]),
        ("ud0", &[0x0f, 0xff, 0xc0]),
        ("iretq", &[0x48, 0xcf]),
        ("iretd", &[0xcf]),
        ("sysretq", &[0x48, 0x0f, 0x07]),
        ("syscall", &[0x0f, 0x05]),
        ("sysenter", &[0x0f, 0x34]),
        ("sysexitq", &[0x48, 0x0f, 0x35]),
        ("swapgs", &[0x0f, 0x01, 0xf8]),
        ("hlt", &[0xf4]),
        ("sti", &[0xfb]),
        ("mwait", &[0x0f, 0x01, 0xc9]),
        ("mov ss,ax", &[0x8e, 0xd0]),
        ("mov cr3,rax", &[0x0f, 0x22, 0xd8]),
        ("mov rax,cr0", &[0x0f, 0x20, 0xc0]),
        ("mov dr7,rax", &[0x0f, 0x23, 0xf8]),
        ("lmsw ax", &[0x0f, 0x01, 0xf0]),
        ("lgdt [rax]", &[0x0f, 0x01, 0x10]),
        ("lidt [rax]", &[0x0f, 0x01, 0x18]),
        ("lldt ax", &[0x0f, 0x00, 0xd0]),
        ("ltr ax", &[0x0f, 0x00, 0xd8]),
        ("xbegin", &[0xc7, 0xf8, 0x00, 0x01, 0x00, 0x00]),
        ("jmp far [rax]", &[0x48, 0xff, 0x28]),
        ("call far [rax]", &[0xff, 0x18]),
        ("retf", &[0xcb]),
        ("retf 8", &[0xca, 0x08, 0x00]),
        ("o16 ret", &[0x66, 0xc3]),
        ("o16 jmp rel8", &[0x66, 0xeb, 0x10]),
        ("o16 je rel8", &[0x66, 0x74, 0x10]),
        ("o16 call rel32", &[0x66, 0xe8, 0, 0, 0, 0]),
        ("o16 call rax", &[0x66, 0xff, 0xd0]),
        ("call fs:[rax]", &[0x64, 0xff, 0x10]),
        ("call gs:[rip+0]", &[0x65, 0xff, 0x15, 0, 0, 0, 0]),
        ("call [eax]", &[0x67, 0xff, 0x10]),
        ("mov eax,[eip+0]", &[0x67, 0x8b, 0x05, 0, 0, 0, 0]),
        ("vmcall", &[0x0f, 0x01, 0xc1]),
        ("vmlaunch", &[0x0f, 0x01, 0xc2]),
        ("vmrun", &[0x0f, 0x01, 0xd8]),
        ("rsm", &[0x0f, 0xaa]),
    ];
    for (name, code) in cases {
        assert_eq!(
            prepare(TEXT, code, SLOT),
            Err(PrepareError::Unrelocatable),
            "{name}"
        );
    }
}

#[test]
fn garbage_and_truncated_code_is_undecodable() {
    let cases: &[(&str, &[u8])] = &[
        ("empty", &[]),
        ("push es (invalid in 64-bit)", &[0x06]),
        ("daa (invalid in 64-bit)", &[0x27]),
        ("salc", &[0xd6]),
        ("lone REX", &[0x48]),
        ("lone prefixes", &[0x66, 0x66, 0xf0]),
        (
            "truncated mov rax,[rip+disp]",
            &[0x48, 0x8b, 0x05, 0x34, 0x12],
        ),
        ("truncated call", &[0xe8, 0x00, 0x00]),
        ("truncated jcc rel32", &[0x0f, 0x84, 0x00]),
        ("truncated VEX", &[0xc4]),
        ("lock on a register move", &[0xf0, 0x48, 0x89, 0xc0]),
        ("16 bytes of prefixes", &[0x66; 16]),
    ];
    for (name, code) in cases {
        assert_eq!(
            prepare(TEXT, code, SLOT),
            Err(PrepareError::Undecodable),
            "{name}"
        );
    }
}

#[test]
fn errors_display_a_sentence() {
    for error in [
        PrepareError::Undecodable,
        PrepareError::Unrelocatable,
        PrepareError::OutOfReach,
    ] {
        let text = error.to_string();
        assert!(!text.is_empty() && text.is_ascii(), "{text}");
    }
}

#[test]
fn accessors_read_the_trap_frame() {
    let mut regs = trapped_at(TEXT, 0x7ff0, 0);
    regs.regs[RBP] = 0x7ff8;
    regs.regs[RAX] = 42;
    assert_eq!(breakpoint_address(&regs), TEXT);
    assert_eq!(arch::stack_pointer(&regs), 0x7ff0);
    assert_eq!(arch::frame_pointer(&regs), 0x7ff8);
    assert_eq!(arch::return_value(&regs), 42);
    assert_eq!(arch::BREAKPOINT, [0xcc]);
    assert_eq!(SLOT_SIZE % 16, 0);
}

#[test]
fn boundaries_of_a_hand_assembled_function() {
    // push rbp; mov rbp,rsp; sub rsp,0x28; mov rax,[rip+0x10]; leave; ret
    let mut code = vec![0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x28];
    code.extend(with_i32(&[0x48, 0x8b, 0x05], 0x10));
    code.extend([0xc9, 0xc3]);
    let starts = [0usize, 1, 4, 8, 15, 16];
    for offset in 0..code.len() + 3 {
        assert_eq!(
            is_instruction_boundary(TEXT, &code, TEXT + offset as u64),
            starts.contains(&offset),
            "offset {offset}"
        );
    }
    assert!(!is_instruction_boundary(TEXT, &code, TEXT - 1));
    assert!(!is_instruction_boundary(TEXT, &[], TEXT));
    // Past undecodable bytes nothing is a boundary any more.
    let code = [0x55, 0x06, 0x55, 0xc3];
    assert!(is_instruction_boundary(TEXT, &code, TEXT + 1));
    assert!(!is_instruction_boundary(TEXT, &code, TEXT + 2));
    // Near the top of the address space offsets do not wrap.
    let top = u64::MAX - 1;
    assert!(is_instruction_boundary(top, &[0x90, 0x90], top + 1));
    assert!(!is_instruction_boundary(top, &[0x90, 0x90], 0));
}

// ---------------------------------------------------------------------------
// Tier 2: differential execution on the host.

/// Registers as the harness loads and stores them: DWARF order, then RFLAGS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Machine {
    regs: [u64; 16],
    flags: u64,
}

/// Words the harness assembly shares with Rust (offsets fixed in the assembly).
#[repr(C)]
struct HarnessWords {
    /// 0: the host stack pointer while a test instruction runs.
    host_rsp: u64,
    /// 8: the `Machine` being loaded and stored.
    machine: u64,
    /// 16: where to jump once the registers are loaded.
    entry: u64,
    /// 24: the test's stack pointer at the exit, while RSP points elsewhere.
    exit_rsp: u64,
    /// 32: which exit stub was reached (1 next, 2 target).
    exit: u64,
}

/// Written only by the harness assembly, with `HARNESS_LOCK` held.
static mut HARNESS: HarnessWords = HarnessWords {
    host_rsp: 0,
    machine: 0,
    entry: 0,
    exit_rsp: 0,
    exit: 0,
};
/// Serialises the tests that use `HARNESS` (the test runner is multi-threaded).
static HARNESS_LOCK: Mutex<()> = Mutex::new(());

// The harness. `probeport_test_enter(machine, entry)` saves the callee-saved
// registers and the stack pointer, loads RFLAGS and all sixteen registers from
// `machine` (RSP included: the test instruction runs on a stack inside the lab) and
// jumps to `entry`. The exit stubs (`jmp [rip+0]` to `..._exit_next` or
// `..._exit_target`) record which one was reached with a flag-preserving `mov`,
// store every register into `machine` with `mov`s only, then capture RFLAGS on the
// host stack, clear DF for Rust and return.
std::arch::global_asm!(
    ".pushsection .text.probeport_test_harness,\"ax\",@progbits",
    ".p2align 4",
    ".globl probeport_test_enter",
    "probeport_test_enter:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rip + {h}], rsp",
    "mov [rip + {h} + 8], rdi",
    "mov [rip + {h} + 16], rsi",
    "push qword ptr [rdi + 128]",
    "popfq",
    "mov rax, [rdi + 0]",
    "mov rdx, [rdi + 8]",
    "mov rcx, [rdi + 16]",
    "mov rbx, [rdi + 24]",
    "mov rsi, [rdi + 32]",
    "mov rbp, [rdi + 48]",
    "mov rsp, [rdi + 56]",
    "mov r8, [rdi + 64]",
    "mov r9, [rdi + 72]",
    "mov r10, [rdi + 80]",
    "mov r11, [rdi + 88]",
    "mov r12, [rdi + 96]",
    "mov r13, [rdi + 104]",
    "mov r14, [rdi + 112]",
    "mov r15, [rdi + 120]",
    "mov rdi, [rdi + 40]",
    "jmp qword ptr [rip + {h} + 16]",
    ".globl probeport_test_exit_next",
    "probeport_test_exit_next:",
    "mov qword ptr [rip + {h} + 32], 1",
    "jmp probeport_test_exit_common",
    ".globl probeport_test_exit_target",
    "probeport_test_exit_target:",
    "mov qword ptr [rip + {h} + 32], 2",
    "probeport_test_exit_common:",
    "mov [rip + {h} + 24], rsp",
    "mov rsp, [rip + {h} + 8]",
    "mov [rsp + 0], rax",
    "mov [rsp + 8], rdx",
    "mov [rsp + 16], rcx",
    "mov [rsp + 24], rbx",
    "mov [rsp + 32], rsi",
    "mov [rsp + 40], rdi",
    "mov [rsp + 48], rbp",
    "mov [rsp + 64], r8",
    "mov [rsp + 72], r9",
    "mov [rsp + 80], r10",
    "mov [rsp + 88], r11",
    "mov [rsp + 96], r12",
    "mov [rsp + 104], r13",
    "mov [rsp + 112], r14",
    "mov [rsp + 120], r15",
    "mov rax, [rip + {h} + 24]",
    "mov [rsp + 56], rax",
    "mov rdi, rsp",
    "mov rsp, [rip + {h}]",
    "pushfq",
    "pop qword ptr [rdi + 128]",
    "cld",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
    ".popsection",
    h = sym HARNESS,
);

unsafe extern "sysv64" {
    /// Runs from `entry` with the registers of `machine` until an exit stub, then
    /// stores the registers back into `machine`.
    fn probeport_test_enter(machine: *mut Machine, entry: u64);
}

unsafe extern "C" {
    /// Exit stubs (code, not data: only their addresses are used).
    static probeport_test_exit_next: u8;
    static probeport_test_exit_target: u8;
}

/// Which exit stub an execution reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    Next = 1,
    Target = 2,
}

/// Lab layout (offsets into the mapping).
const LAB_SIZE: usize = 0x8000;
const ORIGINAL: usize = 0x100;
const LAB_SLOT: usize = 0x800;
const DATA: usize = 0x1000;
const DATA_END: usize = 0x2000;
const STACK_TOP: usize = 0x7000;

/// A private read-write-execute mapping plus the harness lock.
struct Lab {
    base: *mut u8,
    size: usize,
    _guard: MutexGuard<'static, ()>,
}

impl Lab {
    fn new() -> Self {
        Self::at(std::ptr::null_mut(), LAB_SIZE).expect("mmap")
    }

    /// Maps the lab at exactly `hint`, if the kernel agrees (null: anywhere).
    fn at(hint: *mut u8, size: usize) -> Option<Self> {
        let guard = HARNESS_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fixed = if hint.is_null() {
            0
        } else {
            libc::MAP_FIXED_NOREPLACE
        };
        // SAFETY: an anonymous private mapping; with MAP_FIXED_NOREPLACE the kernel
        // refuses rather than replacing an existing mapping.
        let base = unsafe {
            libc::mmap(
                hint.cast(),
                size,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | fixed,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED || (!hint.is_null() && base.cast() != hint) {
            return None;
        }
        let mut lab = Self {
            base: base.cast(),
            size,
            _guard: guard,
        };
        lab.reset();
        Some(lab)
    }

    fn address(&self, offset: usize) -> u64 {
        self.base as u64 + offset as u64
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `size` bytes, readable and writable, and owned by
        // `self` until drop; the borrow of `self` keeps it exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.size) }
    }

    /// Code area full of `int3`, data and stack full of a recognisable pattern.
    fn reset(&mut self) {
        let bytes = self.bytes();
        let code_end = DATA.min(bytes.len());
        bytes[..code_end].fill(0xcc);
        for (index, byte) in bytes.iter_mut().enumerate().skip(DATA) {
            *byte = (index as u8).wrapping_mul(0x9d).wrapping_add(0x5b);
        }
    }

    fn write(&mut self, offset: usize, code: &[u8]) {
        self.bytes()[offset..offset + code.len()].copy_from_slice(code);
    }

    fn write_u64(&mut self, offset: usize, value: u64) {
        self.write(offset, &value.to_le_bytes());
    }

    /// `jmp [rip+0]` to the harness exit stub `exit`.
    fn write_exit(&mut self, offset: usize, exit: Exit) {
        let stub = match exit {
            Exit::Next => &raw const probeport_test_exit_next,
            Exit::Target => &raw const probeport_test_exit_target,
        } as u64;
        let mut code = vec![0xff, 0x25, 0, 0, 0, 0];
        code.extend_from_slice(&stub.to_le_bytes());
        self.write(offset, &code);
    }

    /// Data and stack, for comparing memory effects.
    fn memory(&mut self) -> Vec<u8> {
        self.bytes()[DATA..].to_vec()
    }

    /// Runs from `entry` with `machine`'s registers until an exit stub.
    fn run(&mut self, entry: u64, machine: &Machine) -> (Machine, Exit) {
        let mut machine = *machine;
        machine.flags = (machine.flags & ARITHMETIC_FLAGS) | RESERVED_FLAG;
        let rsp = machine.regs[RSP];
        assert!(
            (self.address(DATA_END)..=self.address(self.size - 8)).contains(&rsp),
            "the test stack lives in the lab"
        );
        // SAFETY: `HARNESS` is only touched with `HARNESS_LOCK` held, which `self`
        // holds. The harness preserves the callee-saved registers, the host stack
        // and DF; the code it jumps to is a test instruction in the lab followed by
        // an exit stub (or a prepared slot jumping back to one), and the machine's
        // stack points into the lab.
        let exit = unsafe {
            (&raw mut HARNESS).cast::<u64>().add(4).write(0);
            probeport_test_enter(&mut machine, entry);
            (&raw const HARNESS).cast::<u64>().add(4).read()
        };
        let exit = match exit {
            1 => Exit::Next,
            2 => Exit::Target,
            other => panic!("unknown exit {other}"),
        };
        (machine, exit)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this lab created; no borrow of it
        // outlives `self`.
        unsafe {
            libc::munmap(self.base.cast(), self.size);
        }
    }
}

/// The lab's memory as the emulation's stack.
struct LabMemory<'lab>(&'lab mut Lab);

impl StackAccess for LabMemory<'_> {
    fn read_u64(&mut self, address: u64) -> Result<u64, Fault> {
        let offset = address.wrapping_sub(self.0.address(0)) as usize;
        let bytes = self.0.bytes();
        let cell = bytes
            .get(offset..offset.wrapping_add(8))
            .ok_or(Fault { address })?;
        Ok(u64::from_le_bytes(cell.try_into().unwrap()))
    }

    fn write_u64(&mut self, address: u64, value: u64) -> Result<(), Fault> {
        let offset = address.wrapping_sub(self.0.address(0)) as usize;
        let bytes = self.0.bytes();
        bytes
            .get_mut(offset..offset.wrapping_add(8))
            .ok_or(Fault { address })?
            .copy_from_slice(&value.to_le_bytes());
        Ok(())
    }
}

/// A machine with distinct register values, the stack in the lab, and `flags`.
fn lab_machine(lab: &Lab, flags: u64) -> Machine {
    let mut machine = Machine {
        flags,
        ..Default::default()
    };
    for (number, value) in machine.regs.iter_mut().enumerate() {
        *value = 0x0101_0101_0101_0101u64.wrapping_mul(number as u64 + 1) ^ 0x8000_0000_0000_0000;
    }
    machine.regs[RSP] = lab.address(STACK_TOP);
    machine
}

/// What one execution did.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    machine: Machine,
    exit: Exit,
    memory: Vec<u8>,
}

/// One out-of-line case: the instruction, how to prepare the lab's data and
/// registers, and a check that the instruction did what the test says it does.
struct OutOfLineCase {
    name: &'static str,
    code: Vec<u8>,
    setup: fn(&mut Lab, &mut Machine),
    check: fn(&Lab, &Machine, &Outcome),
}

/// Runs the original bytes at `ORIGINAL` and the prepared slot at `slot_offset`
/// (possibly in another lab), and asserts identical registers, flags and memory.
fn run_out_of_line(case: &OutOfLineCase, flags: u64) {
    let mut lab = Lab::new();
    let address = lab.address(ORIGINAL);
    let len = case.code.len();

    // The CPU runs the original.
    let mut machine = lab_machine(&lab, flags);
    (case.setup)(&mut lab, &mut machine);
    lab.write(ORIGINAL, &case.code);
    lab.write_exit(ORIGINAL + len, Exit::Next);
    let (after, exit) = lab.run(address, &machine);
    let direct = Outcome {
        machine: after,
        exit,
        memory: lab.memory(),
    };
    (case.check)(&lab, &machine, &direct);

    // The probe fires: int3 over the first byte, the slot runs instead.
    lab.reset();
    let mut machine = lab_machine(&lab, flags);
    (case.setup)(&mut lab, &mut machine);
    lab.write(ORIGINAL, &case.code);
    lab.write(ORIGINAL, &arch::BREAKPOINT);
    lab.write_exit(ORIGINAL + len, Exit::Next);
    let slot_address = lab.address(LAB_SLOT);
    let (displaced, slot) = prepare(address, &case.code, slot_address).expect(case.name);
    assert!(!displaced.is_emulated(), "{}", case.name);
    lab.write(LAB_SLOT, slot.bytes());
    let mut trapped = TrapRegisters {
        regs: machine.regs,
        pc: address + 1,
        flags: machine.flags,
    };
    resume(
        &displaced,
        &mut trapped,
        slot_address,
        &mut LabMemory(&mut lab),
    )
    .unwrap();
    assert_eq!(trapped.pc, slot_address);
    assert_eq!(trapped.regs, machine.regs);
    let (after, exit) = lab.run(trapped.pc, &machine);
    let displaced_run = Outcome {
        machine: after,
        exit,
        memory: lab.memory(),
    };
    assert_eq!(direct, displaced_run, "{} with flags {flags:#x}", case.name);
}

/// `code` with a RIP-relative displacement at `at` that reaches lab offset
/// `target` from the instruction at `ORIGINAL`.
fn rip_to(mut code: Vec<u8>, at: usize, target: usize) -> Vec<u8> {
    let next = ORIGINAL + code.len();
    let displacement = target as i32 - next as i32;
    code[at..at + 4].copy_from_slice(&le32(displacement));
    code
}

fn out_of_line_cases() -> Vec<OutOfLineCase> {
    const CELL: usize = DATA + 0x100;
    vec![
        OutOfLineCase {
            name: "mov rax,[rip+X]",
            code: rip_to(vec![0x48, 0x8b, 0x05, 0, 0, 0, 0], 3, CELL),
            setup: |lab, _| lab.write_u64(CELL, 0x1122_3344_5566_7788),
            check: |_, _, outcome| assert_eq!(outcome.machine.regs[RAX], 0x1122_3344_5566_7788),
        },
        OutOfLineCase {
            name: "mov [rip+X],rbx",
            code: rip_to(vec![0x48, 0x89, 0x1d, 0, 0, 0, 0], 3, CELL),
            setup: |_, _| {},
            check: |_, machine, outcome| {
                let cell = CELL - DATA;
                assert_eq!(
                    &outcome.memory[cell..cell + 8],
                    &machine.regs[RBX].to_le_bytes()
                );
            },
        },
        OutOfLineCase {
            name: "lea rcx,[rip+X]",
            code: rip_to(vec![0x48, 0x8d, 0x0d, 0, 0, 0, 0], 3, CELL),
            setup: |_, _| {},
            check: |lab, _, outcome| assert_eq!(outcome.machine.regs[RCX], lab.address(CELL)),
        },
        OutOfLineCase {
            name: "add qword [rip+X],0x7f (immediate after the displacement)",
            code: rip_to(vec![0x48, 0x83, 0x05, 0, 0, 0, 0, 0x7f], 3, CELL),
            setup: |lab, _| lab.write_u64(CELL, u64::MAX - 0x10),
            check: |_, _, outcome| {
                let cell = CELL - DATA;
                let value = u64::from_le_bytes(outcome.memory[cell..cell + 8].try_into().unwrap());
                assert_eq!(value, 0x6e);
                assert_ne!(outcome.machine.flags & CF, 0, "carry out");
            },
        },
        OutOfLineCase {
            name: "cmp dword [rip+X],0x11223344",
            code: rip_to(
                vec![0x81, 0x3d, 0, 0, 0, 0, 0x44, 0x33, 0x22, 0x11],
                2,
                CELL,
            ),
            setup: |lab, _| lab.write_u64(CELL, 0x1122_3344),
            check: |_, _, outcome| assert_ne!(outcome.machine.flags & ZF, 0, "equal"),
        },
        OutOfLineCase {
            name: "imul rax,[rip+X],0x12345",
            code: rip_to(
                vec![0x48, 0x69, 0x05, 0, 0, 0, 0, 0x45, 0x23, 0x01, 0x00],
                3,
                CELL,
            ),
            setup: |lab, _| lab.write_u64(CELL, 3),
            check: |_, _, outcome| assert_eq!(outcome.machine.regs[RAX], 3 * 0x12345),
        },
        OutOfLineCase {
            name: "lock xadd [rip+X],rax",
            code: rip_to(vec![0xf0, 0x48, 0x0f, 0xc1, 0x05, 0, 0, 0, 0], 5, CELL),
            setup: |lab, _| lab.write_u64(CELL, 5),
            check: |_, _, outcome| assert_eq!(outcome.machine.regs[RAX], 5),
        },
        OutOfLineCase {
            name: "sete byte [rip+X]",
            code: rip_to(vec![0x0f, 0x94, 0x05, 0, 0, 0, 0], 3, CELL),
            setup: |_, _| {},
            check: |_, machine, outcome| {
                let expected = u8::from(machine.flags & ZF != 0);
                assert_eq!(outcome.memory[CELL - DATA], expected);
            },
        },
        OutOfLineCase {
            name: "cmove rdx,[rip+X]",
            code: rip_to(vec![0x48, 0x0f, 0x44, 0x15, 0, 0, 0, 0], 4, CELL),
            setup: |lab, _| lab.write_u64(CELL, 0xabcd),
            check: |_, _, _| {},
        },
        OutOfLineCase {
            name: "push qword [rip+X]",
            code: rip_to(vec![0xff, 0x35, 0, 0, 0, 0], 2, CELL),
            setup: |lab, _| lab.write_u64(CELL, 0xfeed_f00d),
            check: |lab, machine, outcome| {
                assert_eq!(outcome.machine.regs[RSP], machine.regs[RSP] - 8);
                let top = (outcome.machine.regs[RSP] - lab.address(DATA)) as usize;
                assert_eq!(&outcome.memory[top..top + 8], &0xfeed_f00du64.to_le_bytes());
            },
        },
        OutOfLineCase {
            name: "pop qword [rip+X]",
            code: rip_to(vec![0x8f, 0x05, 0, 0, 0, 0], 2, CELL),
            setup: |lab, _| lab.write_u64(STACK_TOP, 0x600d_cafe),
            check: |_, _, outcome| {
                let cell = CELL - DATA;
                assert_eq!(
                    &outcome.memory[cell..cell + 8],
                    &0x600d_cafeu64.to_le_bytes()
                );
            },
        },
        OutOfLineCase {
            name: "jmp [rip+X] (indirect jump to the next instruction's exit)",
            code: rip_to(vec![0xff, 0x25, 0, 0, 0, 0], 2, CELL),
            setup: |lab, _| {
                let exit = lab.address(0x600);
                lab.write_u64(CELL, exit);
                lab.write_exit(0x600, Exit::Target);
            },
            check: |_, _, outcome| assert_eq!(outcome.exit, Exit::Target),
        },
        OutOfLineCase {
            name: "push rbp",
            code: vec![0x55],
            setup: |_, _| {},
            check: |_, machine, outcome| {
                assert_eq!(outcome.machine.regs[RSP], machine.regs[RSP] - 8)
            },
        },
        OutOfLineCase {
            name: "pop rbx",
            code: vec![0x5b],
            setup: |lab, _| lab.write_u64(STACK_TOP, 0x0bb0),
            check: |_, _, outcome| assert_eq!(outcome.machine.regs[RBX], 0x0bb0),
        },
        OutOfLineCase {
            name: "mov rbp,rsp",
            code: vec![0x48, 0x89, 0xe5],
            setup: |_, _| {},
            check: |_, machine, outcome| assert_eq!(outcome.machine.regs[RBP], machine.regs[RSP]),
        },
        OutOfLineCase {
            name: "sub rsp,0x28",
            code: vec![0x48, 0x83, 0xec, 0x28],
            setup: |_, _| {},
            check: |_, machine, outcome| {
                assert_eq!(outcome.machine.regs[RSP], machine.regs[RSP] - 0x28)
            },
        },
        OutOfLineCase {
            name: "pushfq",
            code: vec![0x9c],
            setup: |_, _| {},
            check: |_, _, _| {},
        },
        OutOfLineCase {
            name: "xor eax,eax",
            code: vec![0x31, 0xc0],
            setup: |_, _| {},
            check: |_, _, outcome| assert_eq!(outcome.machine.regs[RAX], 0),
        },
        OutOfLineCase {
            name: "mov rax,imm64",
            code: vec![0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11],
            setup: |_, _| {},
            check: |_, _, outcome| assert_eq!(outcome.machine.regs[RAX], 0x1122_3344_5566_7788),
        },
        OutOfLineCase {
            name: "mov r11,[rsp+8]",
            code: vec![0x4c, 0x8b, 0x5c, 0x24, 0x08],
            setup: |lab, _| lab.write_u64(STACK_TOP + 8, 0x1111),
            check: |_, _, outcome| assert_eq!(outcome.machine.regs[R11], 0x1111),
        },
        OutOfLineCase {
            name: "jmp rax (indirect, never reaches the jump back)",
            code: vec![0xff, 0xe0],
            setup: |lab, machine| {
                machine.regs[RAX] = lab.address(0x600);
                lab.write_exit(0x600, Exit::Target);
            },
            check: |_, _, outcome| assert_eq!(outcome.exit, Exit::Target),
        },
    ]
}

#[test]
fn slots_behave_like_the_original_on_the_cpu() {
    for case in out_of_line_cases() {
        for flags in [0, ZF, CF | SF | OF, ARITHMETIC_FLAGS] {
            run_out_of_line(&case, flags);
        }
    }
}

#[test]
fn far_slots_jump_back_on_the_cpu() {
    // A second lab more than 2 GiB away from the first forces `jmp [rip+0]`.
    let code = [0x48, 0x83, 0xec, 0x28]; // sub rsp,0x28
    let mut lab = Lab::new();
    let address = lab.address(ORIGINAL);
    let machine = lab_machine(&lab, 0);
    lab.write(ORIGINAL, &code);
    lab.write_exit(ORIGINAL + code.len(), Exit::Next);
    let (direct, exit) = lab.run(address, &machine);
    assert_eq!(exit, Exit::Next);
    lab.write(ORIGINAL, &arch::BREAKPOINT);

    // Try a few places 3..6 GiB above, then below, the lab.
    let far = (3u64..7)
        .flat_map(|gib| {
            [
                address.wrapping_add(gib << 30),
                address.wrapping_sub(gib << 30),
            ]
        })
        .map(|candidate| candidate & !0xfff)
        .find_map(|candidate| {
            // The lab's guard is held; map the far page without the lock.
            far_page(candidate)
        });
    let Some(far) = far else {
        eprintln!("no free page more than 2 GiB away: far jump back not executed");
        return;
    };
    let slot_address = far.address;
    let (displaced, slot) = prepare(address, &code, slot_address).unwrap();
    assert_eq!(
        &slot.bytes()[code.len()..code.len() + 6],
        &[0xff, 0x25, 0, 0, 0, 0]
    );
    far.write(slot.bytes());
    let mut trapped = TrapRegisters {
        regs: machine.regs,
        pc: address + 1,
        flags: machine.flags,
    };
    resume(
        &displaced,
        &mut trapped,
        slot_address,
        &mut LabMemory(&mut lab),
    )
    .unwrap();
    let (displaced_run, exit) = lab.run(trapped.pc, &machine);
    assert_eq!(exit, Exit::Next);
    assert_eq!(direct, displaced_run);
}

/// One executable page mapped at a fixed address, without the harness lock.
struct FarPage {
    address: u64,
}

fn far_page(address: u64) -> Option<FarPage> {
    // SAFETY: anonymous mapping at a fixed address that the kernel refuses to
    // place over an existing mapping (MAP_FIXED_NOREPLACE).
    let base = unsafe {
        libc::mmap(
            address as *mut libc::c_void,
            4096,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    (base != libc::MAP_FAILED && base as u64 == address).then_some(FarPage { address })
}

impl FarPage {
    fn write(&self, code: &[u8]) {
        assert!(code.len() <= 4096);
        // SAFETY: the page is mapped writable and owned by `self`.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), self.address as *mut u8, code.len()) }
    }
}

impl Drop for FarPage {
    fn drop(&mut self) {
        // SAFETY: unmaps the page this value mapped.
        unsafe {
            libc::munmap(self.address as *mut libc::c_void, 4096);
        }
    }
}

/// Runs an emulated instruction on the CPU and through `resume`, and compares.
/// `target` is the lab offset of the branch target (an exit stub is put there).
fn run_emulated(
    code: &[u8],
    target: Option<usize>,
    flags: u64,
    setup: impl Fn(&mut Lab, &mut Machine),
) {
    let mut lab = Lab::new();
    let address = lab.address(ORIGINAL);
    let next = ORIGINAL + code.len();
    let prepare_lab = |lab: &mut Lab, machine: &mut Machine| {
        lab.write(ORIGINAL, code);
        lab.write_exit(next, Exit::Next);
        if let Some(target) = target {
            lab.write_exit(target, Exit::Target);
        }
        setup(lab, machine);
    };

    let mut machine = lab_machine(&lab, flags);
    prepare_lab(&mut lab, &mut machine);
    let (direct, exit) = lab.run(address, &machine);
    let direct_memory = lab.memory();

    lab.reset();
    let mut machine = lab_machine(&lab, flags);
    prepare_lab(&mut lab, &mut machine);
    let slot_address = lab.address(LAB_SLOT);
    let (displaced, slot) = prepare(address, code, slot_address).unwrap();
    assert!(displaced.is_emulated(), "{code:02x?}");
    assert!(slot.bytes().is_empty());
    let flags = (machine.flags & ARITHMETIC_FLAGS) | RESERVED_FLAG;
    let mut trapped = TrapRegisters {
        regs: machine.regs,
        pc: address + 1,
        flags,
    };
    resume(
        &displaced,
        &mut trapped,
        slot_address,
        &mut LabMemory(&mut lab),
    )
    .unwrap();

    let reached = match exit {
        Exit::Next => lab.address(next),
        Exit::Target => lab.address(target.expect("a target exit")),
    };
    assert_eq!(trapped.pc, reached, "{code:02x?} flags {flags:#x}");
    assert_eq!(trapped.regs, direct.regs, "{code:02x?}");
    assert_eq!(
        trapped.flags,
        direct.flags & (ARITHMETIC_FLAGS | RESERVED_FLAG),
        "flags untouched"
    );
    assert_eq!(lab.memory(), direct_memory, "{code:02x?}");
}

#[test]
fn emulated_branches_match_the_cpu() {
    const TARGET: usize = 0x180;
    let short = |opcode: &[u8]| {
        let mut code = opcode.to_vec();
        code.push((TARGET - ORIGINAL - opcode.len() - 1) as u8);
        code
    };
    let near = |opcode: &[u8]| with_i32(opcode, (TARGET - ORIGINAL - opcode.len() - 4) as i32);
    for condition in 0u8..16 {
        for flags in flag_combinations() {
            run_emulated(&short(&[0x70 | condition]), Some(TARGET), flags, |_, _| {});
            run_emulated(
                &near(&[0x0f, 0x80 | condition]),
                Some(TARGET),
                flags,
                |_, _| {},
            );
        }
    }
    run_emulated(&short(&[0xeb]), Some(TARGET), 0, |_, _| {});
    run_emulated(&near(&[0xe9]), Some(TARGET), 0, |_, _| {});
    // Backwards jump into the code area.
    run_emulated(
        &with_i32(&[0xe9], 0x40 - (ORIGINAL as i32 + 5)),
        Some(0x40),
        0,
        |_, _| {},
    );
    for rcx in [0u64, 1, 2, 1 << 32, (1 << 32) + 1] {
        for flags in [0, ZF] {
            let set_rcx = move |_: &mut Lab, machine: &mut Machine| machine.regs[RCX] = rcx;
            run_emulated(&short(&[0xe2]), Some(TARGET), flags, set_rcx); // loop
            run_emulated(&short(&[0xe1]), Some(TARGET), flags, set_rcx); // loope
            run_emulated(&short(&[0xe0]), Some(TARGET), flags, set_rcx); // loopne
            run_emulated(&short(&[0xe3]), Some(TARGET), flags, set_rcx); // jrcxz
            run_emulated(&short(&[0x67, 0xe3]), Some(TARGET), flags, set_rcx); // jecxz
        }
    }
    // Skipped nops and endbr64.
    run_emulated(&[0x0f, 0x1f, 0x44, 0x00, 0x00], None, 0, |_, _| {});
    run_emulated(&[0xf3, 0x0f, 0x1e, 0xfa], None, 0, |_, _| {});
}

#[test]
fn emulated_calls_and_returns_match_the_cpu() {
    const TARGET: usize = 0x400;
    const CELL: usize = DATA + 0x80;
    // call rel32
    run_emulated(
        &with_i32(&[0xe8], (TARGET - ORIGINAL - 5) as i32),
        Some(TARGET),
        0,
        |_, _| {},
    );
    // call rax
    run_emulated(&[0xff, 0xd0], Some(TARGET), 0, |lab, machine| {
        machine.regs[RAX] = lab.address(TARGET)
    });
    // call [rip+X]
    let code = rip_to(vec![0xff, 0x15, 0, 0, 0, 0], 2, CELL);
    run_emulated(&code, Some(TARGET), 0, |lab, _| {
        lab.write_u64(CELL, lab.address(TARGET))
    });
    // call [rbx+rcx*8+0x10]
    run_emulated(
        &[0xff, 0x54, 0xcb, 0x10],
        Some(TARGET),
        0,
        |lab, machine| {
            machine.regs[RBX] = lab.address(DATA);
            machine.regs[RCX] = 2;
            lab.write_u64(DATA + 0x20, lab.address(TARGET));
        },
    );
    // call [rsp+8]: the operand uses RSP before the push.
    run_emulated(&[0xff, 0x54, 0x24, 0x08], Some(TARGET), 0, |lab, _| {
        lab.write_u64(STACK_TOP + 8, lab.address(TARGET));
    });
    // ret and ret imm16
    run_emulated(&[0xc3], Some(TARGET), 0, |lab, _| {
        lab.write_u64(STACK_TOP, lab.address(TARGET))
    });
    run_emulated(&[0xc2, 0x18, 0x00], Some(TARGET), 0, |lab, _| {
        lab.write_u64(STACK_TOP, lab.address(TARGET));
    });
}

// ---------------------------------------------------------------------------
// Tier 3: real code.

/// A function with loops, branches and calls whose bytes the boundary test reads
/// from this binary.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn probeport_boundary_sample(seed: u64, rounds: u32) -> u64 {
    let mut value = std::hint::black_box(seed);
    for round in 0..rounds {
        value = match value % 5 {
            0 => value.rotate_left(round % 63) ^ 0x9e37_79b9_7f4a_7c15,
            1 => value
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1),
            2 => std::hint::black_box(value / 3 + u64::from(round)),
            3 => value.count_ones() as u64 * 0x1234_5678,
            _ => value.swap_bytes(),
        };
        if value & 0xff == 0x42 {
            break;
        }
    }
    value
}

/// A text symbol: name, address, bytes.
struct Function {
    name: String,
    address: u64,
    code: Vec<u8>,
}

/// The sized text symbols of an ELF file.
fn functions(path: &std::path::Path) -> Vec<Function> {
    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let mut out = Vec::new();
    for symbol in file.symbols() {
        if symbol.kind() != SymbolKind::Text || symbol.size() == 0 {
            continue;
        }
        let Some(index) = symbol.section_index() else {
            continue;
        };
        let Ok(section) = file.section_by_index(index) else {
            continue;
        };
        let Ok(bytes) = section.data() else { continue };
        let start = (symbol.address() - section.address()) as usize;
        let Some(code) = bytes.get(start..start + symbol.size() as usize) else {
            continue;
        };
        out.push(Function {
            name: symbol.name().unwrap_or("?").to_owned(),
            address: symbol.address(),
            code: code.to_vec(),
        });
    }
    out.sort_by_key(|function| function.address);
    out.dedup_by_key(|function| function.address);
    out
}

/// Instruction starts by iced-x86's own linear decode (stops at bad bytes).
fn iced_starts(function: &Function) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, &function.code, function.address, DecoderOptions::NONE);
    let mut starts = Vec::new();
    let mut instruction = Instruction::default();
    while decoder.can_decode() {
        let ip = decoder.ip();
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            break;
        }
        starts.push(ip);
    }
    starts
}

/// Instruction starts by `objdump -d`, or `None` without objdump.
fn objdump_starts(path: &std::path::Path, function: &Function) -> Option<Vec<u64>> {
    let output = std::process::Command::new("objdump")
        .arg("-d")
        .arg("--no-show-raw-insn")
        .arg(format!("--start-address={:#x}", function.address))
        .arg(format!(
            "--stop-address={:#x}",
            function.address + function.code.len() as u64
        ))
        .arg(path)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let starts = text
        .lines()
        .filter_map(|line| {
            let (address, rest) = line.trim_start().split_once(":\t")?;
            (!rest.trim().is_empty() && !rest.contains("(bad)")).then_some(())?;
            u64::from_str_radix(address, 16).ok()
        })
        .collect();
    Some(starts)
}

fn check_boundaries(path: &std::path::Path, function: &Function, with_objdump: bool) {
    let starts = iced_starts(function);
    for offset in 0..function.code.len() as u64 {
        let address = function.address + offset;
        assert_eq!(
            is_instruction_boundary(function.address, &function.code, address),
            starts.contains(&address),
            "{} + {offset:#x}",
            function.name
        );
    }
    if with_objdump {
        if let Some(objdump) = objdump_starts(path, function) {
            // objdump may skip trailing padding differently; compare the common
            // prefix, which must be nearly all of the function.
            let common = starts.len().min(objdump.len());
            assert!(
                common + 2 >= starts.len().max(objdump.len()),
                "{}: {starts:x?} vs {objdump:x?}",
                function.name
            );
            assert_eq!(&starts[..common], &objdump[..common], "{}", function.name);
        } else {
            eprintln!(
                "objdump unavailable: {} checked against iced-x86 only",
                function.name
            );
        }
    }
}

#[test]
fn boundaries_of_a_function_in_this_binary() {
    let path = std::env::current_exe().unwrap();
    let all = functions(&path);
    let sample = all
        .iter()
        .find(|function| function.name == "probeport_boundary_sample")
        .expect("the sample function in the symbol table");
    assert!(sample.code.len() > 32, "a real function");
    check_boundaries(&path, sample, true);
    // And a handful of other functions of the binary, objdump for the first few.
    for (index, function) in all
        .iter()
        .filter(|function| function.code.len() > 16)
        .step_by(97)
        .take(40)
        .enumerate()
    {
        check_boundaries(&path, function, index < 5);
    }
}

/// The demo kernel, if it was built (`cargo build -p demo-kernel --target
/// x86_64-unknown-none --release`).
fn demo_kernel() -> Option<std::path::PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("x86_64-unknown-none/release/demo-kernel");
    path.exists().then_some(path)
}

/// Checks what iced-x86's own control-flow analysis says about an accepted
/// instruction: out-of-line code never transfers control in a way that depends
/// on where it runs, and everything emulated is a branch, call, return or nop.
fn assert_consistent_with_flow_control(instruction: &Instruction, displaced: &Displaced) {
    let flow = instruction.flow_control();
    let ok = match displaced.strategy() {
        "out-of-line" => {
            matches!(flow, FlowControl::Next | FlowControl::IndirectBranch)
                || (flow == FlowControl::XbeginXabortXend
                    && instruction.mnemonic() != Mnemonic::Xbegin)
        }
        "skip" => flow == FlowControl::Next,
        "jump" => flow == FlowControl::UnconditionalBranch,
        "jcc" | "loop" => flow == FlowControl::ConditionalBranch,
        "call" => flow == FlowControl::Call,
        "call-indirect" => flow == FlowControl::IndirectCall,
        "ret" => flow == FlowControl::Return,
        other => panic!("unknown strategy {other}"),
    };
    assert!(
        ok,
        "{instruction:?} ({:?}) run as {}",
        flow,
        displaced.strategy()
    );
}

#[test]
fn every_demo_kernel_function_through_prepare() {
    let Some(path) = demo_kernel() else {
        eprintln!(
            "demo kernel not built: skipped (cargo build -p demo-kernel --target x86_64-unknown-none --release)"
        );
        return;
    };
    let all = functions(&path);
    assert!(!all.is_empty());
    let text_end = all
        .iter()
        .map(|function| function.address + function.code.len() as u64)
        .max()
        .unwrap();
    let slot_address = (text_end + 0xfff) & !0xfff;

    let mut entries: BTreeMap<String, usize> = BTreeMap::new();
    let mut everywhere: BTreeMap<String, usize> = BTreeMap::new();
    let mut refused_examples: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut refused_mnemonics: BTreeMap<String, usize> = BTreeMap::new();
    let outcome = |result: &Result<(Displaced, arch::SlotCode), PrepareError>| match result {
        Ok((displaced, _)) => displaced.strategy().to_owned(),
        Err(error) => format!("refused: {error:?}"),
    };
    for (index, function) in all.iter().enumerate() {
        let window = &function.code[..function.code.len().min(arch::MAX_INSN_LEN)];
        let result = prepare(function.address, window, slot_address);
        *entries.entry(outcome(&result)).or_default() += 1;
        if result.is_err() {
            let mut decoder = Decoder::with_ip(64, window, function.address, DecoderOptions::NONE);
            let instruction = decoder.decode();
            refused_examples
                .entry(outcome(&result))
                .or_default()
                .push(format!("{} ({:?})", function.name, instruction.mnemonic()));
        }

        // Every instruction of every function (all of them, not just 20).
        let mut decoder =
            Decoder::with_ip(64, &function.code, function.address, DecoderOptions::NONE);
        let mut instruction = Instruction::default();
        while decoder.can_decode() {
            let offset = decoder.position();
            decoder.decode_out(&mut instruction);
            if instruction.is_invalid() {
                break;
            }
            let address = function.address + offset as u64;
            assert!(is_instruction_boundary(
                function.address,
                &function.code,
                address
            ));
            let rest = &function.code[offset..];
            let window = &rest[..rest.len().min(arch::MAX_INSN_LEN)];
            let result = prepare(address, window, slot_address);
            *everywhere.entry(outcome(&result)).or_default() += 1;
            match &result {
                Ok((displaced, slot)) => {
                    assert_eq!(displaced.len(), instruction.len());
                    assert_consistent_with_flow_control(&instruction, displaced);
                    assert_slot_decodes_back(
                        address,
                        window,
                        slot_address,
                        displaced,
                        slot.bytes(),
                    );
                }
                Err(PrepareError::Unrelocatable) => {
                    *refused_mnemonics
                        .entry(format!("{:?}", instruction.mnemonic()))
                        .or_default() += 1;
                }
                Err(error) => panic!("{} + {offset:#x}: {error}", function.name),
            }
        }
        if index < 20 {
            check_boundaries(&path, function, true);
        }
    }
    let total: usize = entries.values().sum();
    println!("demo kernel: {total} functions, first instruction:");
    for (what, count) in &entries {
        println!(
            "  {what:<24} {count:>6} ({:.1}%)",
            100.0 * *count as f64 / total as f64
        );
    }
    for (what, examples) in &refused_examples {
        println!("  {what}: {}", examples.join(", "));
    }
    let total: usize = everywhere.values().sum();
    println!("demo kernel: {total} instructions (every boundary of every function):");
    for (what, count) in &everywhere {
        println!(
            "  {what:<24} {count:>6} ({:.1}%)",
            100.0 * *count as f64 / total as f64
        );
    }
    println!("  refused instructions: {refused_mnemonics:?}");
}

/// The slot's first instruction is the original one, with the same operand
/// target, and the jump back that follows goes to the next original instruction.
fn assert_slot_decodes_back(
    address: u64,
    code: &[u8],
    slot_address: u64,
    displaced: &Displaced,
    slot: &[u8],
) {
    let mut original = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let original = original.decode();
    if displaced.is_emulated() {
        assert!(slot.is_empty());
        return;
    }
    let mut decoder = Decoder::with_ip(64, slot, slot_address, DecoderOptions::NONE);
    let copy = decoder.decode();
    assert_eq!(copy.code(), original.code(), "{code:02x?}");
    assert_eq!(copy.len(), original.len());
    assert_eq!(copy.op_count(), original.op_count());
    if original.is_ip_rel_memory_operand() {
        assert_eq!(
            copy.ip_rel_memory_address(),
            original.ip_rel_memory_address()
        );
    } else {
        assert_eq!(&slot[..copy.len()], displaced.original(), "unchanged bytes");
        assert_eq!(
            copy.memory_displacement64(),
            original.memory_displacement64()
        );
    }
    for operand in 0..original.op_count() {
        assert_eq!(copy.op_kind(operand), original.op_kind(operand));
        assert_eq!(copy.op_register(operand), original.op_register(operand));
    }
    assert_eq!(copy.immediate64_or_zero(), original.immediate64_or_zero());
    let back = decoder.decode();
    assert_eq!(back.mnemonic(), Mnemonic::Jmp);
    let (target, end) = if back.is_ip_rel_memory_operand() {
        // `jmp [rip+0]`: the address follows the instruction.
        let pointer = back.ip_rel_memory_address().wrapping_sub(slot_address) as usize;
        assert_eq!(pointer, decoder.position());
        (
            u64::from_le_bytes(slot[pointer..pointer + 8].try_into().unwrap()),
            pointer + 8,
        )
    } else {
        (back.near_branch_target(), decoder.position())
    };
    assert_eq!(target, address.wrapping_add(original.len() as u64));
    assert_eq!(end, slot.len(), "nothing after the jump back");
}

/// Immediates compared regardless of their kind.
trait ImmediateOrZero {
    fn immediate64_or_zero(&self) -> u64;
}

impl ImmediateOrZero for Instruction {
    fn immediate64_or_zero(&self) -> u64 {
        (0..self.op_count())
            .filter(|&operand| {
                matches!(
                    self.op_kind(operand),
                    iced_x86::OpKind::Immediate8
                        | iced_x86::OpKind::Immediate16
                        | iced_x86::OpKind::Immediate32
                        | iced_x86::OpKind::Immediate64
                        | iced_x86::OpKind::Immediate8to16
                        | iced_x86::OpKind::Immediate8to32
                        | iced_x86::OpKind::Immediate8to64
                        | iced_x86::OpKind::Immediate32to64
                )
            })
            .map(|operand| self.immediate(operand))
            .fold(0, |sum, value| sum.wrapping_mul(31).wrapping_add(value))
    }
}

// The out-of-line area macro, as a kernel would use it.
kernel_stub::out_of_line_area!(test_slots, 4096);

#[test]
fn out_of_line_area_is_executable_int3_near_the_code() {
    let range = test_slots::range();
    assert_eq!(range.end - range.start, 4096);
    assert_eq!(test_slots::SIZE, 4096);
    assert_eq!(range.start % 16, 0);
    let code = probeport_boundary_sample as *const () as u64;
    assert!(
        range.start.abs_diff(code) < 1 << 31,
        "within reach of the text"
    );
    // SAFETY: the area is 4096 readable bytes of this binary's text.
    let bytes = unsafe { std::slice::from_raw_parts(range.start as *const u8, 4096) };
    assert!(bytes.iter().all(|&byte| byte == 0xcc));
}

// ---------------------------------------------------------------------------
// Tier 4: properties.

/// Bytes that look like instructions more often than uniform noise: optional
/// prefixes, an optional escape, then anything.
fn instruction_like() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(
            prop_oneof![
                Just(0x66u8),
                Just(0x67),
                Just(0xf0),
                Just(0xf2),
                Just(0xf3),
                Just(0x2e),
                Just(0x3e),
                Just(0x64),
                Just(0x65),
                0x40u8..=0x4f
            ],
            0..4,
        ),
        prop_oneof![
            Just(vec![]),
            Just(vec![0x0f]),
            Just(vec![0x0f, 0x38]),
            Just(vec![0x0f, 0x3a]),
            Just(vec![0xc5]),
            Just(vec![0xc4]),
            Just(vec![0x62])
        ],
        proptest::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(mut prefixes, escape, rest)| {
            prefixes.extend(escape);
            prefixes.extend(rest);
            prefixes
        })
}

fn addresses() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        (any::<u64>(), any::<u64>()),
        // Nearby slots, where RIP-relative operands mostly stay in reach.
        (any::<u64>(), -(1i64 << 30)..(1i64 << 30))
            .prop_map(|(address, delta)| (address, address.wrapping_add(delta as u64))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn prepare_never_panics_and_slots_decode_back(
        code in prop_oneof![proptest::collection::vec(any::<u8>(), 0..20), instruction_like()],
        (address, slot_address) in addresses(),
    ) {
        let window = &code[..code.len().min(arch::MAX_INSN_LEN)];
        if let Ok((displaced, slot)) = prepare(address, &code, slot_address) {
            prop_assert!(!displaced.is_empty() && displaced.len() <= arch::MAX_INSN_LEN);
            prop_assert_eq!(displaced.original(), &code[..displaced.len()]);
            prop_assert!(slot.bytes().len() <= SLOT_SIZE);
            let mut decoder = Decoder::with_ip(64, window, address, DecoderOptions::NONE);
            let instruction = decoder.decode();
            assert_consistent_with_flow_control(&instruction, &displaced);
            assert_slot_decodes_back(address, window, slot_address, &displaced, slot.bytes());

            // resume never panics either, whatever the registers and stack.
            let mut regs = TrapRegisters { regs: [address ^ slot_address; 16], pc: address.wrapping_add(1), flags: address };
            let _ = resume(&displaced, &mut regs, slot_address, &mut FakeMemory::default());
        }
    }

    #[test]
    fn boundaries_never_panic(
        code in proptest::collection::vec(any::<u8>(), 0..64),
        start in any::<u64>(),
        delta in prop_oneof![0u64..80, any::<u64>()],
    ) {
        let address = start.wrapping_add(delta);
        let boundary = is_instruction_boundary(start, &code, address);
        if boundary {
            prop_assert!(address >= start && address - start < code.len() as u64);
        }
        prop_assert_eq!(is_instruction_boundary(start, &code, start), !code.is_empty());
    }
}
