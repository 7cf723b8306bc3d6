//! x86_64: `int3` breakpoints and displaced execution of the probed instruction.
//!
//! # Design
//!
//! A probe overwrites the first byte of an instruction with `int3` (0xCC). When it
//! fires, the CPU traps with RIP one past the breakpoint; after the handler ran, the
//! instruction the breakpoint displaced must still execute, exactly once and with
//! exactly its original effect. The original byte is never put back (that is not
//! SMP-safe); instead [`prepare`] decides, once at arming time, how to run it:
//!
//! - **Out of line** (most instructions): a copy runs from the probe's slot in the
//!   out-of-line area, followed by a jump back to the next original instruction.
//!   A RIP-relative memory operand gets its 32-bit displacement rewritten so that it
//!   addresses the same byte from the slot ([`PrepareError::OutOfReach`] when the new
//!   displacement does not fit). The jump back is `jmp rel32` when the next
//!   instruction is within ±2 GiB of the slot, else `jmp [rip+0]` followed by the
//!   8-byte address, which uses no register and changes no flag. Indirect jumps
//!   (`jmp reg`, `jmp [mem]`) also run out of line: they never reach the jump back.
//! - **Emulated** (no slot code): everything whose effect depends on where it sits.
//!   [`resume`] updates the trapped registers and stack as the CPU would have:
//!   `call rel32`, `call reg`, `call [mem]` (the pushed return address must be the
//!   original one, and a callee can sleep for long while its return address would
//!   otherwise point into a slot), `jmp rel8/rel32`, the 16 `jcc rel8/rel32`
//!   evaluated on the trapped RFLAGS, `loop`/`loope`/`loopne`/`jrcxz`/`jecxz` (RCX
//!   forms), `ret` and `ret imm16`. `nop` forms and `endbr32/64` are emulated too:
//!   the next instruction simply follows, which saves the trip through the slot at
//!   most function entries.
//! - **Refused** ([`PrepareError::Unrelocatable`]): what cannot run displaced or
//!   must never be probed. Interrupts and exceptions raised on purpose (`int3`,
//!   `int n`, `int1`, `into`, `ud0/1/2` — a kernel's `BUG()` tables are keyed by the
//!   original address), returns and entries across privilege levels (`iret*`,
//!   `sysret`, `syscall`, `sysenter`, `sysexit`, `swapgs`, `lkgs`, VMX/SVM/SGX/TDX
//!   transitions, `rsm`, `uiret`), far transfers, `xbegin` (its abort target is
//!   relative), instructions that open an interrupt shadow or sleep in one (`sti`,
//!   `mov ss`, `hlt`, `mwait`, `umwait`, `tpause`: run displaced, the shadow would
//!   cover the jump back instead of the next instruction, and `sti; hlt` could lose
//!   its wake-up), control and debug register writes and reads (`mov cr*`, `mov
//!   dr*`, `lmsw`), descriptor table loads (`lgdt`, `lidt`, `lldt`, `ltr`), 16-bit
//!   operand forms of branches and any emulated branch with an operand-size prefix
//!   (Intel ignores it, AMD honours it), `loop*` on ECX, EIP-relative operands (address-size
//!   prefix) and indirect calls through FS/GS or 32-bit addresses.
//! - Bytes that are not an instruction, or are cut short, are
//!   [`PrepareError::Undecodable`].
//!
//! # Invariants
//!
//! - Nothing here allocates or panics, on any input: the decoder is iced-x86's,
//!   which works on borrowed bytes, and every computation on addresses wraps.
//! - A slot behaves as the original instruction for every register, flag and memory
//!   operand: it holds the same bytes but for a RIP-relative displacement, whose
//!   target is unchanged. Only the instruction pointer differs while it runs, which
//!   is why whatever could observe it is emulated or refused.
//!
//! # What the runtime must keep in mind
//!
//! - A task can be interrupted (and, in a preemptible kernel, scheduled out) while
//!   its RIP is inside a slot: a slot must not be rewritten for another instruction
//!   until no task can be in it.
//! - A fault raised by the displaced instruction reports the slot's address, not the
//!   original one; a kernel whose fault fixups are keyed by address (exception
//!   tables) must not have such instructions probed, or must translate the address.
//! - x87 instructions record their own address for `fnstenv`/`fxsave`; run
//!   displaced, they record the slot's.

use core::fmt;

use iced_x86::{
    Code, Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic, OpKind, Register,
};

use crate::interpreter::Fault;

/// Registers at a trap. `regs` in DWARF order (0 rax, 1 rdx, 2 rcx, 3 rbx, 4 rsi,
/// 5 rdi, 6 rbp, 7 rsp, 8..=15 r8..r15); `pc` is RIP as the CPU saved it (after
/// `int3`: breakpoint address + 1); `flags` is RFLAGS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapRegisters {
    /// General purpose registers by DWARF number.
    pub regs: [u64; 16],
    /// RIP as saved by the CPU.
    pub pc: u64,
    /// RFLAGS.
    pub flags: u64,
}

/// The breakpoint instruction (`int3`).
pub const BREAKPOINT: [u8; 1] = [0xcc];
/// The longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;
/// Bytes of one out-of-line slot (a multiple of 16): the longest instruction plus
/// the longest jump back (`jmp [rip+0]` and an 8-byte address, 14 bytes).
pub const SLOT_SIZE: usize = 32;

const _: () =
    assert!(SLOT_SIZE.is_multiple_of(16) && MAX_INSN_LEN + JUMP_ABSOLUTE_LEN <= SLOT_SIZE);

/// DWARF number of RAX.
const RAX: usize = 0;
/// DWARF number of RCX.
const RCX: usize = 2;
/// DWARF number of RBP.
const RBP: usize = 6;
/// DWARF number of RSP.
const RSP: usize = 7;

/// RFLAGS bits the conditional branches test.
const CARRY: u64 = 1 << 0;
const PARITY: u64 = 1 << 2;
const ZERO: u64 = 1 << 6;
const SIGN: u64 = 1 << 7;
const OVERFLOW: u64 = 1 << 11;

/// `jmp rel32`.
const JUMP_RELATIVE_LEN: usize = 5;
/// `jmp [rip+0]` followed by the 8-byte target.
const JUMP_ABSOLUTE_LEN: usize = 14;

/// The address of the breakpoint that trapped (RIP points past `int3`).
#[unsafe(link_section = ".text.probeport")]
pub fn breakpoint_address(regs: &TrapRegisters) -> u64 {
    regs.pc.wrapping_sub(BREAKPOINT.len() as u64)
}

/// The interrupted stack pointer.
#[unsafe(link_section = ".text.probeport")]
pub fn stack_pointer(regs: &TrapRegisters) -> u64 {
    regs.regs[RSP]
}

/// The interrupted frame pointer (RBP).
#[unsafe(link_section = ".text.probeport")]
pub fn frame_pointer(regs: &TrapRegisters) -> u64 {
    regs.regs[RBP]
}

/// The integer return value register (RAX).
pub fn return_value(regs: &TrapRegisters) -> u64 {
    regs.regs[RAX]
}

/// A register or "none", by DWARF number.
const NO_REGISTER: u8 = u8::MAX;

/// The memory operand of an emulated `call [mem]`: `base + index * scale +
/// displacement`, with RIP-relative operands already resolved into the
/// displacement (and no base).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MemoryOperand {
    base: u8,
    index: u8,
    scale: u8,
    displacement: u64,
}

impl MemoryOperand {
    #[unsafe(link_section = ".text.probeport")]
    fn address(&self, regs: &TrapRegisters) -> u64 {
        let register = |number: u8| regs.regs.get(usize::from(number)).copied().unwrap_or(0);
        register(self.base)
            .wrapping_add(register(self.index).wrapping_mul(u64::from(self.scale)))
            .wrapping_add(self.displacement)
    }
}

/// The branches that count in RCX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CountBranch {
    /// `loop`: decrement RCX, branch if not zero.
    Loop,
    /// `loope`: decrement RCX, branch if not zero and ZF set.
    LoopWhileEqual,
    /// `loopne`: decrement RCX, branch if not zero and ZF clear.
    LoopWhileNotEqual,
    /// `jrcxz`: branch if RCX is zero.
    JumpIfRcxZero,
    /// `jecxz`: branch if ECX is zero.
    JumpIfEcxZero,
}

/// How the displaced instruction runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// From the slot, followed by a jump back.
    OutOfLine,
    /// Does nothing: the next instruction follows.
    Skip,
    /// `jmp rel`.
    Jump { target: u64 },
    /// `jcc rel`, with the condition's encoding (the low nibble of the opcode).
    Conditional { condition: u8, target: u64 },
    /// `loop*`, `jrcxz`, `jecxz`.
    Count { branch: CountBranch, target: u64 },
    /// `call rel32`.
    Call { target: u64 },
    /// `call reg`, by DWARF number.
    CallRegister { register: u8 },
    /// `call [mem]`.
    CallMemory { operand: MemoryOperand },
    /// `ret` / `ret imm16`: the bytes released after popping the return address.
    Return { release: u16 },
}

/// How a displaced instruction is run after the handler: its bytes, its address
/// and whether it runs from the slot or is emulated (with its targets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Displaced {
    address: u64,
    bytes: [u8; MAX_INSN_LEN],
    len: u8,
    kind: Kind,
}

impl Displaced {
    /// The instruction's length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always false: an instruction has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The instruction's bytes.
    pub fn original(&self) -> &[u8] {
        &self.bytes[..self.len()]
    }

    /// The instruction's address.
    pub fn address(&self) -> u64 {
        self.address
    }

    /// Whether [`resume`] emulates the instruction (the slot is not used).
    pub fn is_emulated(&self) -> bool {
        self.kind != Kind::OutOfLine
    }

    /// A short name of how [`resume`] runs the instruction, for diagnostics and
    /// statistics: `"out-of-line"`, `"skip"`, `"jump"`, `"jcc"`, `"loop"`, `"call"`,
    /// `"call-indirect"` or `"ret"`.
    pub fn strategy(&self) -> &'static str {
        match self.kind {
            Kind::OutOfLine => "out-of-line",
            Kind::Skip => "skip",
            Kind::Jump { .. } => "jump",
            Kind::Conditional { .. } => "jcc",
            Kind::Count { .. } => "loop",
            Kind::Call { .. } => "call",
            Kind::CallRegister { .. } | Kind::CallMemory { .. } => "call-indirect",
            Kind::Return { .. } => "ret",
        }
    }

    #[unsafe(link_section = ".text.probeport")]
    fn next_address(&self) -> u64 {
        self.address.wrapping_add(u64::from(self.len))
    }
}

/// The bytes to write into the probe's out-of-line slot (empty when the
/// instruction is emulated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotCode {
    bytes: [u8; SLOT_SIZE],
    len: u8,
}

impl SlotCode {
    const EMPTY: Self = Self {
        bytes: [BREAKPOINT[0]; SLOT_SIZE],
        len: 0,
    };

    /// The slot's code.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn push(&mut self, bytes: &[u8]) {
        let start = usize::from(self.len);
        let end = start + bytes.len();
        // Callers stay within SLOT_SIZE (checked by the constant assertion above);
        // `get_mut` keeps this panic-free regardless.
        if let Some(destination) = self.bytes.get_mut(start..end) {
            destination.copy_from_slice(bytes);
            self.len = end as u8;
        }
    }
}

/// Why an instruction cannot be probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrepareError {
    /// The bytes are not a valid instruction, or are cut short.
    Undecodable,
    /// The instruction cannot run displaced, or must never be probed.
    Unrelocatable,
    /// The slot is more than ±2 GiB away from a RIP-relative operand's target.
    OutOfReach,
}

impl fmt::Display for PrepareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Undecodable => "not a valid instruction",
            Self::Unrelocatable => "instruction cannot run displaced",
            Self::OutOfReach => "out-of-line slot out of reach of the instruction's operand",
        })
    }
}

/// Decodes one 64-bit instruction at the start of `code`.
fn decode(address: u64, code: &[u8]) -> Result<(Decoder<'_>, Instruction), PrepareError> {
    let code = code.get(..MAX_INSN_LEN).unwrap_or(code);
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    if !decoder.can_decode() {
        return Err(PrepareError::Undecodable);
    }
    decoder.decode_out(&mut instruction);
    if instruction.is_invalid() || decoder.last_error() != DecoderError::None {
        return Err(PrepareError::Undecodable);
    }
    Ok((decoder, instruction))
}

/// Decode the instruction at `address` from `code` (the bytes at `address`, up to
/// [`MAX_INSN_LEN`]; may be shorter near the end of text) and prepare it to run
/// displaced from the slot at `slot_address`.
///
/// Returns how to run it and the code to write into the slot (empty when the
/// instruction is emulated).
pub fn prepare(
    address: u64,
    code: &[u8],
    slot_address: u64,
) -> Result<(Displaced, SlotCode), PrepareError> {
    let (decoder, instruction) = decode(address, code)?;
    let len = instruction.len();
    let original = code.get(..len).ok_or(PrepareError::Undecodable)?;
    let mut bytes = [0; MAX_INSN_LEN];
    bytes
        .get_mut(..len)
        .ok_or(PrepareError::Undecodable)?
        .copy_from_slice(original);
    let kind = classify(&instruction)?;
    if !matches!(kind, Kind::OutOfLine | Kind::Skip) && has_operand_size_prefix(original) {
        // Intel ignores 0x66 on near branches in 64-bit mode, AMD truncates the
        // target (or pops 16 bits): emulation cannot know which CPU it runs on.
        return Err(PrepareError::Unrelocatable);
    }
    let displaced = Displaced {
        address,
        bytes,
        len: len as u8,
        kind,
    };
    if kind != Kind::OutOfLine {
        return Ok((displaced, SlotCode::EMPTY));
    }

    let mut slot = SlotCode::EMPTY;
    let slot_next = slot_address.wrapping_add(len as u64);
    if instruction.is_ip_rel_memory_operand() {
        // Only RIP-relative operands reach here (classify refuses EIP-relative
        // ones), and those always carry a 32-bit displacement.
        let offsets = decoder.get_constant_offsets(&instruction);
        let start = offsets.displacement_offset();
        if !offsets.has_displacement() || offsets.displacement_size() != 4 {
            return Err(PrepareError::Unrelocatable);
        }
        let target = instruction.ip_rel_memory_address();
        let displacement = i32::try_from(target.wrapping_sub(slot_next) as i64)
            .map_err(|_| PrepareError::OutOfReach)?;
        bytes
            .get_mut(start..start + 4)
            .ok_or(PrepareError::Unrelocatable)?
            .copy_from_slice(&displacement.to_le_bytes());
    }
    slot.push(&bytes[..len]);

    let back = displaced.next_address();
    let jump_end = slot_next.wrapping_add(JUMP_RELATIVE_LEN as u64);
    match i32::try_from(back.wrapping_sub(jump_end) as i64) {
        Ok(relative) => {
            slot.push(&[0xe9]);
            slot.push(&relative.to_le_bytes());
        }
        Err(_) => {
            slot.push(&[0xff, 0x25, 0, 0, 0, 0]);
            slot.push(&back.to_le_bytes());
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
            if instruction.is_ip_rel_memory_operand() && instruction.memory_base() != Register::RIP
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

/// Whether `address` starts an instruction, decoding linearly from
/// `function_start` over `code` (the bytes from `function_start`).
///
/// False when `address` is outside `code`, falls inside an instruction, or lies
/// past bytes that do not decode.
pub fn is_instruction_boundary(function_start: u64, code: &[u8], address: u64) -> bool {
    let Some(offset) = address.checked_sub(function_start) else {
        return false;
    };
    let Ok(offset) = usize::try_from(offset) else {
        return false;
    };
    if offset >= code.len() {
        return false;
    }
    let mut decoder = Decoder::with_ip(64, code, function_start, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    while decoder.can_decode() {
        let position = decoder.position();
        if position >= offset {
            return position == offset;
        }
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            return false;
        }
    }
    false
}

/// Access to the interrupted stack for emulation (push of a call's return address,
/// pop for `ret`), and to the pointer an emulated `call [mem]` loads. Both must be
/// fault-tolerant: a bad address is an `Err`, never a crash.
pub trait StackAccess {
    /// Reads the u64 at `address`.
    fn read_u64(&mut self, address: u64) -> Result<u64, Fault>;
    /// Writes the u64 at `address`.
    fn write_u64(&mut self, address: u64, value: u64) -> Result<(), Fault>;
}

/// Whether the `jcc` with condition nibble `condition` is taken under `flags`.
#[unsafe(link_section = ".text.probeport")]
fn condition_holds(condition: u8, flags: u64) -> bool {
    let set = |bit: u64| flags & bit != 0;
    let less = set(SIGN) != set(OVERFLOW);
    let holds = match condition >> 1 {
        0 => set(OVERFLOW),
        1 => set(CARRY),
        2 => set(ZERO),
        3 => set(CARRY) || set(ZERO),
        4 => set(SIGN),
        5 => set(PARITY),
        6 => less,
        _ => set(ZERO) || less,
    };
    holds != (condition & 1 == 1)
}

/// After the handler: make the CPU run the displaced instruction and continue.
///
/// Out of line: `regs.pc = slot_address`, where [`prepare`]'s slot code must have
/// been written. Emulated: updates pc, rsp, rcx and the stack as the instruction
/// would. On a fault (an emulated push or pop on a bad stack, or a bad `call [mem]`
/// pointer) `regs` is left unchanged and the faulting address returned.
#[unsafe(link_section = ".text.probeport")]
pub fn resume(
    displaced: &Displaced,
    regs: &mut TrapRegisters,
    slot_address: u64,
    stack: &mut dyn StackAccess,
) -> Result<(), Fault> {
    let next = displaced.next_address();
    // A function rather than a closure, so that it can carry the section too.
    #[unsafe(link_section = ".text.probeport")]
    fn call(
        regs: &mut TrapRegisters,
        stack: &mut dyn StackAccess,
        next: u64,
        target: u64,
    ) -> Result<(), Fault> {
        let top = regs.regs[RSP].wrapping_sub(8);
        stack.write_u64(top, next)?;
        regs.regs[RSP] = top;
        regs.pc = target;
        Ok(())
    }
    match displaced.kind {
        Kind::OutOfLine => regs.pc = slot_address,
        Kind::Skip => regs.pc = next,
        Kind::Jump { target } => regs.pc = target,
        Kind::Conditional { condition, target } => {
            regs.pc = if condition_holds(condition, regs.flags) {
                target
            } else {
                next
            };
        }
        Kind::Count { branch, target } => {
            let count = regs.regs[RCX];
            let zero = regs.flags & ZERO != 0;
            let (count, taken) = match branch {
                CountBranch::Loop => (count.wrapping_sub(1), count != 1),
                CountBranch::LoopWhileEqual => (count.wrapping_sub(1), count != 1 && zero),
                CountBranch::LoopWhileNotEqual => (count.wrapping_sub(1), count != 1 && !zero),
                CountBranch::JumpIfRcxZero => (count, count == 0),
                CountBranch::JumpIfEcxZero => (count, count as u32 == 0),
            };
            regs.regs[RCX] = count;
            regs.pc = if taken { target } else { next };
        }
        Kind::Call { target } => return call(regs, stack, next, target),
        Kind::CallRegister { register } => {
            let target = regs.regs.get(usize::from(register)).copied().unwrap_or(0);
            return call(regs, stack, next, target);
        }
        Kind::CallMemory { operand } => {
            let target = stack.read_u64(operand.address(regs))?;
            return call(regs, stack, next, target);
        }
        Kind::Return { release } => {
            let top = regs.regs[RSP];
            let target = stack.read_u64(top)?;
            regs.regs[RSP] = top.wrapping_add(8).wrapping_add(u64::from(release));
            regs.pc = target;
        }
    }
    Ok(())
}

/// Defines, in the kernel image, an executable area of `$size` bytes filled with
/// `int3`, for [`crate::platform::Platform::out_of_line_area`].
///
/// It expands to a module named `$symbol` with `pub const SIZE: usize` and
/// `pub fn range() -> core::ops::Range<u64>`, the area's address range:
///
/// ```ignore
/// kernel_stub::out_of_line_area!(probe_slots, 64 * 1024);
/// // in the Platform impl:
/// fn out_of_line_area(&self) -> core::ops::Range<u64> { probe_slots::range() }
/// ```
///
/// The area lives in section `.text.probeport_slots` (allocated, executable), so a
/// linker script that collects `.text.*` into the kernel text places it there,
/// within ±2 GiB of the rest of the code. The assembler symbol is
/// `__probeport_out_of_line_<symbol>`.
#[macro_export]
macro_rules! out_of_line_area {
    ($symbol:ident, $size:expr) => {
        #[allow(dead_code)]
        #[doc = concat!("The out-of-line area `", stringify!($symbol), "` (see `kernel_stub::out_of_line_area!`).")]
        pub mod $symbol {
            /// Size of the area in bytes.
            pub const SIZE: usize = $size;

            // SAFETY: the assembly only defines data (int3 bytes) in its own section
            // and one global label; it executes nothing and touches no register.
            // The bytes are never read or written through Rust: the stub only takes
            // the label's address and writes through `Platform::write_text`.
            ::core::arch::global_asm!(
                ".pushsection .text.probeport_slots,\"ax\",@progbits",
                ".balign 16",
                concat!(".globl __probeport_out_of_line_", stringify!($symbol)),
                concat!(".type __probeport_out_of_line_", stringify!($symbol), ",@object"),
                concat!("__probeport_out_of_line_", stringify!($symbol), ":"),
                ".fill {size}, 1, 0xcc",
                concat!(".size __probeport_out_of_line_", stringify!($symbol), ", {size}"),
                ".popsection",
                size = const SIZE,
            );

            // SAFETY: the declaration matches the label defined above; the static
            // is only ever used for its address (`&raw const`), never read.
            unsafe extern "C" {
                #[link_name = concat!("__probeport_out_of_line_", stringify!($symbol))]
                static START: u8;
            }

            /// The area's address range.
            pub fn range() -> ::core::ops::Range<u64> {
                let start = &raw const START as u64;
                start..start + SIZE as u64
            }
        }
    };
}
