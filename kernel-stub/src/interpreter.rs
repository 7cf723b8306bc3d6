//! The handler interpreter: runs RFC 9669 programs on a probe context.
//!
//! # Design
//!
//! [`run`] executes a program in one tight loop: fetch the instruction at `pc`,
//! check its register numbers, then a single `match` on the opcode byte. Registers
//! are a local array; the 512-byte stack is a zeroed local array of `run`, so a
//! program sees a fresh stack on every probe hit and nothing outlives the call.
//! [`run_on_stack`] runs on a stack buffer its caller keeps (the stub keeps one per
//! CPU) and zeroes only the bytes the verifier says the program can touch, the
//! `stack_depth` bytes below `r10`; an access below them traps as if it were
//! outside the stack, so the program never sees what an earlier run left there.
//!
//! Memory is addressed as in every BPF executor: `r10` holds the real address just
//! past the stack and `r1` the real address of the [`ProbeContext`]. Those numbers
//! are never dereferenced. A load or store address is translated by subtracting the
//! base of a region and checking that the access lies inside it; the bytes are then
//! read from (or written to) the Rust array. The stack is readable and writable, the
//! context only readable, and everything else is a [`Trap`]. Pointer arguments of
//! helpers are translated the same way into slices of the stack.
//!
//! Everything the program cannot do itself goes through [`Helpers`], which each
//! executor implements (the stub on real kernel memory, host tools and tests on
//! whatever they like). The interpreter checks every helper argument, turns the
//! helper's result into the value the program sees in `r0` (see
//! [`Helper`] for the numbers), and zeroes buffers
//! on failure so a program never sees stale bytes.
//!
//! [`run_traced`] is the same loop with a [`Tracer`] called before each
//! instruction; [`run`] passes [`NoTrace`], whose empty `step` compiles away.
//!
//! # Invariants
//!
//! - Defence in depth: the verifier runs first, but the interpreter is memory-safe
//!   and terminates for **any** input. Every out-of-range thing (unknown opcode,
//!   register above `r10`, write to `r10`, access outside the stack or context,
//!   store to the context, unknown helper or map, helper buffer outside the stack,
//!   backward jump, leaving the program) is a [`Trap`], never a panic.
//! - Termination: a negative jump offset traps at run time, so `pc` strictly
//!   increases and a program of `n` slots executes at most `n` instructions.
//! - No `unsafe`, no allocation, no recursion: this runs in probe context.

use core::fmt;
use core::ops::Range;

use probe_port_protocol::context::{CONTEXT_SIZE, ENTRY_SLOTS, ProbeContext};
use probe_port_protocol::isa::{FRAME_POINTER, Helper, Insn, REGISTER_COUNT, STACK_SIZE};
use probe_port_protocol::isa::{helper_error, op};
use probe_port_protocol::maps::{MAX_KEY_SIZE, MapId, MapKind, MapSpec};

/// A memory read through a helper failed at `address`.
///
/// The executor counts the fault against the probe itself; the interpreter zeroes
/// the destination buffer and returns `EFAULT` to the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fault {
    /// The first address that could not be read.
    pub address: u64,
}

/// A map or event ring has no room; the executor counts the drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Full;

/// Why [`Helpers::entry_save`] refused a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntrySaveError {
    /// The running program is not the entry program of a return site
    /// (the program sees `EINVAL`).
    NotEntryProgram,
    /// The bounded per-task store of entry values is full (the program sees
    /// `ENOSPC`; the executor counts the drop).
    Full,
}

/// What the interpreter needs from its executor: everything a handler cannot do
/// with registers and its stack alone.
///
/// One method per helper of the instruction set. The interpreter has already
/// checked every argument: buffers are slices of the handler's stack with the
/// sizes the program (or the map definition) gave, map numbers name maps that
/// [`Helpers::map_spec`] knows, and entry slots are below [`ENTRY_SLOTS`]. Methods
/// run in probe context: they must not block, allocate or panic.
///
/// Optional capabilities (user memory) have default methods that fail.
pub trait Helpers {
    /// Copies `dst.len()` bytes of kernel memory starting at `src` into `dst`.
    ///
    /// Returns `Ok(())`, or the first faulting address; the interpreter then zeroes
    /// `dst` (whatever was partly written) and returns `EFAULT` to the program.
    fn read_kernel(&mut self, dst: &mut [u8], src: u64) -> Result<(), Fault>;

    /// Copies the NUL-terminated kernel string at `src` into `dst`, at most
    /// `dst.len() - 1` bytes of it followed by a NUL (`dst` is never empty).
    ///
    /// Returns the bytes written **including** the NUL, in `1..=dst.len()`; bytes
    /// after the NUL are left as they were. The interpreter clamps the count to
    /// that range and writes the terminating NUL itself at `count - 1`, so `dst`
    /// is always terminated. On a fault, returns the faulting address; the
    /// interpreter zeroes `dst` and returns `EFAULT`.
    fn read_kernel_str(&mut self, dst: &mut [u8], src: u64) -> Result<usize, Fault>;

    /// As [`Helpers::read_kernel`] for the current task's user memory.
    ///
    /// The default, for kernels without user address spaces, always faults.
    fn read_user(&mut self, dst: &mut [u8], src: u64) -> Result<(), Fault> {
        let _ = dst;
        Err(Fault { address: src })
    }

    /// As [`Helpers::read_kernel_str`] for the current task's user memory.
    ///
    /// The default, for kernels without user address spaces, always faults.
    fn read_user_str(&mut self, dst: &mut [u8], src: u64) -> Result<usize, Fault> {
        let _ = dst;
        Err(Fault { address: src })
    }

    /// The current CPU index, in `0..cpu_count`.
    fn cpu(&mut self) -> u64;

    /// The current task (thread) identifier, as the kernel numbers them.
    fn task_id(&mut self) -> u64;

    /// Writes the current task's name into `dst`, which the interpreter has zeroed,
    /// so the rest stays NUL padding. Returns the name's length in bytes (at most
    /// `dst.len()`; the interpreter clamps it).
    fn task_name(&mut self, dst: &mut [u8]) -> usize;

    /// Monotonic nanoseconds since an arbitrary origin.
    fn time_ns(&mut self) -> u64;

    /// The definition of `map`, or `None` if the program's map set has no such map
    /// (the interpreter traps). The interpreter uses the key and value sizes to
    /// slice the stack and the kind to refuse hash operations on aggregations and
    /// the reverse (`EINVAL`).
    fn map_spec(&self, map: MapId) -> Option<MapSpec>;

    /// Copies the value stored under `key` (of the map's key size) into `value` (of
    /// the map's value size). Returns whether the key was present; when it was not,
    /// `value` must be left untouched (the program sees `ENOENT`).
    fn map_lookup(&mut self, map: MapId, key: &[u8], value: &mut [u8]) -> bool;

    /// Inserts or replaces the value under `key`. Returns `Err(Full)` when the key
    /// is new and the map holds `max_entries` already (the program sees `ENOSPC`).
    fn map_update(&mut self, map: MapId, key: &[u8], value: &[u8]) -> Result<(), Full>;

    /// Removes `key`. Returns whether it was present (the program sees 0 or `ENOENT`).
    fn map_delete(&mut self, map: MapId, key: &[u8]) -> bool;

    /// Folds `value` into this CPU's aggregation entry for `key`, as the map's
    /// [`AggregateKind`](probe_port_protocol::maps::AggregateKind) says (a count
    /// ignores the value). Returns `Err(Full)` when the key is new and there is no
    /// room (the program sees `ENOSPC`).
    fn aggregate(&mut self, map: MapId, key: &[u8], value: i64) -> Result<(), Full>;

    /// Appends `record` to this CPU's event ring. Returns `Err(Full)` when the ring
    /// has no room; the executor counts the record as lost (the program sees
    /// `ENOSPC`).
    fn emit(&mut self, record: &[u8]) -> Result<(), Full>;

    /// Writes the kernel return addresses of the current stack as little-endian
    /// u64s into `dst`, innermost first. Returns how many it wrote (at most
    /// `dst.len() / 8`; the interpreter clamps it).
    fn stack_trace(&mut self, dst: &mut [u8]) -> usize;

    /// Keeps `value` in entry slot `slot` (below [`ENTRY_SLOTS`]) for the return
    /// program of the current return site, which finds it in the context.
    fn entry_save(&mut self, slot: usize, value: u64) -> Result<(), EntrySaveError>;
}

/// Observes execution one instruction at a time (instruction counts, debuggers).
pub trait Tracer {
    /// Called before the instruction at slot `pc` runs, with the registers
    /// `r0`–`r10` as they are at that moment.
    fn step(&mut self, pc: usize, insn: Insn, registers: &[u64]);
}

/// The tracer that does nothing; [`run`] uses it and it compiles away.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTrace;

impl Tracer for NoTrace {
    #[inline(always)]
    fn step(&mut self, _pc: usize, _insn: Insn, _registers: &[u64]) {}
}

/// A tracer counting executed instructions (`lddw` counts once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstructionCounter {
    /// Instructions executed so far.
    pub count: u64,
}

impl Tracer for InstructionCounter {
    #[inline(always)]
    fn step(&mut self, _pc: usize, _insn: Insn, _registers: &[u64]) {
        self.count += 1;
    }
}

/// Why a program stopped before `exit`, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trap {
    /// The slot of the offending instruction; for [`TrapKind::OutOfProgram`], the
    /// slot execution tried to reach.
    pub pc: u32,
    /// What went wrong.
    pub kind: TrapKind,
}

/// What went wrong in a [`Trap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrapKind {
    /// An opcode the interpreter does not execute, or a known opcode with an
    /// undefined modifier (division offset, sign-extension width, byte-swap width,
    /// call kind, `lddw` source or second slot).
    InvalidInstruction {
        /// The opcode byte.
        code: u8,
    },
    /// A register number above `r10`.
    InvalidRegister {
        /// The register number.
        register: u8,
    },
    /// An instruction writes `r10`, the read-only frame pointer.
    FramePointerWrite,
    /// A load or store outside the stack and the context.
    OutOfBounds {
        /// The address accessed.
        address: u64,
        /// The access width in bytes.
        size: u8,
    },
    /// A store into the read-only context.
    ContextStore {
        /// The byte offset into the context.
        offset: u16,
    },
    /// A jump with a negative offset (only forward jumps guarantee termination).
    BackwardJump {
        /// The offset, in slots.
        offset: i32,
    },
    /// Execution fell off the end of the program or jumped past it.
    OutOfProgram,
    /// A `lddw` in the last slot, without its second half.
    IncompleteLddw,
    /// A call to a helper number that does not exist.
    UnknownHelper {
        /// The helper number from the immediate.
        id: i32,
    },
    /// A map helper named a map the executor does not know.
    UnknownMap {
        /// The map argument as found in `r1`.
        map: u64,
    },
    /// A helper argument out of range: a buffer outside the stack, a size of 0 or
    /// above the stack size, an entry slot out of range.
    BadHelperArgument {
        /// The helper called.
        helper: Helper,
        /// The argument register (`1`–`5`).
        register: u8,
        /// The argument's value.
        value: u64,
    },
}

impl fmt::Display for TrapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TrapKind::InvalidInstruction { code } => {
                write!(f, "invalid instruction (opcode {code:#04x})")
            }
            TrapKind::InvalidRegister { register } => write!(f, "invalid register r{register}"),
            TrapKind::FramePointerWrite => f.write_str("write to the read-only frame pointer r10"),
            TrapKind::OutOfBounds { address, size } => {
                write!(
                    f,
                    "{size}-byte access at {address:#x} is outside the stack and context"
                )
            }
            TrapKind::ContextStore { offset } => {
                write!(f, "store into the read-only context at offset {offset}")
            }
            TrapKind::BackwardJump { offset } => write!(f, "backward jump by {offset} slots"),
            TrapKind::OutOfProgram => f.write_str("execution left the program"),
            TrapKind::IncompleteLddw => f.write_str("lddw without its second slot"),
            TrapKind::UnknownHelper { id } => write!(f, "unknown helper {id}"),
            TrapKind::UnknownMap { map } => write!(f, "unknown map {map}"),
            TrapKind::BadHelperArgument {
                helper,
                register,
                value,
            } => {
                write!(
                    f,
                    "{helper}: argument r{register} = {value:#x} is out of range"
                )
            }
        }
    }
}

impl fmt::Display for Trap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trap at slot {}: {}", self.pc, self.kind)
    }
}

/// Runs `program` on `context` and returns `r0` at `exit`.
///
/// The program is expected to be verified, but any input is safe: whatever the
/// program does wrong ends in a [`Trap`]. At most `program.len()` instructions run.
pub fn run<H: Helpers + ?Sized>(
    program: &[Insn],
    context: &ProbeContext,
    helpers: &mut H,
) -> Result<u64, Trap> {
    run_traced(program, context, helpers, &mut NoTrace)
}

/// [`run`] on the caller's `stack`, of which only the top `stack_depth` bytes
/// (those below `r10`; the whole stack if `stack_depth` is larger) are
/// addressable, and zeroed rounded up to whole 8-byte words (as the JIT's
/// prologue zeroes them): give the verifier's
/// [`stack_depth`](probe_port_protocol::verifier::VerifiedProgram::stack_depth) of
/// the program. A load, store or helper buffer below that depth traps
/// ([`TrapKind::OutOfBounds`], or a bad helper argument), so the bytes below are
/// never seen, whatever they hold. The same result as [`run`] for any program that
/// stays within `stack_depth`, without zeroing the whole stack on every run.
pub fn run_on_stack<H: Helpers + ?Sized>(
    program: &[Insn],
    context: &ProbeContext,
    helpers: &mut H,
    stack: &mut [u8; STACK_SIZE],
    stack_depth: usize,
) -> Result<u64, Trap> {
    let depth = stack_depth.min(STACK_SIZE);
    let zeroed = &mut stack[STACK_SIZE - depth.next_multiple_of(8).min(STACK_SIZE)..];
    // Not even an empty `fill` for a program without stack: a zero-length memset
    // can still cost (the host's AVX-512 memset does a masked store at the end of
    // the buffer, a microcode assist when that crosses into the next page).
    if !zeroed.is_empty() {
        zeroed.fill(0);
    }
    execute(
        program,
        context,
        helpers,
        &mut NoTrace,
        &mut stack[STACK_SIZE - depth..],
    )
}

/// The handler stack, aligned like a machine stack so aligned accesses stay aligned.
#[repr(C, align(8))]
struct StackMemory([u8; STACK_SIZE]);

/// Opcode bytes, spelled out from the class, source and operation bits.
mod code {
    use probe_port_protocol::isa::op::*;

    macro_rules! alu {
        ($($k32:ident $x32:ident $k64:ident $x64:ident = $op:expr;)*) => {$(
            pub(super) const $k32: u8 = CLASS_ALU | SRC_K | $op;
            pub(super) const $x32: u8 = CLASS_ALU | SRC_X | $op;
            pub(super) const $k64: u8 = CLASS_ALU64 | SRC_K | $op;
            pub(super) const $x64: u8 = CLASS_ALU64 | SRC_X | $op;
        )*};
    }
    alu! {
        ADD32_K ADD32_X ADD64_K ADD64_X = ADD;
        SUB32_K SUB32_X SUB64_K SUB64_X = SUB;
        MUL32_K MUL32_X MUL64_K MUL64_X = MUL;
        DIV32_K DIV32_X DIV64_K DIV64_X = DIV;
        OR32_K OR32_X OR64_K OR64_X = OR;
        AND32_K AND32_X AND64_K AND64_X = AND;
        LSH32_K LSH32_X LSH64_K LSH64_X = LSH;
        RSH32_K RSH32_X RSH64_K RSH64_X = RSH;
        MOD32_K MOD32_X MOD64_K MOD64_X = MOD;
        XOR32_K XOR32_X XOR64_K XOR64_X = XOR;
        MOV32_K MOV32_X MOV64_K MOV64_X = MOV;
        ARSH32_K ARSH32_X ARSH64_K ARSH64_X = ARSH;
    }
    pub(super) const NEG32: u8 = CLASS_ALU | SRC_K | NEG;
    pub(super) const NEG64: u8 = CLASS_ALU64 | SRC_K | NEG;
    pub(super) const TO_LE: u8 = CLASS_ALU | END | super::op::TO_LE;
    pub(super) const TO_BE: u8 = CLASS_ALU | END | super::op::TO_BE;
    pub(super) const BSWAP: u8 = CLASS_ALU64 | END | super::op::TO_LE;

    macro_rules! jump {
        ($($k64:ident $x64:ident $k32:ident $x32:ident = $op:expr;)*) => {$(
            pub(super) const $k64: u8 = CLASS_JMP | SRC_K | $op;
            pub(super) const $x64: u8 = CLASS_JMP | SRC_X | $op;
            pub(super) const $k32: u8 = CLASS_JMP32 | SRC_K | $op;
            pub(super) const $x32: u8 = CLASS_JMP32 | SRC_X | $op;
        )*};
    }
    jump! {
        JEQ_K JEQ_X JEQ32_K JEQ32_X = JEQ;
        JGT_K JGT_X JGT32_K JGT32_X = JGT;
        JGE_K JGE_X JGE32_K JGE32_X = JGE;
        JSET_K JSET_X JSET32_K JSET32_X = JSET;
        JNE_K JNE_X JNE32_K JNE32_X = JNE;
        JSGT_K JSGT_X JSGT32_K JSGT32_X = JSGT;
        JSGE_K JSGE_X JSGE32_K JSGE32_X = JSGE;
        JLT_K JLT_X JLT32_K JLT32_X = JLT;
        JLE_K JLE_X JLE32_K JLE32_X = JLE;
        JSLT_K JSLT_X JSLT32_K JSLT32_X = JSLT;
        JSLE_K JSLE_X JSLE32_K JSLE32_X = JSLE;
    }
    pub(super) const JA: u8 = CLASS_JMP | super::op::JA;
    pub(super) const JA32: u8 = CLASS_JMP32 | super::op::JA;
    pub(super) const CALL: u8 = CLASS_JMP | super::op::CALL;
    pub(super) const EXIT: u8 = CLASS_JMP | super::op::EXIT;

    pub(super) const LDXW: u8 = CLASS_LDX | MODE_MEM | SIZE_W;
    pub(super) const LDXH: u8 = CLASS_LDX | MODE_MEM | SIZE_H;
    pub(super) const LDXB: u8 = CLASS_LDX | MODE_MEM | SIZE_B;
    pub(super) const LDXDW: u8 = CLASS_LDX | MODE_MEM | SIZE_DW;
    pub(super) const LDXSW: u8 = CLASS_LDX | MODE_MEMSX | SIZE_W;
    pub(super) const LDXSH: u8 = CLASS_LDX | MODE_MEMSX | SIZE_H;
    pub(super) const LDXSB: u8 = CLASS_LDX | MODE_MEMSX | SIZE_B;
    pub(super) const STW: u8 = CLASS_ST | MODE_MEM | SIZE_W;
    pub(super) const STH: u8 = CLASS_ST | MODE_MEM | SIZE_H;
    pub(super) const STB: u8 = CLASS_ST | MODE_MEM | SIZE_B;
    pub(super) const STDW: u8 = CLASS_ST | MODE_MEM | SIZE_DW;
    pub(super) const STXW: u8 = CLASS_STX | MODE_MEM | SIZE_W;
    pub(super) const STXH: u8 = CLASS_STX | MODE_MEM | SIZE_H;
    pub(super) const STXB: u8 = CLASS_STX | MODE_MEM | SIZE_B;
    pub(super) const STXDW: u8 = CLASS_STX | MODE_MEM | SIZE_DW;
}

/// The memory a program can address, and where the program believes it lives.
pub(crate) struct Memory<'s, 'c> {
    /// The addressable top of the stack: its last byte is just below `r10`.
    stack: &'s mut [u8],
    /// The number in `r10` minus the length of `stack`: the address of `stack`.
    stack_base: u64,
    context: &'c [u8; CONTEXT_SIZE],
    /// The number in `r1` at entry: the address of the context.
    context_base: u64,
}

impl<'s, 'c> Memory<'s, 'c> {
    /// The memory of a run on `stack` (the addressable top of the handler stack,
    /// its last byte just below `r10`) and `context`, at their real addresses.
    pub(crate) fn new(stack: &'s mut [u8], context: &'c ProbeContext) -> Self {
        let context = context.as_bytes();
        Memory {
            stack_base: stack.as_ptr().addr() as u64,
            stack,
            context,
            context_base: context.as_ptr().addr() as u64,
        }
    }

    /// The `N` bytes at `address`, from the stack or the context.
    #[inline(always)]
    fn load<const N: usize>(&self, address: u64) -> Option<[u8; N]> {
        let offset = address.wrapping_sub(self.stack_base);
        if let Some(bytes) = window(self.stack, offset) {
            return Some(*bytes);
        }
        let offset = address.wrapping_sub(self.context_base);
        if offset <= (CONTEXT_SIZE - N) as u64 {
            return window(self.context, offset).copied();
        }
        None
    }

    /// Writes `bytes` at `address`, which must lie in the stack.
    #[inline(always)]
    fn store<const N: usize>(&mut self, address: u64, bytes: [u8; N]) -> Option<()> {
        let start = usize::try_from(address.wrapping_sub(self.stack_base)).ok()?;
        *self.stack.get_mut(start..)?.first_chunk_mut::<N>()? = bytes;
        Some(())
    }

    /// Why a store of `size` bytes at `address` failed.
    #[cold]
    fn store_fault(&self, address: u64, size: u8) -> TrapKind {
        let offset = address.wrapping_sub(self.context_base);
        if offset < CONTEXT_SIZE as u64 {
            TrapKind::ContextStore {
                offset: offset as u16,
            }
        } else {
            TrapKind::OutOfBounds { address, size }
        }
    }

    /// The stack bytes `address..address + size`, as an index range, if they are
    /// all inside the (addressable) stack and `size` is not 0.
    #[inline]
    fn stack_range(&self, address: u64, size: u64) -> Option<Range<usize>> {
        let offset = address.wrapping_sub(self.stack_base);
        let len = self.stack.len() as u64;
        if size == 0 || size > len || offset > len - size {
            return None;
        }
        Some(offset as usize..(offset + size) as usize)
    }
}

/// The `N` bytes of `memory` at `offset`, if they are all inside.
#[inline(always)]
fn window<const N: usize>(memory: &[u8], offset: u64) -> Option<&[u8; N]> {
    let start = usize::try_from(offset).ok()?;
    memory.get(start..)?.first_chunk::<N>()
}

/// For each register byte of an instruction, whether both register numbers are
/// at most `r10`: one load instead of two comparisons in the loop.
const REGISTERS_VALID: [bool; 256] = {
    let mut valid = [false; 256];
    let mut regs = 0;
    while regs < 256 {
        valid[regs] = regs & 0x0f <= FRAME_POINTER as usize && regs >> 4 <= FRAME_POINTER as usize;
        regs += 1;
    }
    valid
};

/// Builds a trap; kept out of line so the loop stays small.
#[cold]
#[inline(never)]
fn trap(pc: usize, kind: TrapKind) -> Trap {
    Trap {
        pc: u32::try_from(pc).unwrap_or(u32::MAX),
        kind,
    }
}

#[cold]
#[inline(never)]
fn invalid(pc: usize, code: u8) -> Trap {
    trap(pc, TrapKind::InvalidInstruction { code })
}

#[cold]
#[inline(never)]
fn bad_register(pc: usize, insn: Insn) -> Trap {
    let register = if insn.dst() > FRAME_POINTER {
        insn.dst()
    } else {
        insn.src()
    };
    trap(pc, TrapKind::InvalidRegister { register })
}

/// [`run`] with a tracer called before every instruction.
pub fn run_traced<H: Helpers + ?Sized, T: Tracer + ?Sized>(
    program: &[Insn],
    context: &ProbeContext,
    helpers: &mut H,
    tracer: &mut T,
) -> Result<u64, Trap> {
    let mut stack = StackMemory([0; STACK_SIZE]);
    execute(program, context, helpers, tracer, &mut stack.0)
}

/// The interpreter loop, on `stack`: the addressable top of the handler stack,
/// already zeroed, its last byte just below `r10`.
fn execute<H: Helpers + ?Sized, T: Tracer + ?Sized>(
    program: &[Insn],
    context: &ProbeContext,
    helpers: &mut H,
    tracer: &mut T,
    stack: &mut [u8],
) -> Result<u64, Trap> {
    let stack_end = stack.as_ptr().addr() as u64 + stack.len() as u64;
    let mut memory = Memory::new(stack, context);

    // Sixteen registers so that any 4-bit register number indexes without a bounds
    // check; numbers above 10 trap before use.
    let mut reg = [0u64; 16];
    reg[1] = memory.context_base;
    reg[FRAME_POINTER as usize] = stack_end;

    let mut pc = 0usize;
    loop {
        let Some(&insn) = program.get(pc) else {
            return Err(trap(pc, TrapKind::OutOfProgram));
        };
        tracer.step(pc, insn, &reg[..REGISTER_COUNT]);
        if !REGISTERS_VALID[insn.regs as usize] {
            return Err(bad_register(pc, insn));
        }
        let dst = (insn.regs & 0x0f) as usize;
        let src = (insn.regs >> 4) as usize;
        let at = pc;
        pc += 1;
        let imm = insn.imm;
        // The immediate as ALU64 and 64-bit jumps see it: sign-extended.
        let k64 = imm as i64 as u64;

        // Writes the destination register, refusing the frame pointer.
        macro_rules! set {
            ($value:expr) => {{
                let value = $value;
                if dst == FRAME_POINTER as usize {
                    return Err(trap(at, TrapKind::FramePointerWrite));
                }
                reg[dst] = value;
            }};
        }
        // Writes the destination register with a 32-bit result, zero-extended.
        macro_rules! set32 {
            ($value:expr) => {
                set!(($value) as u32 as u64)
            };
        }
        // Jumps forward by `off` slots past the next one if `condition` holds. The
        // sum cannot overflow: `pc <= program.len() <= isize::MAX`.
        macro_rules! jump_if {
            ($condition:expr) => {
                if $condition {
                    if insn.off < 0 {
                        let kind = TrapKind::BackwardJump {
                            offset: insn.off as i32,
                        };
                        return Err(trap(at, kind));
                    }
                    pc += insn.off as usize;
                }
            };
        }
        // Loads `N` bytes from `reg[src] + off` and converts them with `$convert`.
        macro_rules! load {
            ($n:literal, $convert:expr) => {{
                let address = reg[src].wrapping_add(insn.off as i64 as u64);
                match memory.load::<$n>(address) {
                    Some(bytes) => set!($convert(bytes)),
                    None => {
                        let kind = TrapKind::OutOfBounds { address, size: $n };
                        return Err(trap(at, kind));
                    }
                }
            }};
        }
        // Stores `$bytes` (an array) at `reg[dst] + off`.
        macro_rules! store {
            ($bytes:expr) => {{
                let bytes = $bytes;
                let address = reg[dst].wrapping_add(insn.off as i64 as u64);
                if memory.store(address, bytes).is_none() {
                    return Err(trap(at, memory.store_fault(address, bytes.len() as u8)));
                }
            }};
        }

        match insn.code {
            // 64-bit arithmetic: the immediate is sign-extended to 64 bits.
            code::ADD64_K => set!(reg[dst].wrapping_add(k64)),
            code::ADD64_X => set!(reg[dst].wrapping_add(reg[src])),
            code::SUB64_K => set!(reg[dst].wrapping_sub(k64)),
            code::SUB64_X => set!(reg[dst].wrapping_sub(reg[src])),
            code::MUL64_K => set!(reg[dst].wrapping_mul(k64)),
            code::MUL64_X => set!(reg[dst].wrapping_mul(reg[src])),
            code::DIV64_K => {
                set!(div64(reg[dst], k64, insn.off).ok_or_else(|| invalid(at, insn.code))?)
            }
            code::DIV64_X => {
                set!(div64(reg[dst], reg[src], insn.off).ok_or_else(|| invalid(at, insn.code))?)
            }
            code::MOD64_K => {
                set!(mod64(reg[dst], k64, insn.off).ok_or_else(|| invalid(at, insn.code))?)
            }
            code::MOD64_X => {
                set!(mod64(reg[dst], reg[src], insn.off).ok_or_else(|| invalid(at, insn.code))?)
            }
            code::OR64_K => set!(reg[dst] | k64),
            code::OR64_X => set!(reg[dst] | reg[src]),
            code::AND64_K => set!(reg[dst] & k64),
            code::AND64_X => set!(reg[dst] & reg[src]),
            code::XOR64_K => set!(reg[dst] ^ k64),
            code::XOR64_X => set!(reg[dst] ^ reg[src]),
            code::LSH64_K => set!(reg[dst] << (imm & 63)),
            code::LSH64_X => set!(reg[dst] << (reg[src] & 63)),
            code::RSH64_K => set!(reg[dst] >> (imm & 63)),
            code::RSH64_X => set!(reg[dst] >> (reg[src] & 63)),
            code::ARSH64_K => set!(((reg[dst] as i64) >> (imm & 63)) as u64),
            code::ARSH64_X => set!(((reg[dst] as i64) >> (reg[src] & 63)) as u64),
            code::NEG64 => set!(reg[dst].wrapping_neg()),
            code::MOV64_K => set!(k64),
            code::MOV64_X => set!(match insn.off {
                0 => reg[src],
                8 => reg[src] as i8 as i64 as u64,
                16 => reg[src] as i16 as i64 as u64,
                32 => reg[src] as i32 as i64 as u64,
                _ => return Err(invalid(at, insn.code)),
            }),
            code::BSWAP => set!(match imm {
                16 => (reg[dst] as u16).swap_bytes() as u64,
                32 => (reg[dst] as u32).swap_bytes() as u64,
                64 => reg[dst].swap_bytes(),
                _ => return Err(invalid(at, insn.code)),
            }),

            // 32-bit arithmetic: operands are the low halves, results zero-extended.
            code::ADD32_K => set32!((reg[dst] as u32).wrapping_add(imm as u32)),
            code::ADD32_X => set32!((reg[dst] as u32).wrapping_add(reg[src] as u32)),
            code::SUB32_K => set32!((reg[dst] as u32).wrapping_sub(imm as u32)),
            code::SUB32_X => set32!((reg[dst] as u32).wrapping_sub(reg[src] as u32)),
            code::MUL32_K => set32!((reg[dst] as u32).wrapping_mul(imm as u32)),
            code::MUL32_X => set32!((reg[dst] as u32).wrapping_mul(reg[src] as u32)),
            code::DIV32_K => set32!(
                div32(reg[dst] as u32, imm as u32, insn.off)
                    .ok_or_else(|| invalid(at, insn.code))?
            ),
            code::DIV32_X => set32!(
                div32(reg[dst] as u32, reg[src] as u32, insn.off)
                    .ok_or_else(|| invalid(at, insn.code))?
            ),
            code::MOD32_K => set32!(
                mod32(reg[dst] as u32, imm as u32, insn.off)
                    .ok_or_else(|| invalid(at, insn.code))?
            ),
            code::MOD32_X => set32!(
                mod32(reg[dst] as u32, reg[src] as u32, insn.off)
                    .ok_or_else(|| invalid(at, insn.code))?
            ),
            code::OR32_K => set32!(reg[dst] as u32 | imm as u32),
            code::OR32_X => set32!(reg[dst] as u32 | reg[src] as u32),
            code::AND32_K => set32!(reg[dst] as u32 & imm as u32),
            code::AND32_X => set32!(reg[dst] as u32 & reg[src] as u32),
            code::XOR32_K => set32!(reg[dst] as u32 ^ imm as u32),
            code::XOR32_X => set32!(reg[dst] as u32 ^ reg[src] as u32),
            code::LSH32_K => set32!((reg[dst] as u32) << (imm & 31)),
            code::LSH32_X => set32!((reg[dst] as u32) << (reg[src] & 31)),
            code::RSH32_K => set32!((reg[dst] as u32) >> (imm & 31)),
            code::RSH32_X => set32!((reg[dst] as u32) >> (reg[src] & 31)),
            code::ARSH32_K => set32!((reg[dst] as i32) >> (imm & 31)),
            code::ARSH32_X => set32!((reg[dst] as i32) >> (reg[src] & 31)),
            code::NEG32 => set32!((reg[dst] as u32).wrapping_neg()),
            code::MOV32_K => set32!(imm),
            code::MOV32_X => set32!(match insn.off {
                0 => reg[src] as u32,
                8 => reg[src] as i8 as i32 as u32,
                16 => reg[src] as i16 as i32 as u32,
                _ => return Err(invalid(at, insn.code)),
            }),
            code::TO_LE => set!(match imm {
                16 => (reg[dst] as u16).to_le() as u64,
                32 => (reg[dst] as u32).to_le() as u64,
                64 => reg[dst].to_le(),
                _ => return Err(invalid(at, insn.code)),
            }),
            code::TO_BE => set!(match imm {
                16 => (reg[dst] as u16).to_be() as u64,
                32 => (reg[dst] as u32).to_be() as u64,
                64 => reg[dst].to_be(),
                _ => return Err(invalid(at, insn.code)),
            }),

            // Loads and stores.
            code::LDXDW => load!(8, u64::from_le_bytes),
            code::LDXW => load!(4, |b| u32::from_le_bytes(b) as u64),
            code::LDXH => load!(2, |b| u16::from_le_bytes(b) as u64),
            code::LDXB => load!(1, |b: [u8; 1]| b[0] as u64),
            code::LDXSW => load!(4, |b| i32::from_le_bytes(b) as i64 as u64),
            code::LDXSH => load!(2, |b| i16::from_le_bytes(b) as i64 as u64),
            code::LDXSB => load!(1, |b: [u8; 1]| b[0] as i8 as i64 as u64),
            code::STDW => store!(k64.to_le_bytes()),
            code::STW => store!(imm.to_le_bytes()),
            code::STH => store!((imm as u16).to_le_bytes()),
            code::STB => store!([imm as u8]),
            code::STXDW => store!(reg[src].to_le_bytes()),
            code::STXW => store!((reg[src] as u32).to_le_bytes()),
            code::STXH => store!((reg[src] as u16).to_le_bytes()),
            code::STXB => store!([reg[src] as u8]),
            op::LDDW => {
                let Some(&high) = program.get(pc) else {
                    return Err(trap(at, TrapKind::IncompleteLddw));
                };
                if src != 0 || high.code != 0 || high.regs != 0 || high.off != 0 {
                    return Err(invalid(at, insn.code));
                }
                set!((imm as u32 as u64) | ((high.imm as u32 as u64) << 32));
                pc += 1;
            }

            // 64-bit jumps: the immediate is sign-extended to 64 bits.
            code::JA => jump_if!(true),
            code::JEQ_K => jump_if!(reg[dst] == k64),
            code::JEQ_X => jump_if!(reg[dst] == reg[src]),
            code::JNE_K => jump_if!(reg[dst] != k64),
            code::JNE_X => jump_if!(reg[dst] != reg[src]),
            code::JGT_K => jump_if!(reg[dst] > k64),
            code::JGT_X => jump_if!(reg[dst] > reg[src]),
            code::JGE_K => jump_if!(reg[dst] >= k64),
            code::JGE_X => jump_if!(reg[dst] >= reg[src]),
            code::JLT_K => jump_if!(reg[dst] < k64),
            code::JLT_X => jump_if!(reg[dst] < reg[src]),
            code::JLE_K => jump_if!(reg[dst] <= k64),
            code::JLE_X => jump_if!(reg[dst] <= reg[src]),
            code::JSET_K => jump_if!(reg[dst] & k64 != 0),
            code::JSET_X => jump_if!(reg[dst] & reg[src] != 0),
            code::JSGT_K => jump_if!(reg[dst] as i64 > k64 as i64),
            code::JSGT_X => jump_if!(reg[dst] as i64 > reg[src] as i64),
            code::JSGE_K => jump_if!(reg[dst] as i64 >= k64 as i64),
            code::JSGE_X => jump_if!(reg[dst] as i64 >= reg[src] as i64),
            code::JSLT_K => jump_if!((reg[dst] as i64) < k64 as i64),
            code::JSLT_X => jump_if!((reg[dst] as i64) < reg[src] as i64),
            code::JSLE_K => jump_if!(reg[dst] as i64 <= k64 as i64),
            code::JSLE_X => jump_if!(reg[dst] as i64 <= reg[src] as i64),

            // 32-bit jumps compare the low halves; `ja32` takes its offset from imm.
            code::JA32 => {
                if imm < 0 {
                    return Err(trap(at, TrapKind::BackwardJump { offset: imm }));
                }
                pc = pc.saturating_add(imm as usize);
            }
            code::JEQ32_K => jump_if!(reg[dst] as u32 == imm as u32),
            code::JEQ32_X => jump_if!(reg[dst] as u32 == reg[src] as u32),
            code::JNE32_K => jump_if!(reg[dst] as u32 != imm as u32),
            code::JNE32_X => jump_if!(reg[dst] as u32 != reg[src] as u32),
            code::JGT32_K => jump_if!(reg[dst] as u32 > imm as u32),
            code::JGT32_X => jump_if!(reg[dst] as u32 > reg[src] as u32),
            code::JGE32_K => jump_if!(reg[dst] as u32 >= imm as u32),
            code::JGE32_X => jump_if!(reg[dst] as u32 >= reg[src] as u32),
            code::JLT32_K => jump_if!((reg[dst] as u32) < imm as u32),
            code::JLT32_X => jump_if!((reg[dst] as u32) < reg[src] as u32),
            code::JLE32_K => jump_if!(reg[dst] as u32 <= imm as u32),
            code::JLE32_X => jump_if!(reg[dst] as u32 <= reg[src] as u32),
            code::JSET32_K => jump_if!(reg[dst] as u32 & imm as u32 != 0),
            code::JSET32_X => jump_if!(reg[dst] as u32 & reg[src] as u32 != 0),
            code::JSGT32_K => jump_if!(reg[dst] as i32 > imm),
            code::JSGT32_X => jump_if!(reg[dst] as i32 > reg[src] as i32),
            code::JSGE32_K => jump_if!(reg[dst] as i32 >= imm),
            code::JSGE32_X => jump_if!(reg[dst] as i32 >= reg[src] as i32),
            code::JSLT32_K => jump_if!((reg[dst] as i32) < imm),
            code::JSLT32_X => jump_if!((reg[dst] as i32) < reg[src] as i32),
            code::JSLE32_K => jump_if!(reg[dst] as i32 <= imm),
            code::JSLE32_X => jump_if!(reg[dst] as i32 <= reg[src] as i32),

            code::CALL => {
                // Only helper calls (source 0); program-local calls do not exist here.
                if src != 0 {
                    return Err(invalid(at, insn.code));
                }
                let [_, r1, r2, r3, r4, r5, ..] = reg;
                reg[0] = call_helper(imm, &[r1, r2, r3, r4, r5], &mut memory, helpers)
                    .map_err(|kind| trap(at, kind))?;
            }
            code::EXIT => return Ok(reg[0]),

            _ => return Err(invalid(at, insn.code)),
        }
    }
}

/// 64-bit division; `off` 0 is unsigned, 1 signed. `None` for other offsets.
#[inline(always)]
fn div64(dividend: u64, divisor: u64, off: i16) -> Option<u64> {
    match off {
        0 => Some(dividend.checked_div(divisor).unwrap_or(0)),
        1 => Some(if divisor == 0 {
            0
        } else {
            (dividend as i64).wrapping_div(divisor as i64) as u64
        }),
        _ => None,
    }
}

/// 64-bit modulo; `off` 0 is unsigned, 1 signed; a zero divisor keeps the dividend.
#[inline(always)]
fn mod64(dividend: u64, divisor: u64, off: i16) -> Option<u64> {
    match off {
        0 => Some(dividend.checked_rem(divisor).unwrap_or(dividend)),
        1 => Some(if divisor == 0 {
            dividend
        } else {
            (dividend as i64).wrapping_rem(divisor as i64) as u64
        }),
        _ => None,
    }
}

/// 32-bit division, as [`div64`].
#[inline(always)]
fn div32(dividend: u32, divisor: u32, off: i16) -> Option<u32> {
    match off {
        0 => Some(dividend.checked_div(divisor).unwrap_or(0)),
        1 => Some(if divisor == 0 {
            0
        } else {
            (dividend as i32).wrapping_div(divisor as i32) as u32
        }),
        _ => None,
    }
}

/// 32-bit modulo, as [`mod64`].
#[inline(always)]
fn mod32(dividend: u32, divisor: u32, off: i16) -> Option<u32> {
    match off {
        0 => Some(dividend.checked_rem(divisor).unwrap_or(dividend)),
        1 => Some(if divisor == 0 {
            dividend
        } else {
            (dividend as i32).wrapping_rem(divisor as i32) as u32
        }),
        _ => None,
    }
}

/// A negative helper error as the program sees it in `r0`.
const fn error(code: i64) -> u64 {
    code as u64
}

/// The stack buffer of `size` bytes at `address` that a helper writes, as the
/// pointer in `r1` and the size in `r2` give it.
fn out_buffer<'m>(
    memory: &'m mut Memory<'_, '_>,
    helper: Helper,
    address: u64,
    size: u64,
) -> Result<&'m mut [u8], TrapKind> {
    let bad = |register, value| TrapKind::BadHelperArgument {
        helper,
        register,
        value,
    };
    if size == 0 || size > STACK_SIZE as u64 {
        return Err(bad(2, size));
    }
    let range = memory.stack_range(address, size).ok_or(bad(1, address))?;
    memory.stack.get_mut(range).ok_or(bad(1, address))
}

/// The map named by `r1`, and its definition.
#[inline(always)]
fn map_of<H: Helpers + ?Sized>(helpers: &H, r1: u64) -> Result<(MapId, MapSpec), TrapKind> {
    let unknown = TrapKind::UnknownMap { map: r1 };
    let map = u16::try_from(r1).map(MapId).map_err(|_| unknown)?;
    let spec = helpers.map_spec(map).ok_or(unknown)?;
    Ok((map, spec))
}

/// Runs helper `id` with the arguments `args` (`r1`–`r5`) and returns the value
/// for `r0`.
///
/// `r1`–`r5` keep their values; the verifier treats them as clobbered, so no
/// program may rely on that. Out of line: calls are rare next to arithmetic, and
/// keeping them out of the loop keeps the loop small. The JIT's helper dispatch
/// calls [`call_other_helper`], what this does for every helper but `aggregate`
/// (compiled code calls `aggregate` directly, through the same [`aggregate`]), so
/// helper semantics are the interpreter's in both.
#[inline(never)]
pub(crate) fn call_helper<H: Helpers + ?Sized>(
    id: i32,
    args: &[u64; 5],
    memory: &mut Memory<'_, '_>,
    helpers: &mut H,
) -> Result<u64, TrapKind> {
    if id == Helper::Aggregate as i32 {
        let [r1, r2, r3, ..] = *args;
        return aggregate(r1, r2, r3, memory, helpers);
    }
    call_other_helper(id, args, memory, helpers)
}

/// [`call_helper`] for every helper but `aggregate`, which it treats as unknown:
/// its callers call [`aggregate`] themselves (so a kernel that runs only compiled
/// code has one copy of it, the JIT's).
#[inline(never)]
pub(crate) fn call_other_helper<H: Helpers + ?Sized>(
    id: i32,
    args: &[u64; 5],
    memory: &mut Memory<'_, '_>,
    helpers: &mut H,
) -> Result<u64, TrapKind> {
    let Some(helper) = u32::try_from(id).ok().and_then(Helper::from_id) else {
        return Err(TrapKind::UnknownHelper { id });
    };
    let [r1, r2, r3, ..] = *args;
    let bad = |register: u8, value: u64| TrapKind::BadHelperArgument {
        helper,
        register,
        value,
    };
    // The stack range of a key (at `r2`) or value (at `r3`) of `size` bytes.
    let sized = |memory: &Memory<'_, '_>, register: u8, size: u16| {
        let address = if register == 2 { r2 } else { r3 };
        memory
            .stack_range(address, size as u64)
            .ok_or(bad(register, address))
    };

    Ok(match helper {
        Helper::ReadKernel | Helper::ReadUser => {
            let dst = out_buffer(memory, helper, r1, r2)?;
            let result = if helper == Helper::ReadKernel {
                helpers.read_kernel(dst, r3)
            } else {
                helpers.read_user(dst, r3)
            };
            match result {
                Ok(()) => 0,
                Err(_) => {
                    dst.fill(0);
                    error(helper_error::EFAULT)
                }
            }
        }
        Helper::ReadKernelStr | Helper::ReadUserStr => {
            let dst = out_buffer(memory, helper, r1, r2)?;
            let result = if helper == Helper::ReadKernelStr {
                helpers.read_kernel_str(dst, r3)
            } else {
                helpers.read_user_str(dst, r3)
            };
            match result {
                Ok(written) => {
                    // Distrust the count: keep it in `1..=len` and terminate there.
                    let written = written.min(dst.len()).max(1);
                    if let Some(last) = dst.get_mut(written - 1) {
                        *last = 0;
                    }
                    written as u64
                }
                Err(_) => {
                    dst.fill(0);
                    error(helper_error::EFAULT)
                }
            }
        }
        Helper::Cpu => helpers.cpu(),
        Helper::TaskId => helpers.task_id(),
        Helper::TimeNs => helpers.time_ns(),
        Helper::TaskName => {
            let dst = out_buffer(memory, helper, r1, r2)?;
            dst.fill(0);
            helpers.task_name(dst).min(dst.len()) as u64
        }
        Helper::StackTrace => {
            let dst = out_buffer(memory, helper, r1, r2)?;
            helpers.stack_trace(dst).min(dst.len() / 8) as u64
        }
        Helper::Emit => {
            let record = out_buffer(memory, helper, r1, r2)?;
            match helpers.emit(record) {
                Ok(()) => 0,
                Err(Full) => error(helper_error::ENOSPC),
            }
        }
        // One arm for the three, so that the map's directory search (inlined into
        // `map_of`) is here once.
        Helper::MapLookup | Helper::MapUpdate | Helper::MapDelete => {
            let (map, spec) = map_of(&*helpers, r1)?;
            let key = sized(memory, 2, spec.key_size)?;
            // Delete takes no value.
            let value = if helper == Helper::MapDelete {
                0..0
            } else {
                sized(memory, 3, spec.value_size)?
            };
            if spec.is_aggregate() {
                return Ok(error(helper_error::EINVAL));
            }
            match helper {
                Helper::MapLookup => {
                    if map_lookup(helpers, map, memory.stack, key, value) {
                        0
                    } else {
                        error(helper_error::ENOENT)
                    }
                }
                Helper::MapUpdate => {
                    let stack = &*memory.stack;
                    let (Some(key), Some(value)) = (stack.get(key), stack.get(value)) else {
                        return Err(bad(2, r2));
                    };
                    match helpers.map_update(map, key, value) {
                        Ok(()) => 0,
                        Err(Full) => error(helper_error::ENOSPC),
                    }
                }
                _ => {
                    let key = memory.stack.get(key).ok_or(bad(2, r2))?;
                    if helpers.map_delete(map, key) {
                        0
                    } else {
                        error(helper_error::ENOENT)
                    }
                }
            }
        }
        Helper::EntrySave => {
            let slot = usize::try_from(r1).ok().filter(|slot| *slot < ENTRY_SLOTS);
            let Some(slot) = slot else {
                return Err(bad(1, r1));
            };
            match helpers.entry_save(slot, r2) {
                Ok(()) => 0,
                Err(EntrySaveError::NotEntryProgram) => error(helper_error::EINVAL),
                Err(EntrySaveError::Full) => error(helper_error::ENOSPC),
            }
        }
        _ => return Err(TrapKind::UnknownHelper { id }),
    })
}

/// The `aggregate` helper (`call_helper`'s, and the JIT's direct call): folds
/// `r3` into the value of the key at `r2` in aggregation `r1`.
#[inline(always)]
pub(crate) fn aggregate<H: Helpers + ?Sized>(
    r1: u64,
    r2: u64,
    r3: u64,
    memory: &mut Memory<'_, '_>,
    helpers: &mut H,
) -> Result<u64, TrapKind> {
    let bad = TrapKind::BadHelperArgument {
        helper: Helper::Aggregate,
        register: 2,
        value: r2,
    };
    let (map, spec) = map_of(&*helpers, r1)?;
    let key = memory
        .stack_range(r2, u64::from(spec.key_size))
        .ok_or(bad)?;
    if !matches!(spec.kind, MapKind::Aggregate(_)) {
        return Ok(error(helper_error::EINVAL));
    }
    let key = memory.stack.get(key).ok_or(bad)?;
    Ok(match helpers.aggregate(map, key, r3 as i64) {
        Ok(()) => 0,
        Err(Full) => error(helper_error::ENOSPC),
    })
}

/// Looks `key` up and copies the value into the `value` range of the stack.
///
/// The ranges may overlap (a program may look a key up into its own place); then
/// the key is copied out first. Returns `false` (absent) for ranges that are not
/// inside the stack, which the caller has already excluded.
fn map_lookup<H: Helpers + ?Sized>(
    helpers: &mut H,
    map: MapId,
    stack: &mut [u8],
    key: Range<usize>,
    value: Range<usize>,
) -> bool {
    let value_len = value.len();
    let key_len = key.len();
    if key.end <= value.start {
        let Some((low, high)) = stack.split_at_mut_checked(value.start) else {
            return false;
        };
        let (Some(key), Some(value)) = (low.get(key), high.get_mut(..value_len)) else {
            return false;
        };
        helpers.map_lookup(map, key, value)
    } else if value.end <= key.start {
        let Some((low, high)) = stack.split_at_mut_checked(key.start) else {
            return false;
        };
        let (Some(key), Some(value)) = (high.get(..key_len), low.get_mut(value)) else {
            return false;
        };
        helpers.map_lookup(map, key, value)
    } else {
        // A key longer than any map may have cannot be present.
        let mut copy = [0u8; MAX_KEY_SIZE as usize];
        let Some(key) = stack.get(key) else {
            return false;
        };
        let Some(key_copy) = copy.get_mut(..key.len()) else {
            return false;
        };
        key_copy.copy_from_slice(key);
        let key_copy = &*key_copy;
        match stack.get_mut(value) {
            Some(value) => helpers.map_lookup(map, key_copy, value),
            None => false,
        }
    }
}
