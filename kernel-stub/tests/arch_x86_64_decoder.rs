//! The stub's own x86-64 decoder against iced-x86, its oracle.
//!
//! # Design
//!
//! Until it had its own decoder, the stub decoded with iced-x86; that code lives on
//! here, unchanged but for its types, as [`reference`]. Every input goes through
//! three checks:
//!
//! 1. Decoder: whatever [`decode::decode`] accepts, iced-x86 decodes as a valid
//!    instruction of the same length, with the displacement and immediate at the
//!    same offsets and sizes and the same RIP-relative target; the bytes after it
//!    change nothing, and one byte less is cut short.
//! 2. Decisions: [`prepare`] gives exactly what the iced-based reference gives
//!    (the same `Displaced`, compared through its `Debug` form, which spells out
//!    the private emulation kind and targets, and the same slot bytes) — or it
//!    refuses where the reference would not (counted, and held under a ceiling).
//! 3. Coverage: of the instructions iced-x86 decodes in real code, the share the
//!    stub's decoder accepts stays above a floor.
//!
//! Inputs: linear sweeps of `.text` of the ELF files under `/usr/bin` and
//! `/usr/lib/x86_64-linux-gnu` (the shared objects), bounded per file so that the
//! whole test stays within its time budget in a debug build, and a few million
//! pseudo-random byte strings from a fixed seed (uniform, and shaped like
//! instructions: prefixes, REX, escapes, VEX headers, then noise).

#![cfg(target_arch = "x86_64")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic, Register};
use kernel_stub::arch::decode::{self, OpcodeMap};
use kernel_stub::arch::{MAX_INSN_LEN, PrepareError, prepare};

/// The stub's iced-x86-based `prepare`, as it was before the stub had its own
/// decoder. Its types mirror the stub's private ones field for field, so that
/// their `Debug` forms can be compared.
#[allow(dead_code, reason = "fields are read through Debug")]
mod reference {
    use iced_x86::{
        Code, Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic, OpKind, Register,
    };
    use kernel_stub::arch::{MAX_INSN_LEN, PrepareError};

    const NO_REGISTER: u8 = u8::MAX;
    const JUMP_RELATIVE_LEN: usize = 5;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) struct MemoryOperand {
        base: u8,
        index: u8,
        scale: u8,
        displacement: u64,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum CountBranch {
        Loop,
        LoopWhileEqual,
        LoopWhileNotEqual,
        JumpIfRcxZero,
        JumpIfEcxZero,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        OutOfLine,
        Skip,
        Jump { target: u64 },
        Conditional { condition: u8, target: u64 },
        Count { branch: CountBranch, target: u64 },
        Call { target: u64 },
        CallRegister { register: u8 },
        CallMemory { operand: MemoryOperand },
        Return { release: u16 },
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) struct Displaced {
        address: u64,
        bytes: [u8; MAX_INSN_LEN],
        len: u8,
        kind: Kind,
    }

    /// The old `prepare`: the displaced instruction and the slot's bytes.
    pub(crate) fn prepare(
        address: u64,
        code: &[u8],
        slot_address: u64,
    ) -> Result<(Displaced, Vec<u8>), PrepareError> {
        let code = code.get(..MAX_INSN_LEN).unwrap_or(code);
        let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
        if !decoder.can_decode() {
            return Err(PrepareError::Undecodable);
        }
        let instruction = decoder.decode();
        if instruction.is_invalid() || decoder.last_error() != DecoderError::None {
            return Err(PrepareError::Undecodable);
        }
        let len = instruction.len();
        let original = code.get(..len).ok_or(PrepareError::Undecodable)?;
        let mut bytes = [0; MAX_INSN_LEN];
        bytes[..len].copy_from_slice(original);
        let kind = classify(&instruction)?;
        if !matches!(kind, Kind::OutOfLine | Kind::Skip) && has_operand_size_prefix(original) {
            return Err(PrepareError::Unrelocatable);
        }
        let displaced = Displaced {
            address,
            bytes,
            len: len as u8,
            kind,
        };
        if kind != Kind::OutOfLine {
            return Ok((displaced, Vec::new()));
        }
        let slot_next = slot_address.wrapping_add(len as u64);
        if instruction.is_ip_rel_memory_operand() {
            let offsets = decoder.get_constant_offsets(&instruction);
            let start = offsets.displacement_offset();
            if !offsets.has_displacement() || offsets.displacement_size() != 4 {
                return Err(PrepareError::Unrelocatable);
            }
            let target = instruction.ip_rel_memory_address();
            let displacement = i32::try_from(target.wrapping_sub(slot_next) as i64)
                .map_err(|_| PrepareError::OutOfReach)?;
            bytes[start..start + 4].copy_from_slice(&displacement.to_le_bytes());
        }
        let mut slot = bytes[..len].to_vec();
        let back = address.wrapping_add(len as u64);
        let jump_end = slot_next.wrapping_add(JUMP_RELATIVE_LEN as u64);
        match i32::try_from(back.wrapping_sub(jump_end) as i64) {
            Ok(relative) => {
                slot.push(0xe9);
                slot.extend_from_slice(&relative.to_le_bytes());
            }
            Err(_) => {
                slot.extend_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
                slot.extend_from_slice(&back.to_le_bytes());
            }
        }
        Ok((displaced, slot))
    }

    /// Whether the legacy prefixes (and REX) in front of the opcode include 0x66.
    fn has_operand_size_prefix(bytes: &[u8]) -> bool {
        bytes
            .iter()
            .take_while(|&&byte| {
                matches!(
                    byte,
                    0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65
                ) || (0x40..=0x4f).contains(&byte)
            })
            .any(|&byte| byte == 0x66)
    }

    /// The DWARF number of a 64-bit general purpose register.
    fn dwarf_number(register: Register) -> Option<u8> {
        Some(match register {
            Register::RAX => 0,
            Register::RDX => 1,
            Register::RCX => 2,
            Register::RBX => 3,
            Register::RSI => 4,
            Register::RDI => 5,
            Register::RBP => 6,
            Register::RSP => 7,
            Register::R8 => 8,
            Register::R9 => 9,
            Register::R10 => 10,
            Register::R11 => 11,
            Register::R12 => 12,
            Register::R13 => 13,
            Register::R14 => 14,
            Register::R15 => 15,
            _ => return None,
        })
    }

    /// The condition nibble of a `jcc` (the same numbering as the opcode's low nibble).
    fn condition(mnemonic: Mnemonic) -> Option<u8> {
        Some(match mnemonic {
            Mnemonic::Jo => 0x0,
            Mnemonic::Jno => 0x1,
            Mnemonic::Jb => 0x2,
            Mnemonic::Jae => 0x3,
            Mnemonic::Je => 0x4,
            Mnemonic::Jne => 0x5,
            Mnemonic::Jbe => 0x6,
            Mnemonic::Ja => 0x7,
            Mnemonic::Js => 0x8,
            Mnemonic::Jns => 0x9,
            Mnemonic::Jp => 0xa,
            Mnemonic::Jnp => 0xb,
            Mnemonic::Jl => 0xc,
            Mnemonic::Jge => 0xd,
            Mnemonic::Jle => 0xe,
            Mnemonic::Jg => 0xf,
            _ => return None,
        })
    }

    /// Whether the instruction must never run displaced (see the module's design).
    fn is_refused(instruction: &Instruction) -> bool {
        let refused_mnemonic = matches!(
            instruction.mnemonic(),
            Mnemonic::Int3
                | Mnemonic::Int
                | Mnemonic::Int1
                | Mnemonic::Into
                | Mnemonic::Ud0
                | Mnemonic::Ud1
                | Mnemonic::Ud2
                | Mnemonic::Iret
                | Mnemonic::Iretd
                | Mnemonic::Iretq
                | Mnemonic::Retf
                | Mnemonic::Sysret
                | Mnemonic::Sysretq
                | Mnemonic::Syscall
                | Mnemonic::Sysenter
                | Mnemonic::Sysexit
                | Mnemonic::Sysexitq
                | Mnemonic::Swapgs
                | Mnemonic::Lkgs
                | Mnemonic::Rsm
                | Mnemonic::Uiret
                | Mnemonic::Eretu
                | Mnemonic::Erets
                | Mnemonic::Jmpe
                | Mnemonic::Xbegin
                | Mnemonic::Hlt
                | Mnemonic::Sti
                | Mnemonic::Mwait
                | Mnemonic::Mwaitx
                | Mnemonic::Umwait
                | Mnemonic::Tpause
                | Mnemonic::Lgdt
                | Mnemonic::Lidt
                | Mnemonic::Lldt
                | Mnemonic::Ltr
                | Mnemonic::Lmsw
                | Mnemonic::Vmcall
                | Mnemonic::Vmlaunch
                | Mnemonic::Vmresume
                | Mnemonic::Vmrun
                | Mnemonic::Vmmcall
                | Mnemonic::Vmfunc
                | Mnemonic::Vmgexit
                | Mnemonic::Enclu
                | Mnemonic::Encls
                | Mnemonic::Enclv
                | Mnemonic::Seamcall
                | Mnemonic::Seamret
                | Mnemonic::Seamops
                | Mnemonic::Tdcall
        );
        let special_move = matches!(
            instruction.code(),
            Code::Mov_r64_cr
                | Code::Mov_r64_dr
                | Code::Mov_cr_r32
                | Code::Mov_cr_r64
                | Code::Mov_dr_r32
                | Code::Mov_dr_r64
                | Code::Mov_r32_cr
                | Code::Mov_r32_dr
        ) || (matches!(
            instruction.code(),
            Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16 | Code::Mov_Sreg_r64m16
        ) && instruction.op0_register() == Register::SS);
        refused_mnemonic || special_move
    }

    /// Decides how `instruction` runs displaced.
    fn classify(instruction: &Instruction) -> Result<Kind, PrepareError> {
        if is_refused(instruction) {
            return Err(PrepareError::Unrelocatable);
        }
        let near = instruction.op0_kind() == OpKind::NearBranch64;
        let target = instruction.near_branch_target();
        let mnemonic = instruction.mnemonic();
        if let Some(condition) = condition(mnemonic) {
            return if near {
                Ok(Kind::Conditional { condition, target })
            } else {
                Err(PrepareError::Unrelocatable)
            };
        }
        let kind = match instruction.code() {
            Code::Jmp_rel8_64 | Code::Jmp_rel32_64 => Kind::Jump { target },
            Code::Call_rel32_64 => Kind::Call { target },
            Code::Call_rm64 => call_indirect(instruction)?,
            Code::Retnq => Kind::Return { release: 0 },
            Code::Retnq_imm16 => Kind::Return {
                release: instruction.immediate16(),
            },
            Code::Loop_rel8_64_RCX => Kind::Count {
                branch: CountBranch::Loop,
                target,
            },
            Code::Loope_rel8_64_RCX => Kind::Count {
                branch: CountBranch::LoopWhileEqual,
                target,
            },
            Code::Loopne_rel8_64_RCX => Kind::Count {
                branch: CountBranch::LoopWhileNotEqual,
                target,
            },
            Code::Jrcxz_rel8_64 => Kind::Count {
                branch: CountBranch::JumpIfRcxZero,
                target,
            },
            Code::Jecxz_rel8_64 => Kind::Count {
                branch: CountBranch::JumpIfEcxZero,
                target,
            },
            // Every other form of these is 16-bit, far, or counts in ECX.
            _ if matches!(
                mnemonic,
                Mnemonic::Jmp
                    | Mnemonic::Call
                    | Mnemonic::Ret
                    | Mnemonic::Loop
                    | Mnemonic::Loope
                    | Mnemonic::Loopne
                    | Mnemonic::Jrcxz
                    | Mnemonic::Jecxz
                    | Mnemonic::Jcxz
            ) && instruction.code() != Code::Jmp_rm64 =>
            {
                return Err(PrepareError::Unrelocatable);
            }
            _ if matches!(
                mnemonic,
                Mnemonic::Nop | Mnemonic::Endbr64 | Mnemonic::Endbr32
            ) =>
            {
                Kind::Skip
            }
            _ => {
                if instruction.is_ip_rel_memory_operand()
                    && instruction.memory_base() != Register::RIP
                {
                    // EIP-relative: the target wraps at 4 GiB; not worth relocating.
                    return Err(PrepareError::Unrelocatable);
                }
                Kind::OutOfLine
            }
        };
        Ok(kind)
    }

    /// `call reg` or `call [mem]`, emulated.
    fn call_indirect(instruction: &Instruction) -> Result<Kind, PrepareError> {
        match instruction.op0_kind() {
            OpKind::Register => {
                let register =
                    dwarf_number(instruction.op0_register()).ok_or(PrepareError::Unrelocatable)?;
                Ok(Kind::CallRegister { register })
            }
            OpKind::Memory => {
                if matches!(instruction.segment_prefix(), Register::FS | Register::GS) {
                    return Err(PrepareError::Unrelocatable);
                }
                let operand = if instruction.is_ip_rel_memory_operand() {
                    if instruction.memory_base() != Register::RIP {
                        return Err(PrepareError::Unrelocatable);
                    }
                    MemoryOperand {
                        base: NO_REGISTER,
                        index: NO_REGISTER,
                        scale: 0,
                        displacement: instruction.ip_rel_memory_address(),
                    }
                } else {
                    let register = |register: Register| match register {
                        Register::None => Ok(NO_REGISTER),
                        other => dwarf_number(other).ok_or(PrepareError::Unrelocatable),
                    };
                    MemoryOperand {
                        base: register(instruction.memory_base())?,
                        index: register(instruction.memory_index())?,
                        scale: instruction.memory_index_scale() as u8,
                        displacement: instruction.memory_displacement64(),
                    }
                };
                Ok(Kind::CallMemory { operand })
            }
            _ => Err(PrepareError::Unrelocatable),
        }
    }
}

// ---------------------------------------------------------------------------
// One input through the three checks.

/// What happened to the inputs so far.
#[derive(Default)]
struct Tally {
    /// Inputs iced-x86 decodes as a valid instruction.
    iced_valid: u64,
    /// Of those, the ones the stub's decoder accepts.
    accepted: u64,
    /// Inputs the stub's decoder accepts (all of them valid for iced-x86).
    decoder_agreements: u64,
    /// Inputs whose `prepare` result equals the reference's.
    same_decision: u64,
    /// Inputs the stub refuses (not as undecodable) where the reference accepts.
    stricter: u64,
    /// Both refuse, for different reasons (the stub's decoder knows the
    /// instruction; iced-x86 does too).
    refused_differently: u64,
    /// Instructions iced-x86 decodes that the stub's decoder does not, by iced's
    /// mnemonic, with an example.
    not_accepted: BTreeMap<String, (u64, String)>,
    /// Instructions the stub refuses where the reference accepts, by mnemonic.
    stricter_examples: BTreeMap<String, (u64, String)>,
    /// Inputs the stub's decoder accepts, by opcode map.
    accepted_maps: BTreeMap<String, u64>,
    /// Disagreements: how many, and the first few.
    disagreements: u64,
    examples: Vec<String>,
}

impl Tally {
    /// [`check`], with a disagreement recorded rather than ending the test at
    /// once, so that one run shows several.
    fn record(&mut self, address: u64, code: &[u8], slot_address: u64) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check(self, address, code, slot_address);
        }));
        match outcome {
            Ok(()) => {}
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
                    .unwrap_or_default();
                self.disagreements += 1;
                if self.examples.len() < 60 {
                    self.examples.push(message.replace('\n', " "));
                }
            }
        }
    }

    fn assert_no_disagreement(&self) {
        assert!(
            self.disagreements == 0,
            "{} disagreements with iced-x86 or the reference, first ones:\n{}",
            self.disagreements,
            self.examples.join("\n")
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The first instruction of `code` as iced-x86 decodes it (None if invalid).
fn iced(address: u64, code: &[u8]) -> Option<(Instruction, iced_x86::ConstantOffsets)> {
    let window = &code[..code.len().min(MAX_INSN_LEN)];
    let mut decoder = Decoder::with_ip(64, window, address, DecoderOptions::NONE);
    if !decoder.can_decode() {
        return None;
    }
    let instruction = decoder.decode();
    if instruction.is_invalid() || decoder.last_error() != DecoderError::None {
        return None;
    }
    let offsets = decoder.get_constant_offsets(&instruction);
    Some((instruction, offsets))
}

/// Runs the three checks on `code` at `address`; panics on a disagreement.
fn check(tally: &mut Tally, address: u64, code: &[u8], slot_address: u64) {
    let window = &code[..code.len().min(MAX_INSN_LEN)];
    let theirs = iced(address, window);
    let ours = decode::decode(window);
    if let Some((instruction, _)) = &theirs {
        tally.iced_valid += 1;
        if ours.is_some() {
            tally.accepted += 1;
        } else {
            let entry = tally
                .not_accepted
                .entry(format!("{:?}", instruction.code()))
                .or_insert((0, hex(&window[..instruction.len()])));
            entry.0 += 1;
        }
    }
    if let Some(ours) = &ours {
        let Some((instruction, offsets)) = &theirs else {
            panic!("{}: accepted, but iced-x86 does not decode it", hex(window));
        };
        check_fields(address, window, ours, instruction, offsets);
        // Nothing after the instruction matters, and one byte less is cut short.
        assert_eq!(
            decode::decode(&window[..ours.len()]).as_ref(),
            Some(ours),
            "{}",
            hex(window)
        );
        assert_eq!(
            decode::decode(&window[..ours.len() - 1]),
            None,
            "{}",
            hex(window)
        );
        tally.decoder_agreements += 1;
        *tally
            .accepted_maps
            .entry(format!("{:?}", ours.map()))
            .or_default() += 1;
    }

    let mine = prepare(address, code, slot_address);
    let reference = reference::prepare(address, code, slot_address);
    match (&mine, &reference) {
        (Ok((displaced, slot)), Ok((expected, expected_slot))) => {
            assert_eq!(
                format!("{displaced:?}"),
                format!("{expected:?}"),
                "{}",
                hex(window)
            );
            assert_eq!(slot.bytes(), &expected_slot[..], "{}", hex(window));
            tally.same_decision += 1;
        }
        (Ok(_), Err(error)) => panic!("{}: accepted, the reference says {error:?}", hex(window)),
        (Err(PrepareError::Undecodable), _) => {
            assert!(ours.is_none(), "{}", hex(window));
            if reference.is_err() {
                tally.same_decision += u64::from(theirs.is_none());
                tally.refused_differently += u64::from(theirs.is_some());
            }
        }
        (Err(error), Ok(_)) => {
            tally.stricter += 1;
            let (instruction, _) = theirs.expect("accepted by the reference");
            let entry = tally
                .stricter_examples
                .entry(format!("{:?} {error:?}", instruction.code()))
                .or_insert((0, hex(&window[..instruction.len()])));
            entry.0 += 1;
        }
        (Err(error), Err(expected)) if error == expected => tally.same_decision += 1,
        (Err(error), Err(expected)) => {
            assert_ne!(
                *expected,
                PrepareError::Undecodable,
                "{}: {error:?} for bytes iced-x86 does not decode",
                hex(window)
            );
            tally.refused_differently += 1;
        }
    }
}

/// The decoder's fields against iced-x86's view of the same instruction.
fn check_fields(
    address: u64,
    code: &[u8],
    ours: &decode::Instruction,
    instruction: &Instruction,
    offsets: &iced_x86::ConstantOffsets,
) {
    let bytes = hex(&code[..instruction.len()]);
    assert_eq!(ours.len(), instruction.len(), "{bytes}: length");
    let field = |offset: usize, size: usize, present: bool| {
        present.then_some(decode::Field {
            offset: offset as u8,
            size: size as u8,
        })
    };
    let displacement = field(
        offsets.displacement_offset(),
        offsets.displacement_size(),
        offsets.has_displacement(),
    );
    let moffs = ours.map() == OpcodeMap::Primary && (0xa0..=0xa3).contains(&ours.opcode());
    if moffs {
        // iced-x86 calls the absolute address of `mov al, [moffs]` a displacement.
        assert_eq!(ours.displacement(), None, "{bytes}");
        assert_eq!(ours.immediate(), displacement, "{bytes}: moffs");
    } else {
        assert_eq!(ours.displacement(), displacement, "{bytes}: displacement");
        let immediate_size = offsets.immediate_size() + offsets.immediate_size2();
        let immediate = field(
            offsets.immediate_offset(),
            immediate_size,
            offsets.has_immediate(),
        );
        let branch = (instruction.is_jcc_short_or_near()
            || instruction.is_jmp_short_or_near()
            || instruction.is_call_near()
            || instruction.is_loop()
            || instruction.is_loopcc()
            || matches!(instruction.mnemonic(), Mnemonic::Jrcxz | Mnemonic::Jecxz)
            || instruction.mnemonic() == Mnemonic::Xbegin)
            .then(|| field(offsets.immediate_offset(), offsets.immediate_size(), true))
            .flatten();
        // The register in the high nibble of the last byte of `vblendvps` and of
        // FMA4 (is4), which iced-x86 does not count as an immediate.
        let is4 = ours.map() == OpcodeMap::Vex(3)
            && matches!(ours.opcode(), 0x4a..=0x4c | 0x5c..=0x5f | 0x68..=0x6f | 0x78..=0x7f);
        // iced-x86 counts a branch's offset as an immediate too, but check both ways.
        assert!(
            ours.immediate() == immediate
                || ours.immediate() == branch
                || is4 && immediate.is_none(),
            "{bytes}: immediate {:?}, iced-x86 {immediate:?}",
            ours.immediate()
        );
    }
    let rip_relative = (instruction.is_ip_rel_memory_operand()
        && instruction.memory_base() == Register::RIP)
        .then(|| instruction.ip_rel_memory_address());
    assert_eq!(
        ours.rip_relative_target(address, code),
        rip_relative,
        "{bytes}: RIP-relative target"
    );
    assert_eq!(
        ours.is_ip_relative(),
        instruction.is_ip_rel_memory_operand(),
        "{bytes}: IP-relative"
    );
}

fn report(name: &str, tally: &Tally) {
    println!(
        "{name}: iced-x86 decodes {} inputs; the stub's decoder accepts {} of them ({:.3}%); \
         {} accepted inputs agree on length and fields; prepare: {} same decisions, {} stricter, \
         {} refused for another reason",
        tally.iced_valid,
        tally.accepted,
        percent(tally.accepted, tally.iced_valid),
        tally.decoder_agreements,
        tally.same_decision,
        tally.stricter,
        tally.refused_differently,
    );
    println!("{name}: accepted by opcode map: {:?}", tally.accepted_maps);
    let mut missing: Vec<_> = tally.not_accepted.iter().collect();
    missing.sort_by_key(|entry| std::cmp::Reverse(entry.1.0));
    println!("{name}: most common instructions not accepted (iced-x86 code, count, example):");
    for (code, (count, example)) in missing.iter().take(25) {
        println!("  {code:<40} {count:>8}  {example}");
    }
    let mut stricter: Vec<_> = tally.stricter_examples.iter().collect();
    stricter.sort_by_key(|entry| std::cmp::Reverse(entry.1.0));
    println!("{name}: refused where the reference accepts:");
    for (what, (count, example)) in stricter.iter().take(25) {
        println!("  {what:<40} {count:>8}  {example}");
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

// ---------------------------------------------------------------------------
// Hand-picked encodings whose lengths depend on prefixes or on the opcode
// extension (iced-x86 must agree on each length too).

/// Name, bytes, length, displacement, immediate.
type Case = (
    &'static str,
    &'static [u8],
    usize,
    Option<decode::Field>,
    Option<decode::Field>,
);

#[test]
fn lengths_and_fields_of_tricky_encodings() {
    let field = |offset, size| Some(decode::Field { offset, size });
    // (name, bytes, length, displacement, immediate)
    let cases: &[Case] = &[
        ("add eax,imm32", &[0x05, 1, 2, 3, 4], 5, None, field(1, 4)),
        ("add ax,imm16", &[0x66, 0x05, 1, 2], 4, None, field(2, 2)),
        (
            "add rax,imm32",
            &[0x66, 0x48, 0x05, 1, 2, 3, 4],
            7,
            None,
            field(3, 4),
        ),
        (
            "REX before 66 is dropped",
            &[0x48, 0x66, 0x05, 1, 2],
            5,
            None,
            field(3, 2),
        ),
        (
            "movabs rax,imm64",
            &[0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8],
            10,
            None,
            field(2, 8),
        ),
        ("mov ax,imm16", &[0x66, 0xb8, 1, 2], 4, None, field(2, 2)),
        (
            "movabs al,[moffs64]",
            &[0xa0, 1, 2, 3, 4, 5, 6, 7, 8],
            9,
            None,
            field(1, 8),
        ),
        (
            "mov al,[moffs32]",
            &[0x67, 0xa0, 1, 2, 3, 4],
            6,
            None,
            field(2, 4),
        ),
        ("enter 0x10,1", &[0xc8, 0x10, 0, 1], 4, None, field(1, 3)),
        (
            "test byte [rax],imm8",
            &[0xf6, 0x00, 1],
            3,
            None,
            field(2, 1),
        ),
        ("neg byte [rax]", &[0xf6, 0x18], 2, None, None),
        (
            "test dword [rax],imm32",
            &[0xf7, 0x00, 1, 2, 3, 4],
            6,
            None,
            field(2, 4),
        ),
        (
            "test word [rax],imm16",
            &[0x66, 0xf7, 0x00, 1, 2],
            5,
            None,
            field(3, 2),
        ),
        ("not dword [rax]", &[0xf7, 0x10], 2, None, None),
        (
            "o16 call rel32 (Intel)",
            &[0x66, 0xe8, 1, 2, 3, 4],
            6,
            None,
            field(2, 4),
        ),
        (
            "o16 jne rel32 (Intel)",
            &[0x66, 0x0f, 0x85, 1, 2, 3, 4],
            7,
            None,
            field(3, 4),
        ),
        ("ret imm16", &[0xc2, 8, 0], 3, None, field(1, 2)),
        (
            "xbegin rel32",
            &[0xc7, 0xf8, 1, 2, 3, 4],
            6,
            None,
            field(2, 4),
        ),
        (
            "xbegin rel16",
            &[0x66, 0xc7, 0xf8, 1, 2],
            5,
            None,
            field(3, 2),
        ),
        (
            "mov rax,[rip+disp32]",
            &[0x48, 0x8b, 0x05, 1, 2, 3, 4],
            7,
            field(3, 4),
            None,
        ),
        (
            "mov eax,[eip+disp32]",
            &[0x67, 0x8b, 0x05, 1, 2, 3, 4],
            7,
            field(3, 4),
            None,
        ),
        (
            "mov eax,[disp32] (SIB)",
            &[0x8b, 0x04, 0x25, 1, 2, 3, 4],
            7,
            field(3, 4),
            None,
        ),
        (
            "mov eax,[r13+0]",
            &[0x41, 0x8b, 0x45, 0],
            4,
            field(3, 1),
            None,
        ),
        ("mov eax,[r12]", &[0x41, 0x8b, 0x04, 0x24], 4, None, None),
        (
            "cmp byte [rip+d],imm8",
            &[0x80, 0x3d, 1, 2, 3, 4, 5],
            7,
            field(2, 4),
            field(6, 1),
        ),
        (
            "mov cr3,rax (mod ignored)",
            &[0x0f, 0x22, 0x18],
            3,
            None,
            None,
        ),
        (
            "pshufd xmm0,xmm1,imm8",
            &[0x66, 0x0f, 0x70, 0xc1, 5],
            5,
            None,
            field(4, 1),
        ),
        (
            "palignr xmm0,xmm1,imm8",
            &[0x66, 0x0f, 0x3a, 0x0f, 0xc1, 5],
            6,
            None,
            field(5, 1),
        ),
        (
            "vmovdqu ymm0,[rip+d]",
            &[0xc5, 0xfe, 0x6f, 0x05, 1, 2, 3, 4],
            8,
            field(4, 4),
            None,
        ),
        (
            "vpcmpeqb k1,zmm0,[rax+64]",
            &[0x62, 0xf1, 0x7d, 0x48, 0x74, 0x48, 1],
            7,
            field(6, 1),
            None,
        ),
        (
            "14 bytes of prefixes and nop",
            &[
                0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
                0x90,
            ],
            15,
            None,
            None,
        ),
    ];
    for (name, bytes, len, displacement, immediate) in cases {
        let instruction = decode::decode(bytes).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(instruction.len(), *len, "{name}");
        assert_eq!(instruction.displacement(), *displacement, "{name}");
        assert_eq!(instruction.immediate(), *immediate, "{name}");
        let (iced_instruction, _) = iced(0x1000, bytes).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(iced_instruction.len(), *len, "{name}: iced-x86");
    }
    let invalid: &[(&str, &[u8])] = &[
        ("push es", &[0x06]),
        ("pusha", &[0x60]),
        ("bound / EVEX cut short", &[0x62]),
        ("les / VEX cut short", &[0xc4]),
        ("lds / VEX cut short", &[0xc5, 0xf8]),
        ("call far ptr16:32", &[0x9a, 1, 2, 3, 4, 5, 6]),
        ("aam", &[0xd4, 0x0a]),
        ("aad", &[0xd5, 0x0a]),
        ("jmp far ptr16:32", &[0xea, 1, 2, 3, 4, 5, 6]),
        ("into", &[0xce]),
        ("82 alias of 80", &[0x82, 0xc0, 1]),
        ("lea with a register operand", &[0x8d, 0xc0]),
        ("lock add eax,ebx", &[0xf0, 0x01, 0xd8]),
        ("lock cmp [rax],eax", &[0xf0, 0x39, 0x00]),
        ("VEX after REX", &[0x48, 0xc5, 0xf8, 0x77]),
        ("VEX after 66", &[0x66, 0xc5, 0xf8, 0x77]),
        ("16 operand-size prefixes", &[0x66; 16]),
        ("cut short imm64", &[0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7]),
    ];
    for (name, bytes) in invalid {
        assert_eq!(decode::decode(bytes), None, "{name}");
    }
}

// ---------------------------------------------------------------------------
// Real code.

/// Bytes of `.text` swept per file, and how they are spread: from the start of
/// `.text`, and from this many function symbols spread over it.
const BYTES_PER_FILE: usize = 8 * 1024;
const SYMBOL_STARTS: usize = 8;
/// Libraries swept whole: the C library's and libm's hand-written SSE, AVX2 and
/// AVX-512 variants, and OpenSSL's vector code.
const SWEPT_WHOLE: &[&str] = &["libc.so.6", "libm.so.6", "libcrypto.so.3"];
/// The corpus must hold at least this many instructions for the test to count.
const MINIMUM_INSTRUCTIONS: u64 = 1_000_000;
/// The share of real instructions the decoder must accept.
const COVERAGE_FLOOR: f64 = 99.5;

/// ELF files to sweep: executables under `/usr/bin`, shared objects under
/// `/usr/lib/x86_64-linux-gnu` (each file once, by its canonical path).
fn corpus_files() -> Vec<PathBuf> {
    let mut files = std::collections::BTreeSet::new();
    let mut add = |directory: &str, filter: &dyn Fn(&str) -> bool| {
        let Ok(entries) = std::fs::read_dir(directory) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !filter(&name) {
                continue;
            }
            if let Ok(path) = std::fs::canonicalize(entry.path())
                && path.is_file()
            {
                files.insert(path);
            }
        }
    };
    add("/usr/bin", &|_| true);
    add("/usr/lib/x86_64-linux-gnu", &|name| name.contains(".so"));
    files.into_iter().collect()
}

/// `.text` of an x86-64 ELF file, its address, and the starts of the functions
/// in it (from the symbol table, or the dynamic one), sorted.
fn text_of(path: &Path) -> Option<(u64, Vec<u8>, Vec<u64>)> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    if file.architecture() != object::Architecture::X86_64 {
        return None;
    }
    let text = file.section_by_name(".text")?;
    let bytes = text.data().ok()?.to_vec();
    let start = text.address();
    let end = start + bytes.len() as u64;
    let mut functions: Vec<u64> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|symbol| symbol.kind() == object::SymbolKind::Text)
        .map(|symbol| symbol.address())
        .filter(|address| (start..end).contains(address))
        .collect();
    functions.sort_unstable();
    functions.dedup();
    Some((start, bytes, functions))
}

/// A linear sweep of `code` (at `address`) for at most `budget` bytes, resyncing
/// on iced-x86's lengths (one byte past what it does not decode).
fn sweep(tally: &mut Tally, address: u64, code: &[u8], budget: usize, slot_address: u64) {
    let mut offset = 0;
    let end = code.len().min(budget);
    while offset < end {
        let rest = &code[offset..];
        let here = address + offset as u64;
        tally.record(here, rest, slot_address);
        offset += iced(here, rest).map_or(1, |(instruction, _)| instruction.len());
    }
}

#[test]
fn real_code_decodes_as_iced_x86_decodes_it() {
    let mut tally = Tally::default();
    let mut files = 0;
    for path in corpus_files() {
        let Some((address, code, functions)) = text_of(&path) else {
            continue;
        };
        files += 1;
        // Slots just past the text, where RIP-relative operands mostly stay in reach.
        let slot_address = (address + code.len() as u64 + 0xfff) & !0xfff;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if SWEPT_WHOLE.contains(&&*name) {
            let (valid, accepted) = (tally.iced_valid, tally.accepted);
            sweep(&mut tally, address, &code, code.len(), slot_address);
            let (valid, accepted) = (tally.iced_valid - valid, tally.accepted - accepted);
            println!(
                "{name} (whole .text): iced-x86 decodes {valid} instructions, the stub's \
                 decoder accepts {accepted} ({:.3}%)",
                percent(accepted, valid)
            );
            continue;
        }
        sweep(&mut tally, address, &code, BYTES_PER_FILE / 2, slot_address);
        let step = (functions.len() / SYMBOL_STARTS).max(1);
        for &function in functions.iter().step_by(step).take(SYMBOL_STARTS) {
            let offset = (function - address) as usize;
            sweep(
                &mut tally,
                function,
                &code[offset..],
                BYTES_PER_FILE / 2 / SYMBOL_STARTS,
                slot_address,
            );
        }
    }
    println!("real code: {files} ELF files swept");
    report("real code", &tally);
    tally.assert_no_disagreement();
    assert!(
        tally.iced_valid >= MINIMUM_INSTRUCTIONS,
        "only {} instructions in the corpus",
        tally.iced_valid
    );
    let coverage = percent(tally.accepted, tally.iced_valid);
    assert!(
        coverage >= COVERAGE_FLOOR,
        "the decoder accepts {coverage:.3}% of real instructions"
    );
}

// ---------------------------------------------------------------------------
// Random bytes.

/// xorshift64*: a fixed, dependency-free stream.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Fifteen bytes: noise, or prefixes, REX, an escape or a VEX header, then noise.
fn random_instruction(random: &mut Random) -> [u8; MAX_INSN_LEN] {
    const PREFIXES: [u8; 11] = [
        0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x3e, 0x26, 0x36, 0x64, 0x65,
    ];
    let mut bytes = [0; MAX_INSN_LEN];
    for byte in &mut bytes {
        *byte = random.byte();
    }
    if random.below(4) == 0 {
        return bytes;
    }
    let mut at = 0;
    for _ in 0..random.below(4) {
        bytes[at] = PREFIXES[random.below(PREFIXES.len() as u64) as usize];
        at += 1;
    }
    if random.below(2) == 0 {
        bytes[at] = 0x40 | random.byte() & 0xf;
        at += 1;
    }
    let escape: &[u8] = match random.below(9) {
        0 | 1 => &[],
        2 | 3 => &[0x0f],
        4 => &[0x0f, 0x38],
        5 => &[0x0f, 0x3a],
        6 => &[0xc5],
        7 => &[0xc4],
        _ => &[0x62],
    };
    bytes[at..at + escape.len()].copy_from_slice(escape);
    at += escape.len();
    if escape == [0xc4] {
        // Mostly a map the tables know.
        bytes[at] = bytes[at] & 0xe0 | (1 + random.below(3)) as u8;
    }
    if escape == [0x62] && random.below(8) != 0 {
        // Mostly the reserved bits right, a map the tables know, no broadcast.
        bytes[at] = bytes[at] & 0xf0 | (1 + random.below(3)) as u8;
        bytes[at + 1] |= 0x04;
        bytes[at + 2] &= !0x10;
    }
    bytes
}

/// Random strings compared (the test's time budget in a debug build).
const RANDOM_STRINGS: u64 = 2_000_000;

#[test]
fn random_bytes_decode_as_iced_x86_decodes_them() {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let mut tally = Tally::default();
    for _ in 0..RANDOM_STRINGS {
        let bytes = random_instruction(&mut random);
        let address = random.next();
        // Half the slots nearby, where RIP-relative operands stay in reach.
        let slot_address = if random.below(2) == 0 {
            address.wrapping_add(random.below(1 << 30))
        } else {
            random.next()
        };
        let len = MAX_INSN_LEN - random.below(3) as usize;
        tally.record(address, &bytes[..len], slot_address);
    }
    println!("random: {RANDOM_STRINGS} byte strings");
    report("random", &tally);
    tally.assert_no_disagreement();
    assert!(tally.decoder_agreements > RANDOM_STRINGS / 10);
}
