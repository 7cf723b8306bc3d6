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
//! - Nothing here allocates or panics, on any input: the decoder ([`decode`]) works
//!   on borrowed bytes with `get`, and every computation on addresses wraps.
//! - The decoder accepts only what its tables describe exactly; anything else is
//!   [`PrepareError::Undecodable`], never a guess. The refusals above are decided
//!   by opcode (map, opcode byte, ModRM `/digit` or byte, mandatory prefix).
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

pub mod decode;

use decode::{Instruction, OpcodeMap};

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
pub const MAX_INSN_LEN: usize = decode::MAX_LEN;
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

/// Whether `lahf`/`sahf` are valid in 64-bit mode (CPUID 8000_0001h ECX bit 0),
/// which the jump probes' detours use when the CPU has them.
pub fn has_lahf_sahf() -> bool {
    use core::arch::x86_64::__cpuid;
    // `cpuid` is unprivileged, changes nothing, and leaf 8000_0000h exists on
    // every x86-64 CPU.
    let highest = __cpuid(0x8000_0000).eax;
    highest >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & 1 != 0
}

/// The probe-context slot of the frame pointer (RBP's DWARF number).
pub const FRAME_POINTER_SLOT: usize = RBP;

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
        self.bytes.get(..self.len()).unwrap_or(&self.bytes)
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
        self.bytes
            .get(..usize::from(self.len))
            .unwrap_or(&self.bytes)
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
    let code = code.get(..MAX_INSN_LEN).unwrap_or(code);
    let instruction = decode::decode(code).ok_or(PrepareError::Undecodable)?;
    let len = instruction.len();
    let original = code.get(..len).ok_or(PrepareError::Undecodable)?;
    let mut bytes = [0; MAX_INSN_LEN];
    bytes
        .get_mut(..len)
        .ok_or(PrepareError::Undecodable)?
        .copy_from_slice(original);
    let kind = classify(&instruction, address, original)?;
    if !matches!(kind, Kind::OutOfLine | Kind::Skip) && instruction.prefixes().operand_size() {
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
    if let Some(target) = instruction.rip_relative_target(address, original) {
        // Only RIP-relative operands reach here (classify refuses EIP-relative
        // ones), and those always carry a 32-bit displacement.
        let field = instruction
            .displacement()
            .filter(|field| field.size == 4)
            .ok_or(PrepareError::Unrelocatable)?;
        let start = usize::from(field.offset);
        let displacement = i32::try_from(target.wrapping_sub(slot_next) as i64)
            .map_err(|_| PrepareError::OutOfReach)?;
        bytes
            .get_mut(start..start + 4)
            .ok_or(PrepareError::Unrelocatable)?
            .copy_from_slice(&displacement.to_le_bytes());
    }
    slot.push(bytes.get(..len).ok_or(PrepareError::Undecodable)?);

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

/// The DWARF number of a general purpose register by its hardware number (0 rax,
/// 1 rcx, 2 rdx, 3 rbx, 4 rsp, 5 rbp, 6 rsi, 7 rdi, 8..=15 r8..r15).
fn dwarf_number(hardware: u8) -> u8 {
    match hardware {
        1 => 2,
        2 => 1,
        4 => 7,
        5 => 6,
        6 => 4,
        7 => 5,
        other => other,
    }
}

/// Whether the instruction must never run displaced (see the module's design),
/// by opcode.
fn is_refused(instruction: &Instruction) -> bool {
    let reg = instruction.reg().unwrap_or(0);
    let modrm = instruction.modrm_byte().unwrap_or(0);
    let memory = instruction.modrm().is_some_and(|modrm| modrm.is_memory());
    let prefixes = instruction.prefixes();
    match (instruction.map(), instruction.opcode()) {
        // `mov ss`.
        (OpcodeMap::Primary, 0x8e) => reg == 2,
        // `ret far imm16`, `ret far`, `int3`, `int n`, `iret`, `int1`, `hlt`, `sti`.
        (OpcodeMap::Primary, 0xca..=0xcd | 0xcf | 0xf1 | 0xf4 | 0xfb) => true,
        // `xbegin`.
        (OpcodeMap::Primary, 0xc7) => reg == 7,
        (OpcodeMap::Secondary, opcode) => match opcode {
            // `lldt`, `ltr`.
            0x00 => matches!(reg, 2 | 3),
            // `lgdt`, `lidt`, `lmsw`; the register forms below.
            0x01 if memory => matches!(reg, 2 | 3 | 6),
            0x01 => {
                reg == 6
                    || matches!(
                        modrm,
                        // enclv, vmcall, vmlaunch, vmresume, mwait, encls.
                        0xc0..=0xc3 | 0xc9 | 0xcf
                            // vmfunc, enclu, vmrun, vmmcall, swapgs, mwaitx.
                            | 0xd4 | 0xd7 | 0xd8 | 0xd9 | 0xf8 | 0xfb
                    )
            }
            // `syscall`, `sysret`, `ud2`, `sysenter`, `sysexit`.
            0x05 | 0x07 | 0x0b | 0x34 | 0x35 => true,
            // `mov` to and from control and debug registers.
            0x20..=0x23 => true,
            // `rsm`, `ud1`, `ud0`.
            0xaa | 0xb9 | 0xff => true,
            // `tpause` (66), `umwait` (F2).
            0xae => !memory && reg == 6 && (prefixes.operand_size() || prefixes.repeat_not_equal()),
            _ => false,
        },
        _ => false,
    }
}

/// Decides how `instruction`, at `address` with bytes `code`, runs displaced.
fn classify(instruction: &Instruction, address: u64, code: &[u8]) -> Result<Kind, PrepareError> {
    if is_refused(instruction) {
        return Err(PrepareError::Unrelocatable);
    }
    let target = instruction.relative_target(address, code).unwrap_or(0);
    let prefixes = instruction.prefixes();
    let reg = instruction.reg();
    let count = |branch| Kind::Count { branch, target };
    let kind = match (instruction.map(), instruction.opcode()) {
        (OpcodeMap::Primary, opcode @ 0x70..=0x7f)
        | (OpcodeMap::Secondary, opcode @ 0x80..=0x8f) => Kind::Conditional {
            condition: opcode & 0xf,
            target,
        },
        (OpcodeMap::Primary, 0xe9 | 0xeb) => Kind::Jump { target },
        (OpcodeMap::Primary, 0xe8) => Kind::Call { target },
        (OpcodeMap::Primary, 0xc3) => Kind::Return { release: 0 },
        (OpcodeMap::Primary, 0xc2) => Kind::Return {
            release: instruction.immediate_value(code) as u16,
        },
        // `loop*` counting in ECX.
        (OpcodeMap::Primary, 0xe0..=0xe2) if prefixes.address_size() => {
            return Err(PrepareError::Unrelocatable);
        }
        (OpcodeMap::Primary, 0xe0) => count(CountBranch::LoopWhileNotEqual),
        (OpcodeMap::Primary, 0xe1) => count(CountBranch::LoopWhileEqual),
        (OpcodeMap::Primary, 0xe2) => count(CountBranch::Loop),
        (OpcodeMap::Primary, 0xe3) if prefixes.address_size() => count(CountBranch::JumpIfEcxZero),
        (OpcodeMap::Primary, 0xe3) => count(CountBranch::JumpIfRcxZero),
        (OpcodeMap::Primary, 0xff) if reg == Some(2) => call_indirect(instruction, address, code)?,
        // Far `call` and `jmp`.
        (OpcodeMap::Primary, 0xff) if matches!(reg, Some(3 | 5)) => {
            return Err(PrepareError::Unrelocatable);
        }
        // `nop` (not `pause`, nor `xchg` with r8).
        (OpcodeMap::Primary, 0x90) if !prefixes.repeat_last() && instruction.rex() & 1 == 0 => {
            Kind::Skip
        }
        // `nop r/m` (`/0`; the others are reserved hint nops), `endbr64`, `endbr32`
        // (the decoder accepts no other `0F 1E`).
        (OpcodeMap::Secondary, 0x1f) if reg == Some(0) => Kind::Skip,
        (OpcodeMap::Secondary, 0x1e) => Kind::Skip,
        _ => {
            if instruction.is_ip_relative() && prefixes.address_size() {
                // EIP-relative: the target wraps at 4 GiB; not worth relocating.
                return Err(PrepareError::Unrelocatable);
            }
            Kind::OutOfLine
        }
    };
    Ok(kind)
}

/// `call reg` or `call [mem]`, emulated.
fn call_indirect(
    instruction: &Instruction,
    address: u64,
    code: &[u8],
) -> Result<Kind, PrepareError> {
    let modrm = instruction.modrm().ok_or(PrepareError::Unrelocatable)?;
    let rex = instruction.rex();
    if !modrm.is_memory() {
        let register = dwarf_number(modrm.rm | ((rex & 1) << 3));
        return Ok(Kind::CallRegister { register });
    }
    let prefixes = instruction.prefixes();
    if prefixes.fs_or_gs() || prefixes.address_size() {
        // Through FS or GS (a base the stub cannot see), or a 32-bit address.
        return Err(PrepareError::Unrelocatable);
    }
    let operand = if let Some(target) = instruction.rip_relative_target(address, code) {
        MemoryOperand {
            base: NO_REGISTER,
            index: NO_REGISTER,
            scale: 0,
            displacement: target,
        }
    } else {
        MemoryOperand {
            base: instruction.memory_base().map_or(NO_REGISTER, dwarf_number),
            index: instruction.memory_index().map_or(NO_REGISTER, dwarf_number),
            scale: instruction.memory_scale(),
            displacement: instruction.displacement_value(code),
        }
    };
    Ok(Kind::CallMemory { operand })
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
    let mut position = 0;
    while position < offset {
        match code.get(position..).and_then(decode::decode) {
            Some(instruction) => position += instruction.len(),
            None => return false,
        }
    }
    position == offset
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
