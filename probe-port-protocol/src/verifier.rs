//! The handler verifier: one forward pass that proves a program safe to interpret.
//!
//! # Design
//!
//! Every jump must go forward, so the control-flow graph of a program is a DAG whose
//! edges all point to higher slot indices, and index order is a topological order.
//! The verifier therefore makes **one pass** over the slots in index order. At each
//! slot it first checks the instruction's shape (opcode in the allowed subset,
//! reserved fields zero, registers in range, jump targets forward and inside the
//! program, immediate shift amounts below the operand width). Then, if some path
//! reaches the slot, it runs the instruction on the slot's **abstract state** and
//! pushes the resulting state to the slot's successors (the next instruction and/or
//! the jump target, both at higher indices). When a state reaches a slot that
//! already has one, the two are merged with their *meet*: a register keeps its
//! abstract value only where both paths agree. Since every predecessor of a slot
//! has a lower index, the slot's state is final by the time the pass gets there.
//!
//! The abstract state holds one value per register `r0`–`r9` (`r10` is always the
//! frame pointer):
//!
//! - *uninitialised*: no path may read it;
//! - *scalar*: some initialised 64-bit value, unknown to the verifier;
//! - *constant* `c` with `0 <= c <= 65535`: a value known exactly (from `mov`,
//!   `lddw`, or `add`/`sub`/`mul`/`or`/`and`/`xor`/`lsh`/`rsh` on constants);
//!   larger constants are just scalars, which is all map numbers, sizes and entry
//!   slots need;
//! - *stack pointer* `r10 + k`: a copy of the frame pointer (by `mov64`) moved by
//!   `add64`/`sub64` with immediates, `k` a known signed 16-bit offset;
//! - *context pointer* `ctx + k`: the same for the probe context that `r1` holds
//!   on entry.
//!
//! Any other arithmetic on a pointer (32-bit operations included) yields a plain
//! scalar, never a pointer; so does a pointer stored to the stack and loaded back,
//! because stack contents are not tracked. Where two paths disagree about a
//! register the meet is *uninitialised* if either path leaves it uninitialised, and
//! *scalar* otherwise.
//!
//! Stack initialisation is not tracked: the interpreter zeroes the stack before
//! each run, so a load from a stack slot never written reads zero, not stale data.
//!
//! The pass touches each slot once and each register a bounded number of times, so
//! verification is linear in the program length. It allocates nothing: the
//! per-slot states live in a caller-provided [`VerifierScratch`] (41 bytes per
//! slot, 164 KiB for [`MAX_INSNS`] slots), which a kernel keeps in a static and
//! reuses.
//!
//! Errors name the slot and the [`Rule`] broken. Slots are checked in index order
//! and each slot's checks run in a fixed order, so the error reported is always the
//! first one in index order, and the same program always gets the same error.
//!
//! # Example
//!
//! ```
//! use probe_port_protocol::isa::{Insn, op};
//! use probe_port_protocol::maps::{MapId, MapShapes, MapSpec};
//! use probe_port_protocol::verifier::{
//!     ProgramKind, Rule, VerifierConfig, VerifierScratch, VerifyError, verify,
//! };
//!
//! struct NoMaps;
//!
//! impl MapShapes for NoMaps {
//!     fn spec(&self, _map: MapId) -> Option<MapSpec> {
//!         None
//!     }
//! }
//!
//! // A kernel keeps the scratch in a static; a host can box it.
//! let mut scratch = Box::new(VerifierScratch::new());
//! let config = VerifierConfig::new(ProgramKind::Probe, &NoMaps);
//!
//! let exit = Insn::new(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0);
//! let loop_forever = Insn::new(op::CLASS_JMP | op::JA, 0, 0, -1, 0);
//! let error = verify(&[loop_forever, exit], &config, &mut scratch).unwrap_err();
//! assert_eq!(error, VerifyError { index: 0, rule: Rule::JumpBackward });
//! assert_eq!(error.rule.code(), 9);
//!
//! let return_zero = [Insn::new(op::CLASS_ALU64 | op::MOV, 0, 0, 0, 0), exit];
//! let program = verify(&return_zero, &config, &mut scratch).unwrap();
//! assert_eq!(program.stack_depth(), 0);
//! ```
//!
//! # Invariants
//!
//! A program that passes [`verify`]:
//!
//! - has between 1 and `min(max_insns, MAX_INSNS)` slots, only opcodes of the
//!   allowed subset (below), zero reserved fields, registers `r0`–`r10` only, and
//!   never writes `r10`;
//! - **terminates**: every jump goes strictly forward to a slot of the program that
//!   is not the second half of an `lddw`, so a run executes each slot at most once;
//! - **ends in `exit`** on every path: no path falls through past the last slot,
//!   and `r0` is initialised at every reachable `exit`;
//! - never reads a register no path has written (after a helper call `r1`–`r5`
//!   are clobbered and `r0` holds the result);
//! - accesses memory directly only on the stack (`[r10 - 512, r10)`) and, for loads
//!   only, in the 256-byte probe context, always within bounds and aligned to the
//!   access size; it never stores to the context;
//! - calls only helpers of [`Helper`], `entry_save` only in an entry program, with
//!   map numbers, sizes and entry slots that are constants known here, maps that
//!   are defined and of the right kind, and stack buffers that lie inside the stack;
//! - uses at most [`MAX_MAPS_PER_PROGRAM`] distinct maps, listed by
//!   [`VerifiedProgram::maps_used`].
//!
//! A verified program may still divide by zero (the ISA defines it: `div` gives 0,
//! `mod` leaves the destination unchanged), shift by a register amount of any size
//! (the executor masks it), read arbitrary kernel memory through the fault-tolerant
//! helpers, and leave dead code after `exit` (it is shape-checked but never run).
//!
//! # Allowed instructions
//!
//! - `ALU` and `ALU64`: `add sub mul div or and lsh rsh neg mod xor mov arsh end`,
//!   immediate and register sources. `neg` only with an immediate of 0; `div`/`mod`
//!   with offset 0 (unsigned) or 1 (signed); `mov` from a register with offset 0,
//!   8 or 16 (and 32 in `ALU64`) to sign-extend; `end` with width 16, 32 or 64, in
//!   `ALU` both to-little and to-big, in `ALU64` only the unconditional swap.
//! - `JMP`: `ja` (offset in `off`), all conditional jumps, `call` of a helper,
//!   `exit`. `JMP32`: all conditional jumps and `ja` (offset in `imm`).
//! - `LDX` in `MEM` mode (all sizes) and `MEMSX` mode (byte, half, word); `ST` and
//!   `STX` in `MEM` mode; `lddw` with source 0.
//!
//! Atomics, legacy packet loads, local calls, kfunc calls and pseudo map loads are
//! refused.
//!
//! # Rules
//!
//! Rule numbers travel on the wire in the detail of a rejected program; they never
//! change meaning.
//!
//! | code | name | refused when |
//! |---:|---|---|
//! | 1 | `empty-program` | the program has no slots |
//! | 2 | `too-long` | the program has more slots than the limit (index: the first slot over it) |
//! | 3 | `unknown-opcode` | the opcode is not in the allowed subset |
//! | 4 | `reserved-field` | a field the instruction does not use is not zero (also the second `lddw` slot) |
//! | 5 | `bad-variant` | an offset, immediate or source selecting a variant has an undefined value |
//! | 6 | `bad-register` | a register number is above 10 |
//! | 7 | `frame-pointer-write` | the instruction writes `r10` |
//! | 8 | `shift-out-of-range` | an immediate shift amount is not below 32 (`ALU`) or 64 (`ALU64`) |
//! | 9 | `jump-backward` | a jump has a negative distance (it could loop) |
//! | 10 | `jump-out-of-range` | a jump target is past the last slot |
//! | 11 | `jump-into-lddw` | a jump target is the second slot of an `lddw` |
//! | 12 | `incomplete-lddw` | an `lddw` starts in the last slot |
//! | 13 | `fall-off-end` | a path runs past the last slot without `exit` |
//! | 14 | `uninitialized-register` | a register is read that some path leaves unset |
//! | 15 | `exit-without-r0` | `exit` is reached with `r0` unset on some path |
//! | 16 | `bad-memory-base` | a load or store base is not a stack or context pointer |
//! | 17 | `stack-out-of-bounds` | a stack access leaves `[r10 - 512, r10)` |
//! | 18 | `context-out-of-bounds` | a context load leaves the 256-byte context |
//! | 19 | `misaligned-access` | a stack or context access is not aligned to its size |
//! | 20 | `context-write` | a store targets the read-only context |
//! | 21 | `unknown-helper` | a `call` names no helper |
//! | 22 | `entry-save-outside-entry` | `entry_save` is called outside an entry program |
//! | 23 | `map-not-constant` | a map argument is not a known constant |
//! | 24 | `unknown-map` | a map argument names no defined map |
//! | 25 | `map-kind-mismatch` | the map's kind does not fit the helper |
//! | 26 | `bad-size` | a size argument is not a known constant in `1..=512` |
//! | 27 | `helper-arg-not-stack` | a buffer argument is not a stack pointer |
//! | 28 | `helper-buffer-out-of-bounds` | a helper's buffer does not fit inside the stack |
//! | 29 | `bad-entry-slot` | an entry-slot argument is not a known constant below 8 |
//! | 30 | `too-many-maps` | the program uses more than 32 distinct maps |

use core::fmt;

use crate::context::{CONTEXT_SIZE, ENTRY_SLOTS};
use crate::isa::{ArgKind, FRAME_POINTER, Helper, Insn, MAX_INSNS, STACK_SIZE, op};
use crate::maps::{MapId, MapKind, MapShapes, MapSpec};

/// Most distinct maps one program may use.
pub const MAX_MAPS_PER_PROGRAM: usize = 32;

/// Which kind of program is being verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProgramKind {
    /// A program run when a probe fires (including the return program of a return
    /// site, which reads entry values from the context).
    Probe,
    /// The entry program of a return site: the only kind that may call
    /// `entry_save`.
    Entry,
}

/// What the verifier checks a program against.
#[derive(Clone, Copy)]
pub struct VerifierConfig<'m> {
    /// Most slots a program may have; capped by [`MAX_INSNS`] and by the scratch's
    /// capacity.
    pub max_insns: usize,
    /// Probe or entry program.
    pub kind: ProgramKind,
    /// The maps defined for the program, by number.
    pub maps: &'m dyn MapShapes,
}

impl<'m> VerifierConfig<'m> {
    /// A configuration with the protocol's largest program size.
    pub const fn new(kind: ProgramKind, maps: &'m dyn MapShapes) -> Self {
        Self {
            max_insns: MAX_INSNS,
            kind,
            maps,
        }
    }
}

impl fmt::Debug for VerifierConfig<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierConfig")
            .field("max_insns", &self.max_insns)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Why a program was refused: the slot index and the rule it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyError {
    /// Index of the offending slot (for `too-long`, the first slot over the limit).
    pub index: u32,
    /// The rule broken.
    pub rule: Rule,
}

impl VerifyError {
    fn at(index: usize, rule: Rule) -> Self {
        // Indices are bounded by MAX_INSNS, far below u32::MAX.
        Self {
            index: index as u32,
            rule,
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instruction {}: {}", self.index, self.rule)
    }
}

impl core::error::Error for VerifyError {}

macro_rules! rules {
    ($($(#[doc = $doc:literal])* $variant:ident = $code:literal, $name:literal, $sentence:literal;)*) => {
        /// A verifier rule, by fixed number (see the table in the module docs).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum Rule {
            $($(#[doc = $doc])* $variant = $code,)*
        }

        impl Rule {
            /// Every rule, in number order.
            pub const ALL: &'static [Rule] = &[$(Rule::$variant),*];

            /// The rule with this number, if this version knows it.
            pub const fn from_code(code: u16) -> Option<Rule> {
                match code {
                    $($code => Some(Rule::$variant),)*
                    _ => None,
                }
            }

            /// The rule's fixed number.
            pub const fn code(self) -> u16 {
                self as u16
            }

            /// The rule's kebab-case name, as test files and diagnostics spell it.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Rule::$variant => $name,)*
                }
            }

            /// The rule with this kebab-case name, if any.
            pub fn from_name(name: &str) -> Option<Rule> {
                Self::ALL.iter().copied().find(|rule| rule.name() == name)
            }

            /// A sentence saying what the refused instruction does wrong.
            pub const fn description(self) -> &'static str {
                match self {
                    $(Rule::$variant => $sentence,)*
                }
            }
        }
    };
}

rules! {
    /// The program has no instructions.
    EmptyProgram = 1, "empty-program", "the program is empty";
    /// The program is longer than the configured limit or [`MAX_INSNS`].
    TooLong = 2, "too-long", "the program has more instruction slots than the limit allows";
    /// The opcode is not in the allowed subset.
    UnknownOpcode = 3, "unknown-opcode", "the opcode is not in the allowed instruction subset";
    /// A field the instruction does not use is not zero.
    ReservedField = 4, "reserved-field",
        "a register, offset or immediate field that this instruction does not use is not zero";
    /// A field selecting a variant (signedness, sign-extension or swap width, call
    /// kind, pseudo load) has a value that is not allowed.
    BadVariant = 5, "bad-variant",
        "the field selecting the instruction's variant (signed division, sign-extension \
         width, byte-swap width, call kind or lddw source) has a value that is not allowed";
    /// A register number is above `r10`.
    BadRegister = 6, "bad-register", "a register number is above r10";
    /// The instruction writes the frame pointer.
    FramePointerWrite = 7, "frame-pointer-write", "the instruction writes r10, the read-only frame pointer";
    /// An immediate shift amount is not below the operand width.
    ShiftOutOfRange = 8, "shift-out-of-range",
        "the immediate shift amount is negative or not below the operand width (32 or 64)";
    /// A jump has a negative distance.
    JumpBackward = 9, "jump-backward",
        "the jump goes backward or to itself, and only forward jumps are allowed";
    /// A jump target is outside the program.
    JumpOutOfRange = 10, "jump-out-of-range", "the jump target is past the end of the program";
    /// A jump target is the second slot of an `lddw`.
    JumpIntoLddw = 11, "jump-into-lddw", "the jump target is the second slot of an lddw";
    /// An `lddw` starts in the last slot.
    IncompleteLddw = 12, "incomplete-lddw", "the lddw starts in the last slot and has no second slot";
    /// Execution can run past the last slot.
    FallOffEnd = 13, "fall-off-end",
        "execution can continue past the last instruction; every path must end in exit";
    /// A register is read that some path leaves uninitialised.
    UninitializedRegister = 14, "uninitialized-register",
        "a register is read that is not initialised on every path to here \
         (a helper call leaves r1-r5 uninitialised)";
    /// `exit` is reached with `r0` uninitialised on some path.
    ExitWithoutR0 = 15, "exit-without-r0", "exit is reached without r0 set on every path to here";
    /// A memory access base is neither a stack nor a context pointer.
    BadMemoryBase = 16, "bad-memory-base",
        "the base register of the memory access is neither r10 plus a known constant nor, \
         for loads, the context pointer plus a known constant";
    /// A stack access leaves the stack.
    StackOutOfBounds = 17, "stack-out-of-bounds",
        "the stack access is not entirely inside [r10-512, r10)";
    /// A context load leaves the context.
    ContextOutOfBounds = 18, "context-out-of-bounds",
        "the context load is not entirely inside the 256-byte probe context";
    /// A stack or context access is not aligned to its size.
    MisalignedAccess = 19, "misaligned-access", "the memory access is not aligned to its size";
    /// A store to the read-only context.
    ContextWrite = 20, "context-write", "the store targets the read-only probe context";
    /// A call names no helper.
    UnknownHelper = 21, "unknown-helper", "the call names a helper number that does not exist";
    /// `entry_save` outside an entry program.
    EntrySaveOutsideEntry = 22, "entry-save-outside-entry",
        "entry_save is called outside the entry program of a return site";
    /// A map argument is not a known constant.
    MapNotConstant = 23, "map-not-constant",
        "the map argument is not a constant known at verification";
    /// A map argument names no defined map.
    UnknownMap = 24, "unknown-map", "the map argument names a map that is not defined";
    /// The map's kind does not fit the helper.
    MapKindMismatch = 25, "map-kind-mismatch",
        "the map's kind does not fit the helper (map_lookup, map_update and map_delete \
         need a hash map, aggregate needs an aggregation)";
    /// A size argument is not a known constant in `1..=512`.
    BadSize = 26, "bad-size",
        "the size argument is not a constant in 1..=512 known at verification";
    /// A buffer argument is not a stack pointer.
    HelperArgNotStack = 27, "helper-arg-not-stack",
        "a buffer argument is not r10 plus a known constant";
    /// A helper's buffer does not fit inside the stack.
    HelperBufferOutOfBounds = 28, "helper-buffer-out-of-bounds",
        "a helper's buffer (pointer and size, or map key or value size) is not entirely \
         inside [r10-512, r10)";
    /// An entry-slot argument is not a known constant below [`ENTRY_SLOTS`].
    BadEntrySlot = 29, "bad-entry-slot",
        "the entry slot argument is not a constant below 8 known at verification";
    /// The program uses more than [`MAX_MAPS_PER_PROGRAM`] distinct maps.
    TooManyMaps = 30, "too-many-maps", "the program uses more than 32 distinct maps";
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// The distinct maps a verified program uses, in ascending order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapsUsed {
    maps: [MapId; MAX_MAPS_PER_PROGRAM],
    len: u8,
}

impl MapsUsed {
    const fn new() -> Self {
        Self {
            maps: [MapId(0); MAX_MAPS_PER_PROGRAM],
            len: 0,
        }
    }

    /// The maps, in ascending order of number.
    pub fn as_slice(&self) -> &[MapId] {
        &self.maps[..usize::from(self.len)]
    }

    /// Iterates over the maps in ascending order of number.
    pub fn iter(&self) -> impl Iterator<Item = MapId> + '_ {
        self.as_slice().iter().copied()
    }

    /// Whether the program uses `map`.
    pub fn contains(&self, map: MapId) -> bool {
        self.as_slice().binary_search(&map).is_ok()
    }

    /// How many distinct maps the program uses.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether the program uses no map.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn insert(&mut self, map: MapId) -> Result<(), Rule> {
        let len = usize::from(self.len);
        let position = match self.maps[..len].binary_search(&map) {
            Ok(_) => return Ok(()),
            Err(position) => position,
        };
        if len == MAX_MAPS_PER_PROGRAM {
            return Err(Rule::TooManyMaps);
        }
        self.maps.copy_within(position..len, position + 1);
        self.maps[position] = map;
        self.len += 1;
        Ok(())
    }
}

/// A program that passed [`verify`], with what an executor needs to know about it.
#[derive(Clone, Copy, Debug)]
pub struct VerifiedProgram<'p> {
    insns: &'p [Insn],
    kind: ProgramKind,
    stack_depth: u16,
    maps_used: MapsUsed,
}

impl<'p> VerifiedProgram<'p> {
    /// The verified instructions.
    pub fn insns(&self) -> &'p [Insn] {
        self.insns
    }

    /// The kind the program was verified as.
    pub fn kind(&self) -> ProgramKind {
        self.kind
    }

    /// How many bytes below `r10` the program may touch, directly or through
    /// helper buffers: the distance from `r10` to the deepest stack byte used
    /// (0 when the program never uses the stack; at most [`STACK_SIZE`]).
    pub fn stack_depth(&self) -> usize {
        usize::from(self.stack_depth)
    }

    /// The distinct maps the program passes to helpers.
    pub fn maps_used(&self) -> &MapsUsed {
        &self.maps_used
    }
}

/// The abstract value of one register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    /// Not written on some path: may not be read.
    Uninit,
    /// Initialised, value unknown.
    Scalar,
    /// Exactly this value (small constants only; larger ones are `Scalar`).
    Const(u16),
    /// The frame pointer `r10` plus this offset.
    Stack(i16),
    /// The context pointer (`r1` on entry) plus this offset.
    Context(i16),
}

impl Value {
    /// The value a register holds when it is known to be exactly `value`.
    fn constant(value: u64) -> Value {
        match u16::try_from(value) {
            Ok(small) => Value::Const(small),
            Err(_) => Value::Scalar,
        }
    }

    /// The meet of the values two paths bring to a join.
    fn meet(self, other: Value) -> Value {
        if self == other {
            self
        } else if self == Value::Uninit || other == Value::Uninit {
            Value::Uninit
        } else {
            Value::Scalar
        }
    }
}

/// Abstract values of `r0`–`r9`.
type Registers = [Value; FRAME_POINTER as usize];

/// Working memory of the verifier: one abstract state per slot.
///
/// `SLOTS` is the longest program it can verify; a stub that announces a smaller
/// program limit can use a smaller scratch. It takes 41 bytes per slot, 164 KiB
/// with the default of [`MAX_INSNS`]: too much for a kernel stack, so a kernel
/// keeps one in a static (behind its lock) and reuses it for every program. Its
/// contents between calls mean nothing.
pub struct VerifierScratch<const SLOTS: usize = MAX_INSNS> {
    /// The state flowing into each slot, `None` while no path reaches it.
    states: [Option<Registers>; SLOTS],
    /// Whether each slot is the second half of an `lddw`.
    wide_tail: [bool; SLOTS],
}

impl VerifierScratch {
    /// Scratch for programs of up to [`MAX_INSNS`] slots.
    pub const fn new() -> Self {
        Self::with_capacity()
    }
}

impl Default for VerifierScratch {
    fn default() -> Self {
        Self::new()
    }
}

impl<const SLOTS: usize> VerifierScratch<SLOTS> {
    /// Scratch for programs of up to `SLOTS` slots.
    pub const fn with_capacity() -> Self {
        Self {
            states: [None; SLOTS],
            wide_tail: [false; SLOTS],
        }
    }

    /// The longest program this scratch can verify.
    pub const fn capacity(&self) -> usize {
        SLOTS
    }
}

impl<const SLOTS: usize> fmt::Debug for VerifierScratch<SLOTS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierScratch")
            .field("capacity", &SLOTS)
            .finish_non_exhaustive()
    }
}

/// Verifies `insns` against `config`, using `scratch` as working memory.
///
/// Returns the program with its stack depth and maps on success, or the first
/// broken rule in slot order. Never panics and never allocates; runs in time
/// linear in the program length.
pub fn verify<'p, const SLOTS: usize>(
    insns: &'p [Insn],
    config: &VerifierConfig<'_>,
    scratch: &mut VerifierScratch<SLOTS>,
) -> Result<VerifiedProgram<'p>, VerifyError> {
    if insns.is_empty() {
        return Err(VerifyError::at(0, Rule::EmptyProgram));
    }
    let limit = config.max_insns.min(MAX_INSNS).min(SLOTS);
    if insns.len() > limit {
        return Err(VerifyError::at(limit, Rule::TooLong));
    }
    let len = insns.len();
    verify_in(
        insns,
        config,
        &mut scratch.states[..len],
        &mut scratch.wide_tail[..len],
    )
}

/// [`verify`] for a program that fits `states` and `wide_tail` (one slot each per
/// instruction): not generic, so that there is one copy of the verifier, compiled
/// in this crate (which kernel profiles build for size: verifying is cold).
#[inline(never)]
fn verify_in<'p>(
    insns: &'p [Insn],
    config: &VerifierConfig<'_>,
    states: &mut [Option<Registers>],
    wide_tail: &mut [bool],
) -> Result<VerifiedProgram<'p>, VerifyError> {
    let len = insns.len();
    states.fill(None);
    wide_tail.fill(false);
    mark_wide_tails(insns, wide_tail);

    let mut entry = [Value::Uninit; FRAME_POINTER as usize];
    entry[1] = Value::Context(0);
    states[0] = Some(entry);

    let mut pass = Pass {
        config,
        stack_depth: 0,
        maps_used: MapsUsed::new(),
    };
    let mut index = 0;
    while index < len {
        let (operation, width) = decode(insns, index, wide_tail, config.kind)?;
        if let Some(mut registers) = states[index] {
            let flow = pass
                .execute(operation, &mut registers)
                .map_err(|rule| VerifyError::at(index, rule))?;
            let next = index + width;
            match flow {
                Flow::Next => {
                    if next >= len {
                        return Err(VerifyError::at(index, Rule::FallOffEnd));
                    }
                    flow_into(states, next, &registers);
                }
                Flow::Goto(target) => flow_into(states, target, &registers),
                Flow::Branch(target) => {
                    // `decode` proved `target < len`, and `next <= target`.
                    flow_into(states, target, &registers);
                    flow_into(states, next, &registers);
                }
                Flow::Exit => {}
            }
        }
        index += width;
    }
    Ok(VerifiedProgram {
        insns,
        kind: config.kind,
        stack_depth: pass.stack_depth,
        maps_used: pass.maps_used,
    })
}

/// Verifies with a freshly allocated scratch, for hosts where 164 KiB of heap is
/// nothing to think about.
#[cfg(feature = "alloc")]
pub fn verify_alloc<'p>(
    insns: &'p [Insn],
    config: &VerifierConfig<'_>,
) -> Result<VerifiedProgram<'p>, VerifyError> {
    let mut scratch = alloc::boxed::Box::new(VerifierScratch::new());
    verify(insns, config, &mut scratch)
}

/// Marks the second slot of every `lddw`, walking the slots as the pass will.
fn mark_wide_tails(insns: &[Insn], wide_tail: &mut [bool]) {
    let mut index = 0;
    while index < insns.len() {
        if insns[index].is_wide() {
            if let Some(tail) = wide_tail.get_mut(index + 1) {
                *tail = true;
            }
            index += 2;
        } else {
            index += 1;
        }
    }
}

/// Merges a state into the state flowing into slot `target`.
fn flow_into(states: &mut [Option<Registers>], target: usize, registers: &Registers) {
    match &mut states[target] {
        Some(existing) => {
            for (mine, theirs) in existing.iter_mut().zip(registers) {
                *mine = mine.meet(*theirs);
            }
        }
        empty @ None => *empty = Some(*registers),
    }
}

/// The second operand of an arithmetic or jump instruction.
#[derive(Clone, Copy, Debug)]
enum Operand {
    Immediate(i32),
    Register(u8),
}

/// An instruction whose shape has been checked, as the abstract execution needs it.
#[derive(Clone, Copy, Debug)]
enum Operation {
    Alu {
        wide: bool,
        operation: u8,
        dst: u8,
        operand: Operand,
        off: i16,
    },
    Load {
        dst: u8,
        base: u8,
        off: i16,
        size: u8,
    },
    Store {
        base: u8,
        off: i16,
        size: u8,
        value: Operand,
    },
    Wide {
        dst: u8,
        value: u64,
    },
    Goto {
        target: usize,
    },
    Branch {
        dst: u8,
        operand: Operand,
        target: usize,
    },
    Call(Helper),
    Exit,
}

/// Checks the shape of the instruction at `index`; returns it with its width in
/// slots (2 for `lddw`).
fn decode(
    insns: &[Insn],
    index: usize,
    wide_tail: &[bool],
    kind: ProgramKind,
) -> Result<(Operation, usize), VerifyError> {
    let insn = insns[index];
    let at = |rule| VerifyError::at(index, rule);
    match insn.class() {
        op::CLASS_ALU | op::CLASS_ALU64 => decode_alu(insn).map(|alu| (alu, 1)).map_err(at),
        op::CLASS_JMP | op::CLASS_JMP32 => decode_jump(insn, index, wide_tail, kind)
            .map(|jump| (jump, 1))
            .map_err(at),
        op::CLASS_LDX => decode_load(insn).map(|load| (load, 1)).map_err(at),
        op::CLASS_ST | op::CLASS_STX => decode_store(insn).map(|store| (store, 1)).map_err(at),
        _ => decode_wide(insns, index).map(|wide| (wide, 2)),
    }
}

fn check_register(register: u8) -> Result<(), Rule> {
    if register > FRAME_POINTER {
        Err(Rule::BadRegister)
    } else {
        Ok(())
    }
}

fn decode_alu(insn: Insn) -> Result<Operation, Rule> {
    let wide = insn.class() == op::CLASS_ALU64;
    let operation = insn.code & op::OP_MASK;
    let from_register = insn.code & op::SRC_MASK == op::SRC_X;
    let forbidden_form = match operation {
        op::NEG => from_register,
        op::END => wide && from_register,
        _ => operation > op::END,
    };
    if forbidden_form {
        return Err(Rule::UnknownOpcode);
    }
    check_register(insn.dst())?;
    match operation {
        op::NEG => {
            if insn.src() != 0 || insn.off != 0 || insn.imm != 0 {
                return Err(Rule::ReservedField);
            }
        }
        op::END => {
            if insn.src() != 0 || insn.off != 0 {
                return Err(Rule::ReservedField);
            }
            if !matches!(insn.imm, 16 | 32 | 64) {
                return Err(Rule::BadVariant);
            }
        }
        _ => {
            if from_register {
                check_register(insn.src())?;
                if insn.imm != 0 {
                    return Err(Rule::ReservedField);
                }
            } else if insn.src() != 0 {
                return Err(Rule::ReservedField);
            }
            match operation {
                op::DIV | op::MOD => {
                    if !matches!(insn.off, 0 | 1) {
                        return Err(Rule::BadVariant);
                    }
                }
                op::MOV if from_register => {
                    let allowed = matches!(insn.off, 0 | 8 | 16) || (wide && insn.off == 32);
                    if !allowed {
                        return Err(Rule::BadVariant);
                    }
                }
                _ => {
                    if insn.off != 0 {
                        return Err(Rule::ReservedField);
                    }
                }
            }
        }
    }
    if insn.dst() == FRAME_POINTER {
        return Err(Rule::FramePointerWrite);
    }
    let is_shift = matches!(operation, op::LSH | op::RSH | op::ARSH);
    let width = if wide { 64 } else { 32 };
    if is_shift && !from_register && !(0..width).contains(&insn.imm) {
        return Err(Rule::ShiftOutOfRange);
    }
    let operand = if from_register {
        Operand::Register(insn.src())
    } else {
        Operand::Immediate(insn.imm)
    };
    Ok(Operation::Alu {
        wide,
        operation,
        dst: insn.dst(),
        operand,
        off: insn.off,
    })
}

fn decode_jump(
    insn: Insn,
    index: usize,
    wide_tail: &[bool],
    kind: ProgramKind,
) -> Result<Operation, Rule> {
    let jmp32 = insn.class() == op::CLASS_JMP32;
    let operation = insn.code & op::OP_MASK;
    let from_register = insn.code & op::SRC_MASK == op::SRC_X;
    match operation {
        op::JA => {
            if from_register {
                return Err(Rule::UnknownOpcode);
            }
            // JMP keeps the distance in `off`, JMP32 in `imm`; the other is reserved.
            let (distance, unused) = if jmp32 {
                (i64::from(insn.imm), i32::from(insn.off))
            } else {
                (i64::from(insn.off), insn.imm)
            };
            if insn.regs != 0 || unused != 0 {
                return Err(Rule::ReservedField);
            }
            let target = jump_target(index, distance, wide_tail)?;
            Ok(Operation::Goto { target })
        }
        op::CALL | op::EXIT if jmp32 || from_register => Err(Rule::UnknownOpcode),
        op::CALL => {
            // Source 1 is a local call and 2 a kfunc call: neither is supported.
            if insn.src() != 0 {
                return Err(Rule::BadVariant);
            }
            if insn.dst() != 0 || insn.off != 0 {
                return Err(Rule::ReservedField);
            }
            let helper = u32::try_from(insn.imm)
                .ok()
                .and_then(Helper::from_id)
                .ok_or(Rule::UnknownHelper)?;
            if helper == Helper::EntrySave && kind != ProgramKind::Entry {
                return Err(Rule::EntrySaveOutsideEntry);
            }
            Ok(Operation::Call(helper))
        }
        op::EXIT => {
            if insn.regs != 0 || insn.off != 0 || insn.imm != 0 {
                return Err(Rule::ReservedField);
            }
            Ok(Operation::Exit)
        }
        op::JEQ
        | op::JGT
        | op::JGE
        | op::JSET
        | op::JNE
        | op::JSGT
        | op::JSGE
        | op::JLT
        | op::JLE
        | op::JSLT
        | op::JSLE => {
            check_register(insn.dst())?;
            let operand = if from_register {
                check_register(insn.src())?;
                if insn.imm != 0 {
                    return Err(Rule::ReservedField);
                }
                Operand::Register(insn.src())
            } else {
                if insn.src() != 0 {
                    return Err(Rule::ReservedField);
                }
                Operand::Immediate(insn.imm)
            };
            let target = jump_target(index, i64::from(insn.off), wide_tail)?;
            Ok(Operation::Branch {
                dst: insn.dst(),
                operand,
                target,
            })
        }
        _ => Err(Rule::UnknownOpcode),
    }
}

/// The slot a jump at `index` over `distance` slots lands on, if allowed.
fn jump_target(index: usize, distance: i64, wide_tail: &[bool]) -> Result<usize, Rule> {
    if distance < 0 {
        return Err(Rule::JumpBackward);
    }
    // Both terms are far below i64::MAX: index <= MAX_INSNS, distance <= i32::MAX.
    let target = index as i64 + 1 + distance;
    let target = usize::try_from(target).map_err(|_| Rule::JumpOutOfRange)?;
    match wide_tail.get(target) {
        None => Err(Rule::JumpOutOfRange),
        Some(true) => Err(Rule::JumpIntoLddw),
        Some(false) => Ok(target),
    }
}

/// Bytes accessed by a memory opcode.
fn access_size(code: u8) -> u8 {
    match code & op::SIZE_MASK {
        op::SIZE_B => 1,
        op::SIZE_H => 2,
        op::SIZE_W => 4,
        _ => 8,
    }
}

fn decode_load(insn: Insn) -> Result<Operation, Rule> {
    let allowed = match insn.code & op::MODE_MASK {
        op::MODE_MEM => true,
        op::MODE_MEMSX => insn.code & op::SIZE_MASK != op::SIZE_DW,
        _ => false,
    };
    if !allowed {
        return Err(Rule::UnknownOpcode);
    }
    check_register(insn.dst())?;
    check_register(insn.src())?;
    if insn.imm != 0 {
        return Err(Rule::ReservedField);
    }
    if insn.dst() == FRAME_POINTER {
        return Err(Rule::FramePointerWrite);
    }
    Ok(Operation::Load {
        dst: insn.dst(),
        base: insn.src(),
        off: insn.off,
        size: access_size(insn.code),
    })
}

fn decode_store(insn: Insn) -> Result<Operation, Rule> {
    if insn.code & op::MODE_MASK != op::MODE_MEM {
        return Err(Rule::UnknownOpcode);
    }
    check_register(insn.dst())?;
    let value = if insn.class() == op::CLASS_STX {
        check_register(insn.src())?;
        if insn.imm != 0 {
            return Err(Rule::ReservedField);
        }
        Operand::Register(insn.src())
    } else {
        if insn.src() != 0 {
            return Err(Rule::ReservedField);
        }
        Operand::Immediate(insn.imm)
    };
    Ok(Operation::Store {
        base: insn.dst(),
        off: insn.off,
        size: access_size(insn.code),
        value,
    })
}

/// Checks an `LD`-class instruction, which may only be a plain `lddw`.
fn decode_wide(insns: &[Insn], index: usize) -> Result<Operation, VerifyError> {
    let insn = insns[index];
    let at = |rule| VerifyError::at(index, rule);
    if insn.code != op::LDDW {
        return Err(at(Rule::UnknownOpcode));
    }
    check_register(insn.dst()).map_err(at)?;
    // A non-zero source marks the pseudo loads (map by number, map value...).
    if insn.src() != 0 {
        return Err(at(Rule::BadVariant));
    }
    if insn.off != 0 {
        return Err(at(Rule::ReservedField));
    }
    let Some(&tail) = insns.get(index + 1) else {
        return Err(at(Rule::IncompleteLddw));
    };
    if tail.code != 0 || tail.regs != 0 || tail.off != 0 {
        return Err(VerifyError::at(index + 1, Rule::ReservedField));
    }
    if insn.dst() == FRAME_POINTER {
        return Err(at(Rule::FramePointerWrite));
    }
    let value = u64::from(insn.imm as u32) | (u64::from(tail.imm as u32) << 32);
    Ok(Operation::Wide {
        dst: insn.dst(),
        value,
    })
}

/// Where control goes after an instruction.
enum Flow {
    /// To the next instruction.
    Next,
    /// Only to this slot.
    Goto(usize),
    /// To this slot and to the next instruction.
    Branch(usize),
    /// Nowhere: the program ends.
    Exit,
}

/// What the pass accumulates over the whole program.
struct Pass<'c, 'm> {
    config: &'c VerifierConfig<'m>,
    stack_depth: u16,
    maps_used: MapsUsed,
}

fn get(registers: &Registers, register: u8) -> Value {
    match registers.get(usize::from(register)) {
        Some(value) => *value,
        // Only r10 is past the array: `decode` refused anything above it.
        None => Value::Stack(0),
    }
}

fn read(registers: &Registers, register: u8) -> Result<Value, Rule> {
    match get(registers, register) {
        Value::Uninit => Err(Rule::UninitializedRegister),
        value => Ok(value),
    }
}

fn set(registers: &mut Registers, register: u8, value: Value) {
    // `decode` refused writes to r10, the only register past the array.
    if let Some(slot) = registers.get_mut(usize::from(register)) {
        *slot = value;
    }
}

impl Pass<'_, '_> {
    /// Runs one instruction on the abstract registers.
    fn execute(&mut self, operation: Operation, registers: &mut Registers) -> Result<Flow, Rule> {
        match operation {
            Operation::Alu {
                wide,
                operation,
                dst,
                operand,
                off,
            } => {
                let result = alu(registers, wide, operation, dst, operand, off)?;
                set(registers, dst, result);
                Ok(Flow::Next)
            }
            Operation::Load {
                dst,
                base,
                off,
                size,
            } => {
                let base = read(registers, base)?;
                self.access(base, off, size, false)?;
                set(registers, dst, Value::Scalar);
                Ok(Flow::Next)
            }
            Operation::Store {
                base,
                off,
                size,
                value,
            } => {
                let base = read(registers, base)?;
                if let Operand::Register(source) = value {
                    read(registers, source)?;
                }
                self.access(base, off, size, true)?;
                Ok(Flow::Next)
            }
            Operation::Wide { dst, value } => {
                set(registers, dst, Value::constant(value));
                Ok(Flow::Next)
            }
            Operation::Goto { target } => Ok(Flow::Goto(target)),
            Operation::Branch {
                dst,
                operand,
                target,
            } => {
                read(registers, dst)?;
                if let Operand::Register(source) = operand {
                    read(registers, source)?;
                }
                Ok(Flow::Branch(target))
            }
            Operation::Call(helper) => {
                self.call(helper, registers)?;
                registers[0] = Value::Scalar;
                for clobbered in &mut registers[1..=5] {
                    *clobbered = Value::Uninit;
                }
                Ok(Flow::Next)
            }
            Operation::Exit => match registers[0] {
                Value::Uninit => Err(Rule::ExitWithoutR0),
                _ => Ok(Flow::Exit),
            },
        }
    }

    /// Checks a direct load or store of `size` bytes at `base + off`.
    fn access(&mut self, base: Value, off: i16, size: u8, store: bool) -> Result<(), Rule> {
        let size = i64::from(size);
        match base {
            Value::Stack(offset) => {
                let start = i64::from(offset) + i64::from(off);
                self.stack_range(start, size)
                    .ok_or(Rule::StackOutOfBounds)?;
                if start % size != 0 {
                    return Err(Rule::MisalignedAccess);
                }
                Ok(())
            }
            Value::Context(_) if store => Err(Rule::ContextWrite),
            Value::Context(offset) => {
                let start = i64::from(offset) + i64::from(off);
                if start < 0 || start + size > CONTEXT_SIZE as i64 {
                    return Err(Rule::ContextOutOfBounds);
                }
                if start % size != 0 {
                    return Err(Rule::MisalignedAccess);
                }
                Ok(())
            }
            _ => Err(Rule::BadMemoryBase),
        }
    }

    /// Checks that `[start, start + size)` relative to `r10` is a non-empty range
    /// inside the stack, and records its depth.
    fn stack_range(&mut self, start: i64, size: i64) -> Option<()> {
        let end = start.checked_add(size)?;
        if size <= 0 || start < -(STACK_SIZE as i64) || end > 0 {
            return None;
        }
        // -start is in 1..=STACK_SIZE here.
        self.stack_depth = self.stack_depth.max((-start) as u16);
        Some(())
    }

    /// Checks a helper call's arguments in three rounds: every argument register is
    /// initialised; constants (maps, sizes, entry slots) are known and valid;
    /// buffers are stack pointers whose ranges fit in the stack.
    fn call(&mut self, helper: Helper, registers: &Registers) -> Result<(), Rule> {
        let arguments = helper.args();
        for register in 1..=arguments.len() {
            read(registers, register as u8)?;
        }
        for (position, kind) in arguments.iter().enumerate() {
            let value = get(registers, position as u8 + 1);
            match kind {
                ArgKind::MapId => {
                    let spec = self.map_argument(value)?;
                    let fits = match helper {
                        Helper::Aggregate => matches!(spec.kind, MapKind::Aggregate(_)),
                        _ => spec.kind == MapKind::Hash,
                    };
                    if !fits {
                        return Err(Rule::MapKindMismatch);
                    }
                    self.maps_used.insert(spec.map)?;
                }
                ArgKind::Size => {
                    size_argument(value)?;
                }
                ArgKind::EntrySlot => match value {
                    Value::Const(slot) if usize::from(slot) < ENTRY_SLOTS => {}
                    _ => return Err(Rule::BadEntrySlot),
                },
                _ => {}
            }
        }
        for (position, kind) in arguments.iter().enumerate() {
            let size = match *kind {
                ArgKind::StackIn { size_arg } | ArgKind::StackOut { size_arg } => {
                    size_argument(get(registers, size_arg))?
                }
                ArgKind::MapKey { map_arg } => self.map_argument(get(registers, map_arg))?.key_size,
                ArgKind::MapValue { map_arg } => {
                    self.map_argument(get(registers, map_arg))?.value_size
                }
                ArgKind::Scalar | ArgKind::MapId | ArgKind::Size | ArgKind::EntrySlot => continue,
            };
            let Value::Stack(start) = get(registers, position as u8 + 1) else {
                return Err(Rule::HelperArgNotStack);
            };
            self.stack_range(i64::from(start), i64::from(size))
                .ok_or(Rule::HelperBufferOutOfBounds)?;
        }
        Ok(())
    }

    /// The definition of the map a `MapId` argument names.
    fn map_argument(&self, value: Value) -> Result<MapSpec, Rule> {
        let Value::Const(map) = value else {
            return Err(Rule::MapNotConstant);
        };
        self.config.maps.spec(MapId(map)).ok_or(Rule::UnknownMap)
    }
}

/// The size a `Size` argument holds, if it is a known constant in `1..=STACK_SIZE`.
fn size_argument(value: Value) -> Result<u16, Rule> {
    match value {
        Value::Const(size) if size >= 1 && usize::from(size) <= STACK_SIZE => Ok(size),
        _ => Err(Rule::BadSize),
    }
}

/// The abstract result of an `ALU`/`ALU64` instruction, after checking its reads.
fn alu(
    registers: &Registers,
    wide: bool,
    operation: u8,
    dst: u8,
    operand: Operand,
    off: i16,
) -> Result<Value, Rule> {
    let source = match operand {
        Operand::Register(register) => Some(read(registers, register)?),
        Operand::Immediate(_) => None,
    };
    if operation == op::MOV {
        return Ok(match (operand, source) {
            // The immediate is sign-extended to 64 bits, or taken as 32 bits and
            // zero-extended.
            (Operand::Immediate(imm), _) if wide => Value::constant(imm as i64 as u64),
            (Operand::Immediate(imm), _) => Value::constant(u64::from(imm as u32)),
            // A plain 64-bit copy keeps pointers; constants fit any width.
            (_, Some(value)) if off == 0 && (wide || matches!(value, Value::Const(_))) => value,
            _ => Value::Scalar,
        });
    }
    let target = read(registers, dst)?;
    // Pointer arithmetic: only add64/sub64 of an immediate keeps a pointer.
    if let (true, Operand::Immediate(imm), Value::Stack(_) | Value::Context(_)) =
        (wide, operand, target)
    {
        let delta = match operation {
            op::ADD => i64::from(imm),
            op::SUB => -i64::from(imm),
            _ => return Ok(Value::Scalar),
        };
        return Ok(move_pointer(target, delta));
    }
    let Value::Const(left) = target else {
        return Ok(Value::Scalar);
    };
    let right = match (operand, source) {
        (Operand::Immediate(imm), _) if wide => imm as i64 as u64,
        (Operand::Immediate(imm), _) => u64::from(imm as u32),
        (_, Some(Value::Const(value))) => u64::from(value),
        _ => return Ok(Value::Scalar),
    };
    Ok(fold(wide, operation, u64::from(left), right).map_or(Value::Scalar, Value::constant))
}

/// A pointer moved by `delta` bytes; a scalar if the offset leaves 16 bits.
fn move_pointer(pointer: Value, delta: i64) -> Value {
    let moved = |offset: i16| i16::try_from(i64::from(offset) + delta).ok();
    let result = match pointer {
        Value::Stack(offset) => moved(offset).map(Value::Stack),
        Value::Context(offset) => moved(offset).map(Value::Context),
        _ => None,
    };
    result.unwrap_or(Value::Scalar)
}

/// The exact result of a few operations on known values, as the ISA defines them;
/// `None` where the verifier does not fold (the result is then just a scalar).
fn fold(wide: bool, operation: u8, left: u64, right: u64) -> Option<u64> {
    if wide {
        match operation {
            op::ADD => Some(left.wrapping_add(right)),
            op::SUB => Some(left.wrapping_sub(right)),
            op::MUL => Some(left.wrapping_mul(right)),
            op::OR => Some(left | right),
            op::AND => Some(left & right),
            op::XOR => Some(left ^ right),
            op::LSH if right < 64 => Some(left << right),
            op::RSH if right < 64 => Some(left >> right),
            _ => None,
        }
    } else {
        let (left, right) = (left as u32, right as u32);
        let result = match operation {
            op::ADD => left.wrapping_add(right),
            op::SUB => left.wrapping_sub(right),
            op::MUL => left.wrapping_mul(right),
            op::OR => left | right,
            op::AND => left & right,
            op::XOR => left ^ right,
            op::LSH if right < 32 => left << right,
            op::RSH if right < 32 => left >> right,
            _ => return None,
        };
        Some(u64::from(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::AggregateKind;

    struct Maps(&'static [MapSpec]);

    impl MapShapes for Maps {
        fn spec(&self, map: MapId) -> Option<MapSpec> {
            self.0.spec(map)
        }
    }

    const MAPS: Maps = Maps(&[
        MapSpec {
            map: MapId(1),
            kind: MapKind::Hash,
            key_size: 8,
            value_size: 8,
            max_entries: 8,
        },
        MapSpec {
            map: MapId(2),
            kind: MapKind::Aggregate(AggregateKind::Count),
            key_size: 8,
            value_size: 8,
            max_entries: 8,
        },
    ]);

    fn check_kind(insns: &[Insn], kind: ProgramKind) -> Result<VerifiedProgram<'_>, VerifyError> {
        let mut scratch = VerifierScratch::<64>::with_capacity();
        verify(insns, &VerifierConfig::new(kind, &MAPS), &mut scratch)
    }

    fn check(insns: &[Insn]) -> Result<VerifiedProgram<'_>, VerifyError> {
        check_kind(insns, ProgramKind::Probe)
    }

    fn refused(insns: &[Insn]) -> (u32, Rule) {
        let error = check(insns).expect_err("program should be refused");
        (error.index, error.rule)
    }

    const ALU64_K: u8 = op::CLASS_ALU64 | op::SRC_K;
    const ALU64_X: u8 = op::CLASS_ALU64 | op::SRC_X;
    const ALU_K: u8 = op::CLASS_ALU | op::SRC_K;
    const JMP_K: u8 = op::CLASS_JMP | op::SRC_K;

    fn mov64(dst: u8, imm: i32) -> Insn {
        Insn::new(ALU64_K | op::MOV, dst, 0, 0, imm)
    }
    fn mov64_reg(dst: u8, src: u8) -> Insn {
        Insn::new(ALU64_X | op::MOV, dst, src, 0, 0)
    }
    fn add64(dst: u8, imm: i32) -> Insn {
        Insn::new(ALU64_K | op::ADD, dst, 0, 0, imm)
    }
    fn call(helper: Helper) -> Insn {
        Insn::new(JMP_K | op::CALL, 0, 0, 0, helper.id() as i32)
    }
    fn exit() -> Insn {
        Insn::new(JMP_K | op::EXIT, 0, 0, 0, 0)
    }
    fn stxdw(base: u8, off: i16, src: u8) -> Insn {
        Insn::new(
            op::CLASS_STX | op::MODE_MEM | op::SIZE_DW,
            base,
            src,
            off,
            0,
        )
    }
    fn ldxdw(dst: u8, base: u8, off: i16) -> Insn {
        Insn::new(
            op::CLASS_LDX | op::MODE_MEM | op::SIZE_DW,
            dst,
            base,
            off,
            0,
        )
    }
    fn ldxw(dst: u8, base: u8, off: i16) -> Insn {
        Insn::new(op::CLASS_LDX | op::MODE_MEM | op::SIZE_W, dst, base, off, 0)
    }

    #[test]
    fn value_is_small() {
        assert_eq!(core::mem::size_of::<Value>(), 4);
        assert_eq!(core::mem::size_of::<Option<Registers>>(), 40);
        let scratch = core::mem::size_of::<VerifierScratch>();
        assert_eq!(scratch, 41 * MAX_INSNS, "scratch is {scratch} bytes");
    }

    #[test]
    fn rules_are_numbered_densely_and_named() {
        for (position, rule) in Rule::ALL.iter().enumerate() {
            assert_eq!(usize::from(rule.code()), position + 1);
            assert_eq!(Rule::from_code(rule.code()), Some(*rule));
            assert_eq!(Rule::from_name(rule.name()), Some(*rule));
            assert!(
                rule.name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-' || b.is_ascii_digit())
            );
        }
        assert_eq!(Rule::from_code(0), None);
        assert_eq!(Rule::from_code(Rule::ALL.len() as u16 + 1), None);
        assert_eq!(Rule::JumpBackward.code(), 9);
        let error = VerifyError {
            index: 7,
            rule: Rule::JumpBackward,
        };
        assert_eq!(
            error.to_string(),
            "instruction 7: the jump goes backward or to itself, and only forward jumps are allowed"
        );
    }

    #[test]
    fn minimal_program_verifies() {
        let program = [mov64(0, 0), exit()];
        let verified = check(&program).unwrap();
        assert_eq!(verified.insns().len(), 2);
        assert_eq!(verified.stack_depth(), 0);
        assert!(verified.maps_used().is_empty());
    }

    #[test]
    fn lengths_are_bounded() {
        assert_eq!(refused(&[]), (0, Rule::EmptyProgram));
        let long = [exit(); 65];
        assert_eq!(refused(&long), (64, Rule::TooLong));
        let mut scratch = VerifierScratch::<64>::with_capacity();
        let config = VerifierConfig {
            max_insns: 3,
            ..VerifierConfig::new(ProgramKind::Probe, &MAPS)
        };
        let program = [mov64(0, 0), mov64(0, 0), mov64(0, 0), exit()];
        let error = verify(&program, &config, &mut scratch).unwrap_err();
        assert_eq!((error.index, error.rule), (3, Rule::TooLong));
    }

    #[test]
    fn uninitialised_reads_are_refused() {
        assert_eq!(refused(&[exit()]), (0, Rule::ExitWithoutR0));
        assert_eq!(
            refused(&[mov64_reg(0, 2), exit()]),
            (0, Rule::UninitializedRegister)
        );
        // r1 is the context, r10 the stack: both readable at entry.
        assert!(check(&[mov64_reg(0, 1), mov64_reg(0, 10), exit()]).is_ok());
        // After a call r1-r5 are clobbered, r0 is set.
        let program = [call(Helper::Cpu), mov64_reg(6, 1), exit()];
        assert_eq!(refused(&program), (1, Rule::UninitializedRegister));
        let program = [call(Helper::Cpu), exit()];
        assert!(check(&program).is_ok());
    }

    #[test]
    fn meet_at_joins_is_conservative() {
        // r0 set only on the fall-through path.
        let jeq = Insn::new(JMP_K | op::JEQ, 1, 0, 1, 0);
        let program = [jeq, mov64(0, 1), exit()];
        assert_eq!(refused(&program), (2, Rule::ExitWithoutR0));
        // r2 is a stack pointer on both paths, but with different offsets: no base.
        let program = [
            mov64_reg(2, 10),
            Insn::new(JMP_K | op::JEQ, 1, 0, 1, 0),
            add64(2, -8),
            add64(2, -8),
            stxdw(2, 0, 1),
            mov64(0, 0),
            exit(),
        ];
        assert_eq!(refused(&program), (4, Rule::BadMemoryBase));
    }

    #[test]
    fn stack_accesses_are_checked() {
        let store = |off| [stxdw(10, off, 1), mov64(0, 0), exit()];
        assert!(check(&store(-8)).is_ok());
        assert!(check(&store(-512)).is_ok());
        assert_eq!(refused(&store(0)), (0, Rule::StackOutOfBounds));
        assert_eq!(refused(&store(-520)), (0, Rule::StackOutOfBounds));
        assert_eq!(refused(&store(-12)), (0, Rule::MisalignedAccess));
        let program = [
            mov64_reg(2, 10),
            add64(2, -16),
            stxdw(2, 8, 1),
            ldxw(0, 2, 4),
            exit(),
        ];
        let verified = check(&program).unwrap();
        assert_eq!(verified.stack_depth(), 12);
        // A 32-bit move of a pointer is a scalar.
        let program = [
            Insn::new(ALU_K | op::SRC_X | op::MOV, 2, 10, 0, 0),
            stxdw(2, -8, 1),
        ];
        assert_eq!(refused(&program), (1, Rule::BadMemoryBase));
    }

    #[test]
    fn context_is_read_only_and_bounded() {
        assert!(check(&[ldxdw(0, 1, 248), exit()]).is_ok());
        assert_eq!(
            refused(&[ldxdw(0, 1, 256), exit()]),
            (0, Rule::ContextOutOfBounds)
        );
        assert_eq!(
            refused(&[ldxdw(0, 1, -8), exit()]),
            (0, Rule::ContextOutOfBounds)
        );
        assert_eq!(
            refused(&[ldxdw(0, 1, 4), exit()]),
            (0, Rule::MisalignedAccess)
        );
        assert_eq!(refused(&[stxdw(1, 0, 1), exit()]), (0, Rule::ContextWrite));
        let program = [add64(1, 192), ldxdw(0, 1, 56), exit()];
        assert!(check(&program).is_ok());
    }

    #[test]
    fn constants_fold_exactly() {
        // r2 = 4 << 2 = 16, a valid size for emit from r10-16.
        let program = [
            mov64(2, 4),
            Insn::new(ALU64_K | op::LSH, 2, 0, 0, 2),
            mov64_reg(1, 10),
            add64(1, -16),
            call(Helper::Emit),
            exit(),
        ];
        assert_eq!(check(&program).unwrap().stack_depth(), 16);
        // 32 + -16 is 16 in both widths (the 32-bit immediate wraps).
        let program = |class: u8, operation: u8, imm: i32| {
            [
                Insn::new(class | op::SRC_K | op::MOV, 2, 0, 0, 32),
                Insn::new(class | op::SRC_K | operation, 2, 0, 0, imm),
                mov64_reg(1, 10),
                add64(1, -16),
                call(Helper::Emit),
                exit(),
            ]
        };
        assert!(check(&program(op::CLASS_ALU, op::ADD, -16)).is_ok());
        assert!(check(&program(op::CLASS_ALU64, op::ADD, -16)).is_ok());
        assert!(check(&program(op::CLASS_ALU64, op::SUB, 16)).is_ok());
        // 16 * 0x1000_0001 is 0x1_0000_0010: 16 in 32 bits, too big in 64.
        let program = |class: u8| {
            [
                Insn::new(class | op::SRC_K | op::MOV, 2, 0, 0, 16),
                Insn::new(class | op::SRC_K | op::MUL, 2, 0, 0, 0x1000_0001),
                mov64_reg(1, 10),
                add64(1, -16),
                call(Helper::Emit),
                exit(),
            ]
        };
        assert!(check(&program(op::CLASS_ALU)).is_ok());
        assert_eq!(refused(&program(op::CLASS_ALU64)), (4, Rule::BadSize));
        // mov32 -16 is 0xffff_fff0, a scalar too big to track: no longer a size.
        let program = [
            Insn::new(ALU_K | op::MOV, 2, 0, 0, -16),
            add64(2, 0x20),
            mov64_reg(1, 10),
            add64(1, -16),
            call(Helper::Emit),
            exit(),
        ];
        assert_eq!(refused(&program), (4, Rule::BadSize));
    }

    #[test]
    fn helpers_check_their_arguments() {
        let lookup = |key_offset: i32, map: i32| {
            [
                mov64(1, map),
                mov64_reg(2, 10),
                add64(2, key_offset),
                mov64_reg(3, 10),
                add64(3, -16),
                call(Helper::MapLookup),
                exit(),
            ]
        };
        let program = lookup(-8, 1);
        let verified = check(&program).unwrap();
        assert_eq!(verified.maps_used().as_slice(), &[MapId(1)]);
        assert_eq!(verified.stack_depth(), 16);
        assert_eq!(refused(&lookup(-4, 1)), (5, Rule::HelperBufferOutOfBounds));
        assert_eq!(refused(&lookup(-8, 2)), (5, Rule::MapKindMismatch));
        assert_eq!(refused(&lookup(-8, 3)), (5, Rule::UnknownMap));
        let program = [call(Helper::EntrySave), exit()];
        assert_eq!(refused(&program), (0, Rule::EntrySaveOutsideEntry));
        let program = [mov64(1, 8), mov64(2, 0), call(Helper::EntrySave), exit()];
        let error = check_kind(&program, ProgramKind::Entry).unwrap_err();
        assert_eq!((error.index, error.rule), (2, Rule::BadEntrySlot));
        let program = [mov64(1, 7), mov64(2, 0), call(Helper::EntrySave), exit()];
        assert!(check_kind(&program, ProgramKind::Entry).is_ok());
        let program = [Insn::new(JMP_K | op::CALL, 0, 0, 0, 99), exit()];
        assert_eq!(refused(&program), (0, Rule::UnknownHelper));
    }

    #[test]
    fn maps_used_is_bounded_and_sorted() {
        let mut maps = MapsUsed::new();
        for map in (0..MAX_MAPS_PER_PROGRAM as u16).rev() {
            maps.insert(MapId(map * 2)).unwrap();
            maps.insert(MapId(map * 2)).unwrap();
        }
        assert_eq!(maps.len(), MAX_MAPS_PER_PROGRAM);
        assert!(maps.as_slice().windows(2).all(|pair| pair[0] < pair[1]));
        assert!(maps.contains(MapId(62)) && !maps.contains(MapId(61)));
        assert_eq!(maps.insert(MapId(1)), Err(Rule::TooManyMaps));
        assert_eq!(maps.insert(MapId(4)), Ok(()));
    }

    #[test]
    fn jumps_go_forward_inside_the_program() {
        let ja = |off| Insn::new(JMP_K | op::JA, 0, 0, off, 0);
        assert_eq!(refused(&[ja(-1), exit()]), (0, Rule::JumpBackward));
        assert_eq!(refused(&[ja(1), exit()]), (0, Rule::JumpOutOfRange));
        assert!(check(&[mov64(0, 0), ja(0), exit()]).is_ok());
        let lddw = [Insn::new(op::LDDW, 0, 0, 0, 1), Insn::new(0, 0, 0, 0, 0)];
        assert_eq!(
            refused(&[ja(1), lddw[0], lddw[1], exit()]),
            (0, Rule::JumpIntoLddw)
        );
        assert!(check(&[ja(2), lddw[0], lddw[1], mov64(0, 0), exit()]).is_ok());
        assert_eq!(refused(&[mov64(0, 0), lddw[0]]), (1, Rule::IncompleteLddw));
        assert_eq!(refused(&[lddw[0], lddw[1]]), (0, Rule::FallOffEnd));
        let ja32 = Insn::new(op::CLASS_JMP32 | op::JA, 0, 0, 0, 1);
        assert!(check(&[mov64(0, 0), ja32, mov64(0, 1), exit()]).is_ok());
    }
}
