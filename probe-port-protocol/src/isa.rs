//! The handler instruction set: RFC 9669 BPF encoding with probeport's helpers.
//!
//! # Design
//!
//! A handler program is a sequence of 8-byte instructions in the encoding that
//! RFC 9669 standardises (64-bit registers `r0`–`r10`, `r10` the read-only frame
//! pointer). On the wire every instruction is little-endian: opcode byte, register
//! byte (destination in the low nibble, source in the high nibble), a 16-bit signed
//! offset, a 32-bit signed immediate. A 64-bit immediate load (`lddw`) takes two
//! slots; the second slot carries the upper half in its immediate and zeros elsewhere.
//!
//! The helper set is probeport's own: each helper has a fixed number, a fixed
//! argument list and documented return values (see [`Helper`]). Helper numbers never
//! change meaning; new helpers get new numbers and a capability bit.
//!
//! # Invariants
//!
//! - [`Insn`] has exactly the wire layout, so a verified program can be stored and
//!   executed without any other representation.
//! - Every constant here is part of the protocol: changing one is a protocol break.

use core::fmt;

/// Size in bytes of one encoded instruction.
pub const INSN_SIZE: usize = 8;

/// The largest program the protocol allows, in instruction slots. A stub may
/// announce a smaller limit in its handshake.
pub const MAX_INSNS: usize = 4096;

/// Size in bytes of the handler stack that `r10` points just past.
pub const STACK_SIZE: usize = 512;

/// Number of registers: `r0`–`r10`.
pub const REGISTER_COUNT: usize = 11;

/// The read-only frame pointer register.
pub const FRAME_POINTER: u8 = 10;

/// Instruction classes, sources, operations, sizes and modes of RFC 9669.
pub mod op {
    /// Wide immediate loads (`lddw` only; the legacy packet modes are refused).
    pub const CLASS_LD: u8 = 0x00;
    /// Loads from memory into a register.
    pub const CLASS_LDX: u8 = 0x01;
    /// Stores of an immediate into memory.
    pub const CLASS_ST: u8 = 0x02;
    /// Stores of a register into memory.
    pub const CLASS_STX: u8 = 0x03;
    /// 32-bit arithmetic.
    pub const CLASS_ALU: u8 = 0x04;
    /// 64-bit jumps, calls and exit.
    pub const CLASS_JMP: u8 = 0x05;
    /// 32-bit jumps.
    pub const CLASS_JMP32: u8 = 0x06;
    /// 64-bit arithmetic.
    pub const CLASS_ALU64: u8 = 0x07;
    /// Mask selecting the class bits of an opcode.
    pub const CLASS_MASK: u8 = 0x07;

    /// Operand is the immediate.
    pub const SRC_K: u8 = 0x00;
    /// Operand is the source register.
    pub const SRC_X: u8 = 0x08;
    /// Mask selecting the source bit.
    pub const SRC_MASK: u8 = 0x08;

    /// Mask selecting the operation bits of arithmetic and jump opcodes.
    pub const OP_MASK: u8 = 0xf0;
    /// `dst += src`.
    pub const ADD: u8 = 0x00;
    /// `dst -= src`.
    pub const SUB: u8 = 0x10;
    /// `dst *= src`.
    pub const MUL: u8 = 0x20;
    /// `dst /= src` (unsigned, or signed when the offset is 1); zero divisor gives 0.
    pub const DIV: u8 = 0x30;
    /// `dst |= src`.
    pub const OR: u8 = 0x40;
    /// `dst &= src`.
    pub const AND: u8 = 0x50;
    /// `dst <<= src`.
    pub const LSH: u8 = 0x60;
    /// `dst >>= src` (logical).
    pub const RSH: u8 = 0x70;
    /// `dst = -dst`.
    pub const NEG: u8 = 0x80;
    /// `dst %= src` (unsigned, or signed when the offset is 1); zero divisor keeps dst.
    pub const MOD: u8 = 0x90;
    /// `dst ^= src`.
    pub const XOR: u8 = 0xa0;
    /// `dst = src` (sign-extending from 8, 16 or 32 bits when the offset says so).
    pub const MOV: u8 = 0xb0;
    /// `dst >>= src` (arithmetic).
    pub const ARSH: u8 = 0xc0;
    /// Byte swap; the immediate is the width (16, 32 or 64).
    pub const END: u8 = 0xd0;

    /// Jump always (JMP: 16-bit offset; JMP32: 32-bit immediate offset).
    pub const JA: u8 = 0x00;
    /// Jump if equal.
    pub const JEQ: u8 = 0x10;
    /// Jump if greater (unsigned).
    pub const JGT: u8 = 0x20;
    /// Jump if greater or equal (unsigned).
    pub const JGE: u8 = 0x30;
    /// Jump if `dst & src` is non-zero.
    pub const JSET: u8 = 0x40;
    /// Jump if not equal.
    pub const JNE: u8 = 0x50;
    /// Jump if greater (signed).
    pub const JSGT: u8 = 0x60;
    /// Jump if greater or equal (signed).
    pub const JSGE: u8 = 0x70;
    /// Call a helper (immediate is the helper number).
    pub const CALL: u8 = 0x80;
    /// Return `r0` to the executor.
    pub const EXIT: u8 = 0x90;
    /// Jump if lower (unsigned).
    pub const JLT: u8 = 0xa0;
    /// Jump if lower or equal (unsigned).
    pub const JLE: u8 = 0xb0;
    /// Jump if lower (signed).
    pub const JSLT: u8 = 0xc0;
    /// Jump if lower or equal (signed).
    pub const JSLE: u8 = 0xd0;

    /// Mask selecting the access size of memory opcodes.
    pub const SIZE_MASK: u8 = 0x18;
    /// 4 bytes.
    pub const SIZE_W: u8 = 0x00;
    /// 2 bytes.
    pub const SIZE_H: u8 = 0x08;
    /// 1 byte.
    pub const SIZE_B: u8 = 0x10;
    /// 8 bytes.
    pub const SIZE_DW: u8 = 0x18;

    /// Mask selecting the mode of memory opcodes.
    pub const MODE_MASK: u8 = 0xe0;
    /// Immediate (used with `CLASS_LD | SIZE_DW` for `lddw`).
    pub const MODE_IMM: u8 = 0x00;
    /// Regular memory access.
    pub const MODE_MEM: u8 = 0x60;
    /// Sign-extending load.
    pub const MODE_MEMSX: u8 = 0x80;

    /// The opcode of the two-slot 64-bit immediate load.
    pub const LDDW: u8 = CLASS_LD | MODE_IMM | SIZE_DW;
    /// Byte swap to little-endian (ALU class; a no-op on little-endian hosts).
    pub const TO_LE: u8 = 0x00;
    /// Byte swap to big-endian (ALU class), or unconditional swap (ALU64 class).
    pub const TO_BE: u8 = 0x08;
}

/// One 8-byte instruction, laid out exactly as on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct Insn {
    /// Opcode: class, source and operation (or size and mode).
    pub code: u8,
    /// Destination register in the low nibble, source register in the high nibble.
    pub regs: u8,
    /// Signed offset: jump distance in slots, memory displacement, or an opcode modifier.
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

impl Insn {
    /// Builds an instruction from its fields; registers are truncated to 4 bits.
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Self {
            code,
            regs: (dst & 0x0f) | (src << 4),
            off,
            imm,
        }
    }

    /// The destination register number (0–15; only 0–10 pass the verifier).
    pub const fn dst(self) -> u8 {
        self.regs & 0x0f
    }

    /// The source register number (0–15; only 0–10 pass the verifier).
    pub const fn src(self) -> u8 {
        self.regs >> 4
    }

    /// The instruction class.
    pub const fn class(self) -> u8 {
        self.code & op::CLASS_MASK
    }

    /// The wire encoding of this instruction.
    pub const fn to_bytes(self) -> [u8; INSN_SIZE] {
        let off = self.off.to_le_bytes();
        let imm = self.imm.to_le_bytes();
        [
            self.code, self.regs, off[0], off[1], imm[0], imm[1], imm[2], imm[3],
        ]
    }

    /// Decodes one instruction from its wire encoding.
    pub const fn from_bytes(bytes: [u8; INSN_SIZE]) -> Self {
        Self {
            code: bytes[0],
            regs: bytes[1],
            off: i16::from_le_bytes([bytes[2], bytes[3]]),
            imm: i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }

    /// Whether this is the first slot of a two-slot `lddw`.
    pub const fn is_wide(self) -> bool {
        self.code == op::LDDW
    }
}

impl fmt::Debug for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Insn {{ code: {:#04x}, dst: r{}, src: r{}, off: {}, imm: {} }}",
            self.code,
            self.dst(),
            self.src(),
            self.off,
            self.imm
        )
    }
}

/// Why a byte string is not a sequence of instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length is not a multiple of [`INSN_SIZE`].
    TrailingBytes {
        /// The byte length received.
        len: usize,
    },
    /// More instructions than the output buffer (or [`MAX_INSNS`]) holds.
    TooLong {
        /// Instruction slots in the input.
        slots: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TrailingBytes { len } => {
                write!(f, "program is {len} bytes, not a multiple of {INSN_SIZE}")
            }
            Self::TooLong { slots } => write!(f, "program has {slots} slots, too many"),
        }
    }
}

/// Decodes wire bytes into `out`, returning the filled prefix. No allocation.
pub fn decode_into<'o>(bytes: &[u8], out: &'o mut [Insn]) -> Result<&'o [Insn], DecodeError> {
    if !bytes.len().is_multiple_of(INSN_SIZE) {
        return Err(DecodeError::TrailingBytes { len: bytes.len() });
    }
    let slots = bytes.len() / INSN_SIZE;
    if slots > out.len() || slots > MAX_INSNS {
        return Err(DecodeError::TooLong { slots });
    }
    for (slot, chunk) in out.iter_mut().zip(bytes.chunks_exact(INSN_SIZE)) {
        let mut raw = [0u8; INSN_SIZE];
        raw.copy_from_slice(chunk);
        *slot = Insn::from_bytes(raw);
    }
    Ok(&out[..slots])
}

/// Decodes wire bytes into a vector.
#[cfg(feature = "alloc")]
pub fn decode(bytes: &[u8]) -> Result<alloc::vec::Vec<Insn>, DecodeError> {
    let mut out = alloc::vec![Insn::default(); bytes.len() / INSN_SIZE];
    let len = decode_into(bytes, &mut out)?.len();
    out.truncate(len);
    Ok(out)
}

/// Encodes instructions into their wire bytes.
#[cfg(feature = "alloc")]
pub fn encode(insns: &[Insn]) -> alloc::vec::Vec<u8> {
    insns.iter().flat_map(|insn| insn.to_bytes()).collect()
}

/// Negative return values of helpers, errno-style (the Linux adapter returns the
/// same numbers from the kernel's own helpers).
pub mod helper_error {
    /// No such entry.
    pub const ENOENT: i64 = -2;
    /// Argument too large.
    pub const E2BIG: i64 = -7;
    /// A memory read faulted; the fault is counted against the probe.
    pub const EFAULT: i64 = -14;
    /// Invalid argument.
    pub const EINVAL: i64 = -22;
    /// No room: map full, or event ring full (the event is counted as lost).
    pub const ENOSPC: i64 = -28;
}

/// What a helper expects in one argument register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// Any initialised value.
    Scalar,
    /// A constant map number (known to the verifier), defined before the program.
    MapId,
    /// A constant, in `1..=STACK_SIZE`, known to the verifier: the size of the
    /// preceding (or following, see [`ArgKind::StackOut`]) stack buffer.
    Size,
    /// Pointer into the stack to `size` readable bytes, where `size` is the
    /// argument in register `size_arg` (1-based: `r1`–`r5`).
    StackIn {
        /// Register holding the size.
        size_arg: u8,
    },
    /// Pointer into the stack to `size` writable bytes (size as for `StackIn`).
    StackOut {
        /// Register holding the size.
        size_arg: u8,
    },
    /// Pointer into the stack to a key of the map named by register `map_arg`.
    MapKey {
        /// Register holding the map number.
        map_arg: u8,
    },
    /// Pointer into the stack to a value slot of the map named by register `map_arg`.
    MapValue {
        /// Register holding the map number.
        map_arg: u8,
    },
    /// A constant entry-value slot number in `0..ENTRY_SLOTS`.
    EntrySlot,
}

/// probeport's helper functions, by fixed number.
///
/// Arguments go in `r1`–`r5`, the result comes back in `r0`, and `r1`–`r5` are
/// clobbered (unreadable until written again). Errors are the negative values of
/// [`helper_error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum Helper {
    /// `read_kernel(dst, size, src)`: copy `size` bytes of kernel memory at `src`
    /// into the stack buffer `dst`. Returns 0, or `EFAULT` (buffer zeroed, fault
    /// counted with the faulting address).
    ReadKernel = 1,
    /// `read_kernel_str(dst, size, src)`: copy a NUL-terminated string of at most
    /// `size - 1` bytes, always NUL-terminating `dst`. Returns the bytes written
    /// including the NUL, or `EFAULT`.
    ReadKernelStr = 2,
    /// `read_user(dst, size, src)`: as `read_kernel` for the current task's user memory.
    ReadUser = 3,
    /// `read_user_str(dst, size, src)`: as `read_kernel_str` for user memory.
    ReadUserStr = 4,
    /// `cpu()`: the current CPU index, `0..cpu_count`.
    Cpu = 5,
    /// `task_id()`: the current task (thread) identifier, as the kernel numbers them.
    TaskId = 6,
    /// `task_name(dst, size)`: the current task's name, NUL-padded into `dst`.
    /// Returns the name's length without padding.
    TaskName = 7,
    /// `time_ns()`: monotonic nanoseconds since an arbitrary origin.
    TimeNs = 8,
    /// `map_lookup(map, key, value)`: copy the value for `key` into `value`.
    /// Returns 0, or `ENOENT` (value untouched).
    MapLookup = 9,
    /// `map_update(map, key, value)`: insert or replace. Returns 0, or `ENOSPC`
    /// when the map is full (counted as a drop).
    MapUpdate = 10,
    /// `map_delete(map, key)`: returns 0, or `ENOENT`.
    MapDelete = 11,
    /// `aggregate(map, key, value)`: fold `value` into the per-CPU aggregation for
    /// `key` as the map's kind says (count ignores the value). Returns 0 or `ENOSPC`.
    Aggregate = 12,
    /// `emit(data, size)`: append a record to this CPU's event ring. Returns 0, or
    /// `ENOSPC` when the ring is full (the record is counted lost, never silently).
    Emit = 13,
    /// `stack_trace(dst, size)`: write the kernel return addresses of the current
    /// stack as little-endian u64s into `dst`. Returns the number of addresses.
    StackTrace = 14,
    /// `entry_save(slot, value)`: in the entry program of a return site only, keep
    /// `value` for the return program, which reads it from the context's entry slots.
    EntrySave = 15,
}

impl Helper {
    /// Every helper, in number order.
    pub const ALL: [Helper; 15] = [
        Helper::ReadKernel,
        Helper::ReadKernelStr,
        Helper::ReadUser,
        Helper::ReadUserStr,
        Helper::Cpu,
        Helper::TaskId,
        Helper::TaskName,
        Helper::TimeNs,
        Helper::MapLookup,
        Helper::MapUpdate,
        Helper::MapDelete,
        Helper::Aggregate,
        Helper::Emit,
        Helper::StackTrace,
        Helper::EntrySave,
    ];

    /// The helper with this number, if any.
    pub const fn from_id(id: u32) -> Option<Helper> {
        if id >= 1 && id as usize <= Self::ALL.len() {
            Some(Self::ALL[id as usize - 1])
        } else {
            None
        }
    }

    /// The helper's fixed number.
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// The helper's name as the assembler spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Helper::ReadKernel => "read_kernel",
            Helper::ReadKernelStr => "read_kernel_str",
            Helper::ReadUser => "read_user",
            Helper::ReadUserStr => "read_user_str",
            Helper::Cpu => "cpu",
            Helper::TaskId => "task_id",
            Helper::TaskName => "task_name",
            Helper::TimeNs => "time_ns",
            Helper::MapLookup => "map_lookup",
            Helper::MapUpdate => "map_update",
            Helper::MapDelete => "map_delete",
            Helper::Aggregate => "aggregate",
            Helper::Emit => "emit",
            Helper::StackTrace => "stack_trace",
            Helper::EntrySave => "entry_save",
        }
    }

    /// The helper with this assembler name, if any.
    pub fn from_name(name: &str) -> Option<Helper> {
        Self::ALL.into_iter().find(|helper| helper.name() == name)
    }

    /// What each argument register `r1`, `r2`, … must hold.
    pub const fn args(self) -> &'static [ArgKind] {
        use ArgKind::*;
        match self {
            Helper::ReadKernel | Helper::ReadKernelStr | Helper::ReadUser | Helper::ReadUserStr => {
                &[StackOut { size_arg: 2 }, Size, Scalar]
            }
            Helper::Cpu | Helper::TaskId | Helper::TimeNs => &[],
            Helper::TaskName | Helper::StackTrace => &[StackOut { size_arg: 2 }, Size],
            Helper::MapLookup => &[MapId, MapKey { map_arg: 1 }, MapValue { map_arg: 1 }],
            Helper::MapUpdate => &[MapId, MapKey { map_arg: 1 }, MapValue { map_arg: 1 }],
            Helper::MapDelete => &[MapId, MapKey { map_arg: 1 }],
            Helper::Aggregate => &[MapId, MapKey { map_arg: 1 }, Scalar],
            Helper::Emit => &[StackIn { size_arg: 2 }, Size],
            Helper::EntrySave => &[EntrySlot, Scalar],
        }
    }
}

impl fmt::Display for Helper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
