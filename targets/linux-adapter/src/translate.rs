//! Translation of verified handler programs into Linux BPF programs.
//!
//! # Design
//!
//! Our handlers and Linux's BPF share the RFC 9669 encoding, so most instructions
//! pass through unchanged. What differs, and is rewritten here:
//!
//! - **The context.** Our handlers read a 256-byte record of DWARF-numbered
//!   register slots; a Linux uprobe program gets `struct pt_regs`. A forward pass
//!   (jumps only go forward, as in our verifier) tracks which registers hold
//!   `context + k`; each load through one becomes a load of the matching `pt_regs`
//!   field ([`PT_REGS_OFFSET`]), the probe-number slot becomes a constant, and
//!   additions to a context pointer are folded into the loads, because Linux
//!   refuses loads through a moved context pointer.
//! - **Helpers.** Each of our helpers becomes a Linux helper call or a short
//!   sequence with our semantics (return values, zeroed buffers, counted faults and
//!   drops): see [`Translator::helper`].
//! - **The stack.** Our executors zero the stack before every run and Linux refuses
//!   reads of stack it has not seen written, so a prologue zeroes the bytes the
//!   program uses. The sequences need scratch space: the lowest [`SCRATCH_BYTES`] of
//!   the 512-byte stack, so a program may use at most [`MAX_PROGRAM_STACK`] bytes.
//! - **Dead code**, which our verifier allows after `exit` and Linux refuses, is
//!   dropped; `exit` returns 0 (a non-zero value would make the kernel also write a
//!   perf sample).
//!
//! Events go to one BPF ring buffer as [`RECORD_HEADER`] bytes (per-CPU sequence
//! number, probe, CPU, time) followed by the emitted bytes. Every attempt to emit
//! takes the next number of its CPU from a per-CPU counter; a record that finds no
//! room increments the CPU's lost counter, so the daemon can report every number as
//! delivered or lost.
//!
//! # Invariants
//!
//! - Anything without a faithful translation is refused with an [`ErrorCode`] and a
//!   reason, never translated approximately: return-probe slots outside return
//!   programs, `stack_trace`, a context pointer used as a number after it was moved.
//!
//! # Return sites with entry programs
//!
//! Linux runs the entry program at an ordinary uprobe on the function's first
//! instruction ([`Role::Entry`]): it creates a record of the eight entry slots in a
//! hash map keyed by (thread, stack pointer at entry), which `entry_save` fills. The
//! return program ([`Role::Return`]) runs at the uretprobe, where the stack pointer
//! is 8 bytes higher (`ret` popped the return address): it copies the frame's record
//! to its stack, deletes it, and reads the entry slots from the copy. A return
//! without a record (the function was entered before the entry probe was live) is
//! counted as a miss and its handler does not run, as the stub skips such returns.
//! Entry and return programs keep [`ENTRY_SCRATCH_BYTES`] of scratch.
//! - Aggregations are per-CPU maps whose zero value means "empty": min and max are
//!   stored with the order-preserving encodings of [`encode_min`] and
//!   [`encode_max`], so an entry another CPU created (zero on this CPU) is empty.

use std::fmt;

use probe_port_protocol::context::{CONTEXT_SIZE, slot};
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::isa::{FRAME_POINTER, Helper, Insn, STACK_SIZE, helper_error, op};
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};

/// Linux helper numbers used here (`enum bpf_func_id` of the kernel's UAPI).
pub mod linux_helper {
    /// `bpf_map_lookup_elem(map, key)`.
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    /// `bpf_map_update_elem(map, key, value, flags)`.
    pub const MAP_UPDATE_ELEM: i32 = 2;
    /// `bpf_map_delete_elem(map, key)`.
    pub const MAP_DELETE_ELEM: i32 = 3;
    /// `bpf_ktime_get_ns()`.
    pub const KTIME_GET_NS: i32 = 5;
    /// `bpf_get_smp_processor_id()`.
    pub const GET_SMP_PROCESSOR_ID: i32 = 8;
    /// `bpf_get_current_pid_tgid()`: `tgid << 32 | pid`.
    pub const GET_CURRENT_PID_TGID: i32 = 14;
    /// `bpf_get_current_comm(buf, size)`.
    pub const GET_CURRENT_COMM: i32 = 16;
    /// `bpf_probe_read_user(dst, size, src)`.
    pub const PROBE_READ_USER: i32 = 112;
    /// `bpf_probe_read_kernel(dst, size, src)`.
    pub const PROBE_READ_KERNEL: i32 = 113;
    /// `bpf_probe_read_user_str(dst, size, src)`.
    pub const PROBE_READ_USER_STR: i32 = 114;
    /// `bpf_probe_read_kernel_str(dst, size, src)`.
    pub const PROBE_READ_KERNEL_STR: i32 = 115;
    /// `bpf_ringbuf_reserve(ringbuf, size, flags)`.
    pub const RINGBUF_RESERVE: i32 = 131;
    /// `bpf_ringbuf_submit(data, flags)`.
    pub const RINGBUF_SUBMIT: i32 = 132;
}

/// `src` of an `lddw` whose immediate is a map file descriptor.
pub const PSEUDO_MAP_FD: u8 = 1;
/// `src` of an `lddw` whose immediates are a map file descriptor and an offset in
/// its value (array maps only): the result is a pointer into the value.
pub const PSEUDO_MAP_VALUE: u8 = 2;
/// Mode bits of atomic read-modify-write instructions (`BPF_ATOMIC`).
const MODE_ATOMIC: u8 = 0xc0;
/// Atomic operation flag: also load the old value into the source register.
const ATOMIC_FETCH: i32 = 0x01;
/// `BPF_NOEXIST` for `bpf_map_update_elem`.
const NOEXIST: i32 = 1;

/// Byte offset in x86_64 `struct pt_regs` of each DWARF register (slot order).
pub const PT_REGS_OFFSET: [i16; 16] = [
    80,  // rax
    96,  // rdx
    88,  // rcx
    40,  // rbx
    104, // rsi
    112, // rdi
    32,  // rbp
    152, // rsp
    72,  // r8
    64,  // r9
    56,  // r10
    48,  // r11
    24,  // r12
    16,  // r13
    8,   // r14
    0,   // r15
];
/// Offset of `ip` in x86_64 `struct pt_regs`.
pub const PT_REGS_IP: i16 = 128;
/// Offset of `flags` in x86_64 `struct pt_regs`.
pub const PT_REGS_FLAGS: i16 = 144;

/// Bytes at the bottom of the stack that the translated sequences use.
pub const SCRATCH_BYTES: usize = 80;
/// The deepest stack a program may use to be translated.
pub const MAX_PROGRAM_STACK: usize = STACK_SIZE - SCRATCH_BYTES;
/// Bytes before the emitted data in each ring record: sequence number (u64),
/// probe (u32), CPU (u32), time in nanoseconds (u64).
pub const RECORD_HEADER: usize = 24;

// Scratch slots, as offsets from r10.
const SPILL_A: i16 = -512;
const SPILL_B: i16 = -504;
const SPILL_R6: i16 = -496;
const SPILL_R7: i16 = -488;
const SPILL_R8: i16 = -480;
const SPILL_R9: i16 = -472;
const SPILL_SEQ: i16 = -464;
const KEY: i16 = -456;
const COMM: i16 = -456 + 8;
const COMM_SIZE: usize = 16;
// Entry and return programs only: the (thread, entry stack pointer) key of the
// frame, the entry program's pointer to its saved values, the return program's
// copy of them.
const ENTRY_KEY: i16 = -432;
const ENTRY_POINTER: i16 = -416;
const ENTRY_VALUES: i16 = -408;
/// Bytes of scratch of entry and return programs.
pub const ENTRY_SCRATCH_BYTES: usize = 168;
/// Bytes of an entry record: the eight entry slots.
pub const ENTRY_RECORD: usize = 8 * probe_port_protocol::context::ENTRY_SLOTS;
/// Offset of `sp` in x86_64 `struct pt_regs`.
const PT_REGS_SP: i16 = 152;

/// Words of the per-CPU counters value (map [`Environment::counters_fd`], key 0).
pub mod counter {
    /// The next event sequence number of the CPU.
    pub const NEXT_SEQ: usize = 0;
    /// Records that found the ring full on the CPU.
    pub const LOST: usize = 1;
    /// Words per value.
    pub const WORDS: usize = 2;
}

/// Words of the per-CPU statistics value of each probe (map
/// [`Environment::stats_fd`], keyed by probe number).
pub mod stat {
    /// Handler runs.
    pub const HITS: usize = 0;
    /// Failed memory reads.
    pub const FAULTS: usize = 1;
    /// Records or map updates that found no room.
    pub const DROPS: usize = 2;
    /// The address of the CPU's last failed read (0 if none).
    pub const LAST_FAULT: usize = 3;
    /// Returns skipped because their entry was not seen.
    pub const MISSES: usize = 4;
    /// Words per value.
    pub const WORDS: usize = 5;
}

/// The stored form of a signed minimum: order-reversing, so that the per-CPU
/// maximum of the stored form is the minimum, and 0 stands for `i64::MAX` (empty).
pub const fn encode_min(value: i64) -> u64 {
    (value as u64) ^ 0x7fff_ffff_ffff_ffff
}

/// The stored form of a signed maximum: order-preserving, 0 stands for `i64::MIN`.
pub const fn encode_max(value: i64) -> u64 {
    (value as u64) ^ 0x8000_0000_0000_0000
}

/// The value of a stored minimum.
pub const fn decode_min(stored: u64) -> i64 {
    (stored ^ 0x7fff_ffff_ffff_ffff) as i64
}

/// The value of a stored maximum.
pub const fn decode_max(stored: u64) -> i64 {
    (stored ^ 0x8000_0000_0000_0000) as i64
}

/// A map as a translated program refers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxMap {
    /// The protocol's definition.
    pub spec: MapSpec,
    /// The BPF map's file descriptor.
    pub fd: i32,
    /// For aggregations: an array map with one all-zero value of the same size,
    /// inserted when a key is new.
    pub zero_fd: i32,
}

/// What the Linux program's context (`r1` at entry) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout<'a> {
    /// `struct pt_regs` at offset 0: kprobes, uprobes, and perf events
    /// (`struct bpf_perf_event_data` starts with the interrupted registers).
    Registers,
    /// A tracepoint's record: our context slot `n` is the `n`th field.
    Record(&'a [RecordField]),
}

/// One field of a tracepoint record, read for one context slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordField {
    /// Byte offset in the record.
    pub offset: i16,
    /// Size in bytes: 1, 2, 4 or 8 (zero-extended to the slot's 64 bits; the
    /// compiler narrows marker arguments to their type, sign included).
    pub size: u8,
}

/// Everything a translation needs besides the program.
pub struct Environment<'a> {
    /// What the context is.
    pub layout: Layout<'a>,
    /// The probe's number (the context's probe slot, the records' probe field).
    pub probe: u32,
    /// The maps of the session.
    pub maps: &'a dyn Fn(MapId) -> Option<LinuxMap>,
    /// The BPF ring buffer every record goes to.
    pub ring_fd: i32,
    /// Per-CPU array (one entry) of [`counter`] words.
    pub counters_fd: i32,
    /// Per-CPU array of [`stat`] words, indexed by probe number.
    pub stats_fd: i32,
    /// Which program of the site this is.
    pub role: Role,
    /// For entry and return programs: the hash map from (thread id, stack pointer
    /// at entry) to [`ENTRY_RECORD`] bytes of saved values.
    pub entries_fd: i32,
    /// For entry programs: an array map with one all-zero entry record.
    pub entry_zero_fd: i32,
}

/// Which program of a site a translation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The handler of an entry site (or of a return site without entry program).
    Probe {
        /// Whether it runs at a function's return (the PC slot is the address
        /// returned to, and the return-address slot is known).
        at_return: bool,
    },
    /// The entry program of a return site: creates the frame's entry record, which
    /// `entry_save` fills.
    Entry,
    /// The handler of a return site with an entry program: reads the frame's entry
    /// record (and deletes it), or skips the return as a miss when there is none.
    Return,
}

impl Role {
    fn scratch(self) -> usize {
        match self {
            Role::Probe { .. } => SCRATCH_BYTES,
            Role::Entry | Role::Return => ENTRY_SCRATCH_BYTES,
        }
    }
}

impl fmt::Debug for Environment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Environment")
            .field("probe", &self.probe)
            .field("ring_fd", &self.ring_fd)
            .finish_non_exhaustive()
    }
}

/// Why a program cannot be translated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("instruction {index}: {reason}")]
pub struct TranslateError {
    /// The error code to reply with.
    pub code: ErrorCode,
    /// The slot of our program concerned.
    pub index: usize,
    /// What cannot be translated.
    pub reason: String,
}

fn refuse(index: usize, reason: impl Into<String>) -> TranslateError {
    TranslateError {
        code: ErrorCode::UNSUPPORTED,
        index,
        reason: reason.into(),
    }
}

/// What the pass knows about a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    /// Nothing useful.
    Unknown,
    /// The context pointer plus a constant; Linux's register holds the context
    /// pointer itself.
    Context(i32),
    /// A known constant.
    Constant(i64),
}

impl Value {
    fn meet(self, other: Value) -> Value {
        if self == other { self } else { Value::Unknown }
    }
}

type State = [Value; 11];

/// A jump target inside the output.
#[derive(Clone, Copy, Debug)]
struct Label(usize);

/// Output instructions with forward and backward labels.
#[derive(Default)]
struct Emitter {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    /// (instruction index, label, offset in the immediate instead of `off`)
    fixups: Vec<(usize, Label, bool)>,
}

impl Emitter {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.insns.len());
    }

    fn push(&mut self, insn: Insn) {
        self.insns.push(insn);
    }

    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, target: Label) {
        self.fixups.push((self.insns.len(), target, false));
        self.insns.push(Insn::new(code, dst, src, 0, imm));
    }

    fn ja(&mut self, target: Label) {
        self.jump(op::CLASS_JMP | op::JA, 0, 0, 0, target);
    }

    fn ja32(&mut self, target: Label) {
        self.fixups.push((self.insns.len(), target, true));
        self.insns
            .push(Insn::new(op::CLASS_JMP32 | op::JA, 0, 0, 0, 0));
    }

    fn mov_imm(&mut self, dst: u8, imm: i32) {
        self.push(Insn::new(
            op::CLASS_ALU64 | op::MOV | op::SRC_K,
            dst,
            0,
            0,
            imm,
        ));
    }

    fn mov_reg(&mut self, dst: u8, src: u8) {
        self.push(Insn::new(
            op::CLASS_ALU64 | op::MOV | op::SRC_X,
            dst,
            src,
            0,
            0,
        ));
    }

    fn alu_imm(&mut self, operation: u8, dst: u8, imm: i32) {
        self.push(Insn::new(
            op::CLASS_ALU64 | operation | op::SRC_K,
            dst,
            0,
            0,
            imm,
        ));
    }

    fn alu_reg(&mut self, operation: u8, dst: u8, src: u8) {
        self.push(Insn::new(
            op::CLASS_ALU64 | operation | op::SRC_X,
            dst,
            src,
            0,
            0,
        ));
    }

    fn lddw(&mut self, dst: u8, src: u8, value: u64) {
        self.push(Insn::new(op::LDDW, dst, src, 0, value as u32 as i32));
        self.push(Insn::new(0, 0, 0, 0, (value >> 32) as u32 as i32));
    }

    fn map_fd(&mut self, dst: u8, fd: i32) {
        self.push(Insn::new(op::LDDW, dst, PSEUDO_MAP_FD, 0, fd));
        self.push(Insn::new(0, 0, 0, 0, 0));
    }

    fn map_value(&mut self, dst: u8, fd: i32) {
        self.push(Insn::new(op::LDDW, dst, PSEUDO_MAP_VALUE, 0, fd));
        self.push(Insn::new(0, 0, 0, 0, 0));
    }

    fn load(&mut self, size: u8, dst: u8, src: u8, off: i16) {
        self.push(Insn::new(
            op::CLASS_LDX | op::MODE_MEM | size,
            dst,
            src,
            off,
            0,
        ));
    }

    fn store_reg(&mut self, size: u8, dst: u8, off: i16, src: u8) {
        self.push(Insn::new(
            op::CLASS_STX | op::MODE_MEM | size,
            dst,
            src,
            off,
            0,
        ));
    }

    fn store_imm(&mut self, size: u8, dst: u8, off: i16, imm: i32) {
        self.push(Insn::new(
            op::CLASS_ST | op::MODE_MEM | size,
            dst,
            0,
            off,
            imm,
        ));
    }

    /// `*(u64 *)(dst + off) += src`, atomically.
    fn atomic_add(&mut self, dst: u8, off: i16, src: u8) {
        self.push(Insn::new(
            op::CLASS_STX | MODE_ATOMIC | op::SIZE_DW,
            dst,
            src,
            off,
            i32::from(op::ADD),
        ));
    }

    /// `src = atomic_fetch_add((u64 *)(dst + off), src)`.
    fn atomic_fetch_add(&mut self, dst: u8, off: i16, src: u8) {
        self.push(Insn::new(
            op::CLASS_STX | MODE_ATOMIC | op::SIZE_DW,
            dst,
            src,
            off,
            i32::from(op::ADD) | ATOMIC_FETCH,
        ));
    }

    fn call(&mut self, helper: i32) {
        self.push(Insn::new(op::CLASS_JMP | op::CALL, 0, 0, 0, helper));
    }

    /// The instructions with every jump resolved; `Err` with the instruction index
    /// of a jump whose distance does not fit its 16-bit offset.
    fn finish(mut self) -> Result<Vec<Insn>, usize> {
        for (index, label, in_imm) in self.fixups {
            let target = self.labels[label.0].expect("every label is bound");
            let distance = target as i64 - (index as i64 + 1);
            if in_imm {
                self.insns[index].imm = i32::try_from(distance).map_err(|_| index)?;
            } else {
                self.insns[index].off = i16::try_from(distance).map_err(|_| index)?;
            }
        }
        Ok(self.insns)
    }
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const FP: u8 = FRAME_POINTER;

fn is_jump_class(class: u8) -> bool {
    class == op::CLASS_JMP || class == op::CLASS_JMP32
}

/// The slot a jump at `index` goes to, if the instruction is a jump.
fn jump_target(insns: &[Insn], index: usize) -> Option<usize> {
    let insn = insns[index];
    if !is_jump_class(insn.class()) {
        return None;
    }
    let operation = insn.code & op::OP_MASK;
    if operation == op::CALL || operation == op::EXIT {
        return None;
    }
    let distance = if insn.class() == op::CLASS_JMP32 && operation == op::JA {
        i64::from(insn.imm)
    } else {
        i64::from(insn.off)
    };
    usize::try_from(index as i64 + 1 + distance).ok()
}

/// Translates a verified program (`stack_depth` as our verifier measured it).
pub fn translate(
    program: &[Insn],
    stack_depth: usize,
    environment: &Environment<'_>,
) -> Result<Vec<Insn>, TranslateError> {
    let most = STACK_SIZE - environment.role.scratch();
    if stack_depth > most {
        return Err(TranslateError {
            code: ErrorCode::NO_SPACE,
            index: 0,
            reason: format!(
                "the program uses {stack_depth} bytes of stack; on Linux at most {most}"
            ),
        });
    }
    let mut translator = Translator {
        program,
        environment,
        out: Emitter::default(),
        states: vec![None; program.len() + 1],
    };
    translator.run(stack_depth)?;
    translator.out.finish().map_err(|_| TranslateError {
        code: ErrorCode::NO_SPACE,
        index: 0,
        reason: "the translated program is too long for a 16-bit jump".to_string(),
    })
}

struct Translator<'p, 'e> {
    program: &'p [Insn],
    environment: &'e Environment<'e>,
    out: Emitter,
    /// The state flowing into each slot (`None`: unreachable).
    states: Vec<Option<State>>,
}

impl Translator<'_, '_> {
    fn flow(&mut self, target: usize, state: &State) {
        if let Some(slot) = self.states.get_mut(target) {
            match slot {
                Some(existing) => {
                    for (mine, theirs) in existing.iter_mut().zip(state) {
                        *mine = mine.meet(*theirs);
                    }
                }
                None => *slot = Some(*state),
            }
        }
    }

    fn run(&mut self, stack_depth: usize) -> Result<(), TranslateError> {
        let labels: Vec<Label> = (0..=self.program.len()).map(|_| self.out.label()).collect();
        self.prologue(stack_depth);
        let mut entry = [Value::Unknown; 11];
        entry[1] = Value::Context(0);
        self.states[0] = Some(entry);

        let mut index = 0;
        while index < self.program.len() {
            let insn = self.program[index];
            let width = if insn.is_wide() { 2 } else { 1 };
            self.out.bind(labels[index]);
            let Some(mut state) = self.states[index] else {
                // Unreachable: Linux refuses dead code, so it is left out.
                index += width;
                continue;
            };
            let falls_through = self.instruction(index, &mut state, &labels)?;
            if let Some(target) = jump_target(self.program, index) {
                self.flow(target, &state);
            }
            if falls_through {
                self.flow(index + width, &state);
            }
            index += width;
        }
        self.out.bind(labels[self.program.len()]);
        Ok(())
    }

    /// Zeroes the stack the program uses and counts the hit.
    fn prologue(&mut self, stack_depth: usize) {
        let out = &mut self.out;
        out.mov_reg(R6, R1);
        // Registers the sequences spill must be initialised for Linux; our
        // verifier lets no program read them before writing them.
        for register in [R7, R8, R9] {
            out.mov_imm(register, 0);
        }
        let words = stack_depth.div_ceil(8);
        for word in 1..=words {
            out.store_imm(op::SIZE_DW, FP, -(8 * word as i16), 0);
        }
        match self.environment.role {
            Role::Probe { .. } => self.count_stat(stat::HITS),
            Role::Entry => {
                self.count_stat(stat::HITS);
                self.create_entry_record();
            }
            Role::Return => {
                self.take_entry_record();
                self.count_stat(stat::HITS);
            }
        }
        self.out.mov_reg(R1, R6);
    }

    /// Writes the frame's key at `ENTRY_KEY`: the thread, and the stack pointer at
    /// the function's entry (`sp`, or at a return `sp - 8`: `ret` popped the return
    /// address). Clobbers r0–r5; r6 holds the context.
    fn entry_key(&mut self, at_return: bool) {
        let out = &mut self.out;
        out.call(linux_helper::GET_CURRENT_PID_TGID);
        out.store_reg(op::SIZE_DW, FP, ENTRY_KEY, R0);
        out.load(op::SIZE_DW, R1, R6, PT_REGS_SP);
        if at_return {
            out.alu_imm(op::ADD, R1, -8);
        }
        out.store_reg(op::SIZE_DW, FP, ENTRY_KEY + 8, R1);
    }

    /// Entry programs: a zeroed record for this frame (replacing a stale one of a
    /// frame that never returned), its address kept at `ENTRY_POINTER` (0 when
    /// the map is full).
    fn create_entry_record(&mut self) {
        self.entry_key(false);
        let (missing, done) = (self.out.label(), self.out.label());
        let out = &mut self.out;
        out.map_fd(R1, self.environment.entries_fd);
        out.mov_reg(R2, FP);
        out.alu_imm(op::ADD, R2, i32::from(ENTRY_KEY));
        out.map_value(R3, self.environment.entry_zero_fd);
        out.mov_imm(R4, 0);
        out.call(linux_helper::MAP_UPDATE_ELEM);
        out.map_fd(R1, self.environment.entries_fd);
        out.mov_reg(R2, FP);
        out.alu_imm(op::ADD, R2, i32::from(ENTRY_KEY));
        out.call(linux_helper::MAP_LOOKUP_ELEM);
        out.jump(op::CLASS_JMP | op::JEQ | op::SRC_K, R0, 0, 0, missing);
        out.store_reg(op::SIZE_DW, FP, ENTRY_POINTER, R0);
        out.ja(done);
        out.bind(missing);
        out.store_imm(op::SIZE_DW, FP, ENTRY_POINTER, 0);
        out.bind(done);
    }

    /// Return programs: the frame's entry record copied to `ENTRY_VALUES` and
    /// deleted; without one, the return is counted as a miss and the handler
    /// does not run.
    fn take_entry_record(&mut self) {
        self.entry_key(true);
        let found = self.out.label();
        let out = &mut self.out;
        out.map_fd(R1, self.environment.entries_fd);
        out.mov_reg(R2, FP);
        out.alu_imm(op::ADD, R2, i32::from(ENTRY_KEY));
        out.call(linux_helper::MAP_LOOKUP_ELEM);
        out.jump(op::CLASS_JMP | op::JNE | op::SRC_K, R0, 0, 0, found);
        self.count_stat(stat::MISSES);
        let out = &mut self.out;
        out.mov_imm(R0, 0);
        out.push(Insn::new(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0));
        out.bind(found);
        for word in 0..ENTRY_RECORD / 8 {
            let offset = (word * 8) as i16;
            out.load(op::SIZE_DW, R1, R0, offset);
            out.store_reg(op::SIZE_DW, FP, ENTRY_VALUES + offset, R1);
        }
        out.map_fd(R1, self.environment.entries_fd);
        out.mov_reg(R2, FP);
        out.alu_imm(op::ADD, R2, i32::from(ENTRY_KEY));
        out.call(linux_helper::MAP_DELETE_ELEM);
    }

    /// Adds 1 to this probe's per-CPU statistic `word`. Clobbers r0–r5.
    fn count_stat(&mut self, word: usize) {
        let skip = self.out.label();
        let out = &mut self.out;
        out.store_imm(op::SIZE_W, FP, KEY, self.environment.probe as i32);
        out.map_fd(R1, self.environment.stats_fd);
        out.mov_reg(R2, FP);
        out.alu_imm(op::ADD, R2, i32::from(KEY));
        out.call(linux_helper::MAP_LOOKUP_ELEM);
        out.jump(op::CLASS_JMP | op::JEQ | op::SRC_K, R0, 0, 0, skip);
        out.mov_imm(R1, 1);
        out.atomic_add(R0, (word * 8) as i16, R1);
        out.bind(skip);
    }

    /// Translates one instruction; returns whether execution can fall through.
    fn instruction(
        &mut self,
        index: usize,
        state: &mut State,
        labels: &[Label],
    ) -> Result<bool, TranslateError> {
        let insn = self.program[index];
        let class = insn.class();
        let (dst, src) = (insn.dst() as usize, insn.src() as usize);
        let moved_context = |value: Value| matches!(value, Value::Context(k) if k != 0);
        match class {
            op::CLASS_ALU | op::CLASS_ALU64 => {
                let operation = insn.code & op::OP_MASK;
                let uses_src = insn.code & op::SRC_MASK == op::SRC_X;
                let source = if uses_src { state[src] } else { Value::Unknown };
                let destination = state[dst];
                let wide = class == op::CLASS_ALU64;
                // A context pointer copied or moved by a constant: folded into loads.
                if wide && operation == op::MOV && uses_src && insn.off == 0 {
                    state[dst] = source;
                    if matches!(source, Value::Context(_)) {
                        // Linux's copy holds the plain context pointer.
                        self.out.mov_reg(dst as u8, src as u8);
                        return Ok(true);
                    }
                } else if wide
                    && !uses_src
                    && (operation == op::ADD || operation == op::SUB)
                    && let Value::Context(k) = destination
                {
                    let delta = if operation == op::ADD {
                        insn.imm
                    } else {
                        -insn.imm
                    };
                    state[dst] = Value::Context(k.saturating_add(delta));
                    return Ok(true);
                } else {
                    let overwrites = operation == op::MOV;
                    if (!overwrites && moved_context(destination))
                        || (uses_src && moved_context(source))
                    {
                        return Err(refuse(index, "a moved context pointer used as a number"));
                    }
                    state[dst] = constant_alu(insn, destination, source);
                }
                if operation == op::MOV && uses_src && matches!(insn.off, 8 | 16 | 32) {
                    self.sign_extend_move(insn, wide);
                    return Ok(true);
                }
                self.out.push(insn);
                Ok(true)
            }
            op::CLASS_LD => {
                // `lddw` with source 0 (our verifier allows nothing else).
                let value =
                    (insn.imm as u32 as u64) | ((self.program[index + 1].imm as u32 as u64) << 32);
                state[dst] = Value::Constant(value as i64);
                self.out.push(insn);
                self.out.push(self.program[index + 1]);
                Ok(true)
            }
            op::CLASS_LDX => {
                let base = state[src];
                state[dst] = Value::Unknown;
                match base {
                    Value::Context(k) => {
                        self.context_load(index, insn, k)?;
                        Ok(true)
                    }
                    _ if insn.code & op::MODE_MASK == op::MODE_MEMSX => {
                        // Linux before 6.6 has no sign-extending load: load, then
                        // shift the value's sign bit to the top and back.
                        let bits = match insn.code & op::SIZE_MASK {
                            op::SIZE_B => 8,
                            op::SIZE_H => 16,
                            _ => 32,
                        };
                        let mut plain = insn;
                        plain.code = (insn.code & !op::MODE_MASK) | op::MODE_MEM;
                        self.out.push(plain);
                        self.out.alu_imm(op::LSH, insn.dst(), 64 - bits);
                        self.out.alu_imm(op::ARSH, insn.dst(), 64 - bits);
                        Ok(true)
                    }
                    _ => {
                        self.out.push(insn);
                        Ok(true)
                    }
                }
            }
            op::CLASS_ST | op::CLASS_STX => {
                if class == op::CLASS_STX && moved_context(state[src]) {
                    return Err(refuse(index, "a moved context pointer stored to memory"));
                }
                self.out.push(insn);
                Ok(true)
            }
            _ => {
                let operation = insn.code & op::OP_MASK;
                match operation {
                    op::EXIT => {
                        self.out.mov_imm(R0, 0);
                        self.out.push(insn);
                        Ok(false)
                    }
                    op::CALL => {
                        self.helper(index, insn.imm, state)?;
                        for register in &mut state[..6] {
                            *register = Value::Unknown;
                        }
                        Ok(true)
                    }
                    _ => {
                        let uses_src = insn.code & op::SRC_MASK == op::SRC_X;
                        if moved_context(state[dst]) || (uses_src && moved_context(state[src])) {
                            return Err(refuse(index, "a moved context pointer compared"));
                        }
                        let target = jump_target(self.program, index)
                            .and_then(|target| labels.get(target).copied())
                            .ok_or_else(|| refuse(index, "jump outside the program"))?;
                        if class == op::CLASS_JMP32 && operation == op::JA {
                            self.out.ja32(target);
                        } else {
                            self.out
                                .jump(insn.code, insn.dst(), insn.src(), insn.imm, target);
                        }
                        Ok(operation != op::JA)
                    }
                }
            }
        }
    }

    /// A sign-extending move (`movsx`, `off` 8, 16 or 32), which Linux accepts only
    /// from 6.6 on (older kernels refuse it: "BPF_MOV uses reserved fields"): a
    /// plain move, then the value's sign bit shifted to the top and back.
    fn sign_extend_move(&mut self, insn: Insn, wide: bool) {
        let (class, width) = if wide {
            (op::CLASS_ALU64, 64)
        } else {
            (op::CLASS_ALU, 32)
        };
        let shift = width - i32::from(insn.off);
        self.out.push(Insn::new(
            class | op::MOV | op::SRC_X,
            insn.dst(),
            insn.src(),
            0,
            0,
        ));
        for operation in [op::LSH, op::ARSH] {
            if shift > 0 {
                self.out.push(Insn::new(
                    class | operation | op::SRC_K,
                    insn.dst(),
                    0,
                    0,
                    shift,
                ));
            }
        }
    }

    /// A load from `context + k + insn.off`.
    fn context_load(&mut self, index: usize, insn: Insn, k: i32) -> Result<(), TranslateError> {
        let offset = k + i32::from(insn.off);
        let size_bits = insn.code & op::SIZE_MASK;
        let size = match size_bits {
            op::SIZE_B => 1,
            op::SIZE_H => 2,
            op::SIZE_W => 4,
            _ => 8,
        };
        let sign_extend = insn.code & op::MODE_MASK == op::MODE_MEMSX;
        if offset < 0 || offset as usize + size > CONTEXT_SIZE {
            return Err(refuse(index, "context load outside the context"));
        }
        let slot_number = offset as usize / 8;
        let within = (offset % 8) as i16;
        let role = self.environment.role;
        let at_return = matches!(role, Role::Return | Role::Probe { at_return: true });
        if let Layout::Record(fields) = self.environment.layout {
            return self.record_load(index, insn, slot_number, within, size, fields);
        }
        let register_field = match slot_number {
            n if n < slot::REGISTER_SLOTS => Some(PT_REGS_OFFSET[n]),
            slot::PC => Some(PT_REGS_IP),
            slot::FLAGS => Some(PT_REGS_FLAGS),
            // At a uretprobe, `ip` is the address returned to.
            slot::RETURN_ADDRESS if at_return => Some(PT_REGS_IP),
            _ => None,
        };
        let dst = insn.dst();
        if let Some(field) = register_field {
            self.out.load(size_bits, dst, insn.src(), field + within);
        } else if slot_number == slot::ENTRY_SP && at_return && size == 8 {
            self.out.load(op::SIZE_DW, dst, insn.src(), PT_REGS_SP);
            self.out.alu_imm(op::ADD, dst, -8);
        } else if slot_number >= slot::ENTRY_BASE && role == Role::Return {
            let at = ENTRY_VALUES + ((slot_number - slot::ENTRY_BASE) * 8) as i16 + within;
            self.out.load(size_bits, dst, FP, at);
        } else {
            let slot_value: u64 = match slot_number {
                slot::PROBE => u64::from(self.environment.probe),
                slot::RETURN_ADDRESS => {
                    return Err(refuse(
                        index,
                        "the return-address slot outside a return probe",
                    ));
                }
                slot::ENTRY_SP => {
                    return Err(refuse(
                        index,
                        "the entry stack pointer slot outside a return probe (or not as 8 bytes)",
                    ));
                }
                n if n >= slot::ENTRY_BASE => {
                    return Err(refuse(
                        index,
                        "entry values (@entry) outside a return probe with an entry program",
                    ));
                }
                _ => 0,
            };
            let shifted = slot_value >> (8 * within as u32);
            let value = if size == 8 {
                shifted
            } else {
                shifted & ((1u64 << (8 * size)) - 1)
            };
            self.out.lddw(dst, 0, value);
        }
        if sign_extend {
            let bits = (8 * size) as i16;
            self.out.push(Insn::new(
                op::CLASS_ALU64 | op::MOV | op::SRC_X,
                dst,
                dst,
                bits,
                0,
            ));
        }
        Ok(())
    }

    /// A context load at a tracepoint: an argument slot is its record field; the
    /// probe slot is the probe's number; every other slot is 0 (a marker site has
    /// no registers, and the adapter publishes its markers at address 0).
    fn record_load(
        &mut self,
        index: usize,
        insn: Insn,
        slot_number: usize,
        within: i16,
        size: usize,
        fields: &[RecordField],
    ) -> Result<(), TranslateError> {
        let dst = insn.dst();
        if slot_number < slot::REGISTER_SLOTS
            && let Some(field) = fields.get(slot_number)
        {
            if size != 8 || within != 0 {
                return Err(refuse(
                    index,
                    "a marker argument read other than as its whole 8-byte slot",
                ));
            }
            let size_bits = match field.size {
                1 => op::SIZE_B,
                2 => op::SIZE_H,
                4 => op::SIZE_W,
                _ => op::SIZE_DW,
            };
            self.out.load(size_bits, dst, insn.src(), field.offset);
            return Ok(());
        }
        let value = if slot_number == slot::PROBE && size == 8 && within == 0 {
            u64::from(self.environment.probe)
        } else if slot_number == slot::PROBE {
            return Err(refuse(index, "the probe slot read other than as 8 bytes"));
        } else {
            0
        };
        self.out.lddw(dst, 0, value);
        Ok(())
    }

    fn constant_register(
        &self,
        index: usize,
        state: &State,
        register: usize,
        what: &str,
    ) -> Result<i64, TranslateError> {
        match state[register] {
            Value::Constant(value) => Ok(value),
            _ => Err(refuse(
                index,
                format!("{what} in r{register} is not a constant the translator can see"),
            )),
        }
    }

    fn map_of(&self, index: usize, state: &State) -> Result<LinuxMap, TranslateError> {
        let id = self.constant_register(index, state, 1, "the map number")?;
        u16::try_from(id)
            .ok()
            .and_then(|id| (self.environment.maps)(MapId(id)))
            .ok_or_else(|| TranslateError {
                code: ErrorCode::UNKNOWN_MAP,
                index,
                reason: format!("map {id} is not defined"),
            })
    }

    /// One of our helper calls as Linux helpers: arguments in r1–r5, result in
    /// r0, r1–r5 clobbered, r6–r9 preserved.
    fn helper(&mut self, index: usize, id: i32, state: &State) -> Result<(), TranslateError> {
        let helper = u32::try_from(id)
            .ok()
            .and_then(Helper::from_id)
            .ok_or_else(|| refuse(index, format!("unknown helper {id}")))?;
        match helper {
            Helper::ReadKernel | Helper::ReadUser | Helper::ReadKernelStr | Helper::ReadUserStr => {
                // The source address, kept for the fault statistics.
                self.out.store_reg(op::SIZE_DW, FP, SPILL_B, R3);
                self.out.call(match helper {
                    Helper::ReadKernel => linux_helper::PROBE_READ_KERNEL,
                    Helper::ReadUser => linux_helper::PROBE_READ_USER,
                    Helper::ReadKernelStr => linux_helper::PROBE_READ_KERNEL_STR,
                    _ => linux_helper::PROBE_READ_USER_STR,
                });
                self.count_fault();
            }
            Helper::Cpu => self.out.call(linux_helper::GET_SMP_PROCESSOR_ID),
            Helper::TaskId => {
                self.out.call(linux_helper::GET_CURRENT_PID_TGID);
                // The thread's id is the low half; `mov32` zero-extends.
                self.out
                    .push(Insn::new(op::CLASS_ALU | op::MOV | op::SRC_X, R0, R0, 0, 0));
            }
            Helper::TimeNs => self.out.call(linux_helper::KTIME_GET_NS),
            Helper::TaskName => {
                let size = self.constant_register(index, state, 2, "the buffer size")?;
                self.task_name(size as usize);
            }
            Helper::MapLookup => {
                let map = self.map_of(index, state)?;
                if map.spec.is_aggregate() {
                    self.out.mov_imm(R0, helper_error::EINVAL as i32);
                } else {
                    self.map_lookup(map);
                }
            }
            Helper::MapUpdate => {
                let map = self.map_of(index, state)?;
                if map.spec.is_aggregate() {
                    self.out.mov_imm(R0, helper_error::EINVAL as i32);
                } else {
                    self.out.map_fd(R1, map.fd);
                    self.out.mov_imm(R4, 0);
                    self.out.call(linux_helper::MAP_UPDATE_ELEM);
                    self.count_failure(stat::DROPS, helper_error::ENOSPC);
                }
            }
            Helper::MapDelete => {
                let map = self.map_of(index, state)?;
                if map.spec.is_aggregate() {
                    self.out.mov_imm(R0, helper_error::EINVAL as i32);
                } else {
                    self.out.map_fd(R1, map.fd);
                    self.out.call(linux_helper::MAP_DELETE_ELEM);
                }
            }
            Helper::Aggregate => {
                let map = self.map_of(index, state)?;
                match map.spec.kind {
                    MapKind::Aggregate(kind) => self.aggregate(map, kind),
                    MapKind::Hash => self.out.mov_imm(R0, helper_error::EINVAL as i32),
                }
            }
            Helper::Emit => self.emit(),
            Helper::StackTrace => {
                return Err(refuse(index, "stack_trace is not supported on Linux yet"));
            }
            Helper::EntrySave if self.environment.role == Role::Entry => {
                let slot = self.constant_register(index, state, 1, "the entry slot")?;
                self.entry_save(slot as usize);
            }
            Helper::EntrySave => {
                return Err(refuse(index, "entry_save outside an entry program"));
            }
            _ => return Err(refuse(index, format!("helper {helper} is not supported"))),
        }
        Ok(())
    }

    /// After a read: a negative r0 counts a fault at the address spilled at
    /// `SPILL_B` and becomes `EFAULT` (Linux has zeroed the buffer).
    fn count_fault(&mut self) {
        let (done, no_entry) = (self.out.label(), self.out.label());
        let out = &mut self.out;
        out.jump(op::CLASS_JMP | op::JSGE | op::SRC_K, R0, 0, 0, done);
        out.store_imm(op::SIZE_W, FP, KEY, self.environment.probe as i32);
        out.map_fd(R1, self.environment.stats_fd);
        out.mov_reg(R2, FP);
        out.alu_imm(op::ADD, R2, i32::from(KEY));
        out.call(linux_helper::MAP_LOOKUP_ELEM);
        out.jump(op::CLASS_JMP | op::JEQ | op::SRC_K, R0, 0, 0, no_entry);
        out.mov_imm(R1, 1);
        out.atomic_add(R0, (stat::FAULTS * 8) as i16, R1);
        out.load(op::SIZE_DW, R1, FP, SPILL_B);
        out.store_reg(op::SIZE_DW, R0, (stat::LAST_FAULT * 8) as i16, R1);
        out.bind(no_entry);
        out.mov_imm(R0, helper_error::EFAULT as i32);
        out.bind(done);
    }

    /// `entry_save(slot, value = r2)` into the record `ENTRY_POINTER` points to.
    fn entry_save(&mut self, slot: usize) {
        let (full, done) = (self.out.label(), self.out.label());
        let out = &mut self.out;
        out.load(op::SIZE_DW, R1, FP, ENTRY_POINTER);
        out.jump(op::CLASS_JMP | op::JEQ | op::SRC_K, R1, 0, 0, full);
        out.store_reg(op::SIZE_DW, R1, (slot * 8) as i16, R2);
        out.mov_imm(R0, 0);
        out.ja(done);
        out.bind(full);
        self.count_stat(stat::DROPS);
        self.out.mov_imm(R0, helper_error::ENOSPC as i32);
        self.out.bind(done);
    }

    /// After a call: a negative r0 counts `word` and becomes `error`.
    fn count_failure(&mut self, word: usize, error: i64) {
        let done = self.out.label();
        self.out
            .jump(op::CLASS_JMP | op::JSGE | op::SRC_K, R0, 0, 0, done);
        self.count_stat(word);
        self.out.mov_imm(R0, error as i32);
        self.out.bind(done);
    }

    fn task_name(&mut self, size: usize) {
        let out = &mut self.out;
        out.store_reg(op::SIZE_DW, FP, SPILL_A, R1);
        // Some kernels (Debian's 6.1) copy the name with `strscpy`, which leaves the
        // bytes after its NUL as they were: zero them first, so the name is
        // NUL-padded as our helper promises (and equal names make equal map keys).
        for word in 0..COMM_SIZE.div_ceil(8) {
            out.store_imm(op::SIZE_DW, FP, COMM + 8 * word as i16, 0);
        }
        out.mov_reg(R1, FP);
        out.alu_imm(op::ADD, R1, i32::from(COMM));
        out.mov_imm(R2, COMM_SIZE as i32);
        out.call(linux_helper::GET_CURRENT_COMM);
        out.load(op::SIZE_DW, R1, FP, SPILL_A);
        for byte in 0..size {
            if byte < COMM_SIZE {
                out.load(op::SIZE_B, R2, FP, COMM + byte as i16);
                out.store_reg(op::SIZE_B, R1, byte as i16, R2);
            } else {
                out.store_imm(op::SIZE_B, R1, byte as i16, 0);
            }
        }
        // The length: bytes before the first NUL, at most `size`.
        let done = out.label();
        out.mov_imm(R0, 0);
        for byte in 0..size.min(COMM_SIZE) {
            out.load(op::SIZE_B, R2, FP, COMM + byte as i16);
            out.jump(op::CLASS_JMP | op::JEQ | op::SRC_K, R2, 0, 0, done);
            out.alu_imm(op::ADD, R0, 1);
        }
        out.bind(done);
    }

    fn map_lookup(&mut self, map: LinuxMap) {
        let (found, done) = (self.out.label(), self.out.label());
        let out = &mut self.out;
        out.store_reg(op::SIZE_DW, FP, SPILL_A, R3);
        out.map_fd(R1, map.fd);
        out.call(linux_helper::MAP_LOOKUP_ELEM);
        out.jump(op::CLASS_JMP | op::JNE | op::SRC_K, R0, 0, 0, found);
        out.mov_imm(R0, helper_error::ENOENT as i32);
        out.ja(done);
        out.bind(found);
        out.mov_reg(R3, R0);
        out.load(op::SIZE_DW, R1, FP, SPILL_A);
        out.mov_imm(R2, i32::from(map.spec.value_size));
        out.call(linux_helper::PROBE_READ_KERNEL);
        out.mov_imm(R0, 0);
        out.bind(done);
    }

    /// Folds r3 into the per-CPU entry for the key at r2, creating it (all zero,
    /// see the module's invariants) when new.
    fn aggregate(&mut self, map: LinuxMap, kind: AggregateKind) {
        let (found, full, done) = (self.out.label(), self.out.label(), self.out.label());
        let out = &mut self.out;
        out.store_reg(op::SIZE_DW, FP, SPILL_A, R3);
        out.store_reg(op::SIZE_DW, FP, SPILL_B, R2);
        out.map_fd(R1, map.fd);
        out.call(linux_helper::MAP_LOOKUP_ELEM);
        out.jump(op::CLASS_JMP | op::JNE | op::SRC_K, R0, 0, 0, found);
        out.map_fd(R1, map.fd);
        out.load(op::SIZE_DW, R2, FP, SPILL_B);
        out.map_value(R3, map.zero_fd);
        out.mov_imm(R4, NOEXIST);
        out.call(linux_helper::MAP_UPDATE_ELEM);
        out.map_fd(R1, map.fd);
        out.load(op::SIZE_DW, R2, FP, SPILL_B);
        out.call(linux_helper::MAP_LOOKUP_ELEM);
        out.jump(op::CLASS_JMP | op::JEQ | op::SRC_K, R0, 0, 0, full);
        out.bind(found);
        out.load(op::SIZE_DW, R1, FP, SPILL_A);
        self.fold(kind);
        self.out.mov_imm(R0, 0);
        self.out.ja(done);
        self.out.bind(full);
        self.count_stat(stat::DROPS);
        self.out.mov_imm(R0, helper_error::ENOSPC as i32);
        self.out.bind(done);
    }

    /// r0: the entry (this CPU's value), r1: the value. Clobbers r1–r3.
    fn fold(&mut self, kind: AggregateKind) {
        let out = &mut self.out;
        match kind {
            AggregateKind::Count => {
                out.mov_imm(R2, 1);
                out.atomic_add(R0, 0, R2);
            }
            AggregateKind::Sum => out.atomic_add(R0, 0, R1),
            AggregateKind::Min => self.fold_extreme(0, true),
            AggregateKind::Max => self.fold_extreme(0, false),
            AggregateKind::Avg => {
                out.mov_imm(R2, 1);
                out.atomic_add(R0, 0, R2);
                out.atomic_add(R0, 8, R1);
            }
            AggregateKind::Stats => {
                out.mov_imm(R2, 1);
                out.atomic_add(R0, 0, R2);
                out.atomic_add(R0, 8, R1);
                self.fold_extreme(16, true);
                self.fold_extreme(24, false);
            }
            AggregateKind::Log2Hist => {
                let bucket_known = out.label();
                out.mov_imm(R2, 0);
                out.jump(op::CLASS_JMP | op::JSLT | op::SRC_K, R1, 0, 0, bucket_known);
                out.mov_imm(R2, 1);
                out.jump(op::CLASS_JMP | op::JEQ | op::SRC_K, R1, 0, 0, bucket_known);
                // Positive: 2 + floor(log2(value)), by halving the search range.
                out.mov_imm(R2, 2);
                for shift in [32, 16, 8, 4, 2, 1] {
                    let smaller = out.label();
                    out.mov_reg(R3, R1);
                    out.alu_imm(op::RSH, R3, shift);
                    out.jump(op::CLASS_JMP | op::JEQ | op::SRC_K, R3, 0, 0, smaller);
                    out.alu_imm(op::ADD, R2, shift);
                    out.mov_reg(R1, R3);
                    out.bind(smaller);
                }
                out.bind(bucket_known);
                self.count_bucket(64);
            }
            AggregateKind::LinearHist { min, max, step } => {
                let buckets = AggregateKind::linear_buckets(min, max, step).unwrap_or(0) as i32;
                let bucket_known = out.label();
                out.mov_imm(R2, 0);
                out.lddw(R3, 0, min as u64);
                out.jump(
                    op::CLASS_JMP | op::JSLT | op::SRC_X,
                    R1,
                    R3,
                    0,
                    bucket_known,
                );
                out.mov_imm(R2, buckets + 1);
                out.lddw(R3, 0, max as u64);
                out.jump(
                    op::CLASS_JMP | op::JSGE | op::SRC_X,
                    R1,
                    R3,
                    0,
                    bucket_known,
                );
                out.lddw(R3, 0, min as u64);
                out.alu_reg(op::SUB, R1, R3);
                out.lddw(R3, 0, step);
                out.alu_reg(op::DIV, R1, R3);
                out.mov_reg(R2, R1);
                out.alu_imm(op::ADD, R2, 1);
                out.bind(bucket_known);
                self.count_bucket(buckets as i64 + 1);
            }
        }
    }

    /// Adds 1 to word r2 (at most `last`) of the entry at r0.
    fn count_bucket(&mut self, last: i64) {
        let out = &mut self.out;
        let skip = out.label();
        out.jump(
            op::CLASS_JMP | op::JGT | op::SRC_K,
            R2,
            0,
            last as i32,
            skip,
        );
        out.alu_imm(op::LSH, R2, 3);
        out.alu_reg(op::ADD, R0, R2);
        out.mov_imm(R3, 1);
        out.atomic_add(R0, 0, R3);
        out.bind(skip);
    }

    /// Folds r1 into the stored minimum or maximum at `offset` of the entry at r0.
    fn fold_extreme(&mut self, offset: i16, minimum: bool) {
        let out = &mut self.out;
        let keep = out.label();
        // The stored form: the larger stored value wins for both (see `encode_min`).
        out.mov_reg(R3, R1);
        if minimum {
            out.lddw(R2, 0, 0x7fff_ffff_ffff_ffff);
        } else {
            out.lddw(R2, 0, 0x8000_0000_0000_0000);
        }
        out.alu_reg(op::XOR, R3, R2);
        out.load(op::SIZE_DW, R2, R0, offset);
        out.jump(op::CLASS_JMP | op::JGE | op::SRC_X, R2, R3, 0, keep);
        out.store_reg(op::SIZE_DW, R0, offset, R3);
        out.bind(keep);
    }

    /// `emit(data = r1, size = r2)`: a ring record with the header, or a lost
    /// count on this CPU.
    fn emit(&mut self) {
        let (no_counter, reserved, restore) =
            (self.out.label(), self.out.label(), self.out.label());
        let probe = self.environment.probe as i32;
        let out = &mut self.out;
        out.store_reg(op::SIZE_DW, FP, SPILL_R6, R6);
        out.store_reg(op::SIZE_DW, FP, SPILL_R7, R7);
        out.store_reg(op::SIZE_DW, FP, SPILL_R8, R8);
        out.store_reg(op::SIZE_DW, FP, SPILL_R9, R9);
        out.mov_reg(R6, R1);
        out.mov_reg(R7, R2);
        // This CPU's counters; the next sequence number is taken before trying.
        out.store_imm(op::SIZE_W, FP, KEY, 0);
        out.map_fd(R1, self.environment.counters_fd);
        out.mov_reg(R2, FP);
        out.alu_imm(op::ADD, R2, i32::from(KEY));
        out.call(linux_helper::MAP_LOOKUP_ELEM);
        out.jump(op::CLASS_JMP | op::JEQ | op::SRC_K, R0, 0, 0, no_counter);
        out.mov_reg(R8, R0);
        out.mov_imm(R1, 1);
        out.atomic_fetch_add(R8, (counter::NEXT_SEQ * 8) as i16, R1);
        out.store_reg(op::SIZE_DW, FP, SPILL_SEQ, R1);
        out.map_fd(R1, self.environment.ring_fd);
        out.mov_reg(R2, R7);
        out.alu_imm(op::ADD, R2, RECORD_HEADER as i32);
        out.mov_imm(R3, 0);
        out.call(linux_helper::RINGBUF_RESERVE);
        out.jump(op::CLASS_JMP | op::JNE | op::SRC_K, R0, 0, 0, reserved);
        // The ring is full: the number is lost, and counted.
        out.mov_imm(R1, 1);
        out.atomic_add(R8, (counter::LOST * 8) as i16, R1);
        out.bind(no_counter);
        self.count_stat(stat::DROPS);
        let out = &mut self.out;
        out.mov_imm(R0, helper_error::ENOSPC as i32);
        out.ja(restore);
        out.bind(reserved);
        out.mov_reg(R9, R0);
        out.load(op::SIZE_DW, R1, FP, SPILL_SEQ);
        out.store_reg(op::SIZE_DW, R9, 0, R1);
        out.store_imm(op::SIZE_W, R9, 8, probe);
        out.call(linux_helper::GET_SMP_PROCESSOR_ID);
        out.store_reg(op::SIZE_W, R9, 12, R0);
        out.call(linux_helper::KTIME_GET_NS);
        out.store_reg(op::SIZE_DW, R9, 16, R0);
        out.mov_reg(R1, R9);
        out.alu_imm(op::ADD, R1, RECORD_HEADER as i32);
        out.mov_reg(R2, R7);
        out.mov_reg(R3, R6);
        out.call(linux_helper::PROBE_READ_KERNEL);
        out.mov_reg(R1, R9);
        out.mov_imm(R2, 0);
        out.call(linux_helper::RINGBUF_SUBMIT);
        out.mov_imm(R0, 0);
        out.bind(restore);
        out.load(op::SIZE_DW, R6, FP, SPILL_R6);
        out.load(op::SIZE_DW, R7, FP, SPILL_R7);
        out.load(op::SIZE_DW, R8, FP, SPILL_R8);
        out.load(op::SIZE_DW, R9, FP, SPILL_R9);
    }
}

/// The constant an ALU instruction computes from constants, if the pass can tell.
fn constant_alu(insn: Insn, destination: Value, source: Value) -> Value {
    let operation = insn.code & op::OP_MASK;
    let wide = insn.class() == op::CLASS_ALU64;
    let operand = if insn.code & op::SRC_MASK == op::SRC_X {
        match source {
            Value::Constant(value) => value,
            _ => return Value::Unknown,
        }
    } else {
        i64::from(insn.imm)
    };
    let result = match (operation, destination) {
        (op::MOV, _) if insn.off == 0 => operand,
        (op::ADD, Value::Constant(value)) => value.wrapping_add(operand),
        (op::SUB, Value::Constant(value)) => value.wrapping_sub(operand),
        (op::MUL, Value::Constant(value)) => value.wrapping_mul(operand),
        (op::OR, Value::Constant(value)) => value | operand,
        (op::AND, Value::Constant(value)) => value & operand,
        (op::XOR, Value::Constant(value)) => value ^ operand,
        _ => return Value::Unknown,
    };
    Value::Constant(if wide { result } else { result as u32 as i64 })
}

#[cfg(test)]
mod tests {
    use probe_port_protocol::asm::{assemble, disassemble};
    use probe_port_protocol::maps::MapKind;

    use super::*;

    const RING: i32 = 101;
    const COUNTERS: i32 = 102;
    const STATS: i32 = 103;

    fn no_maps(_: MapId) -> Option<LinuxMap> {
        None
    }

    fn count_map(map: MapId) -> Option<LinuxMap> {
        (map.0 == 3).then_some(LinuxMap {
            spec: MapSpec {
                map,
                kind: MapKind::Aggregate(AggregateKind::Count),
                key_size: 8,
                value_size: 8,
                max_entries: 16,
            },
            fd: 200,
            zero_fd: 201,
        })
    }

    fn environment(maps: &dyn Fn(MapId) -> Option<LinuxMap>) -> Environment<'_> {
        Environment {
            layout: Layout::Registers,
            probe: 9,
            maps,
            ring_fd: RING,
            counters_fd: COUNTERS,
            stats_fd: STATS,
            role: Role::Probe { at_return: false },
            entries_fd: -1,
            entry_zero_fd: -1,
        }
    }

    fn translated(text: &str, depth: usize) -> Result<Vec<Insn>, TranslateError> {
        translate(&assemble(text).unwrap(), depth, &environment(&no_maps))
    }

    /// The translation after the prologue (which is the same for every program).
    fn body(text: &str) -> String {
        // "mov64 r0, 0; exit" becomes the prologue, that move, "mov64 r0, 0" and "exit".
        let prologue = translated("mov64 r0, 0\nexit", 0).unwrap().len() - 3;
        let insns = translated(text, 0).unwrap_or_else(|error| panic!("{error}"));
        disassemble(&insns[prologue..])
    }

    #[test]
    fn registers_become_pt_regs_fields() {
        // rdi is DWARF 5 (pt_regs offset 112), rsp DWARF 7 (152), the PC slot is ip.
        assert_eq!(
            body("ldxdw r2, [r1+40]\nldxw r3, [r1+60]\nldxdw r4, [r1+128]\nmov64 r0, 0\nexit"),
            disassemble(
                &assemble(
                    "ldxdw r2, [r1+112]\nldxw r3, [r1+156]\nldxdw r4, [r1+128]\n\
                     mov64 r0, 0\nmov64 r0, 0\nexit"
                )
                .unwrap()
            )
        );
    }

    #[test]
    fn sign_extensions_become_shifts_for_kernels_before_6_6() {
        // Linux 6.1 refuses `movsx` and `ldxsx` ("BPF_MOV uses reserved fields").
        assert_eq!(
            body(
                "mov64 r2, 5\nmov64sx32 r3, r2\nmov32sx8 r4, r2\nmov64sx16 r5, r2\n\
                 stxdw [r10-8], r2\nldxsh r6, [r10-8]\nmov64 r0, 0\nexit"
            ),
            disassemble(
                &assemble(
                    "mov64 r2, 5\nmov64 r3, r2\nlsh64 r3, 32\narsh64 r3, 32\n\
                     mov32 r4, r2\nlsh32 r4, 24\narsh32 r4, 24\n\
                     mov64 r5, r2\nlsh64 r5, 48\narsh64 r5, 48\n\
                     stxdw [r10-8], r2\nldxh r6, [r10-8]\nlsh64 r6, 48\narsh64 r6, 48\n\
                     mov64 r0, 0\nmov64 r0, 0\nexit"
                )
                .unwrap()
            )
        );
    }

    #[test]
    fn moved_context_pointers_fold_into_the_loads() {
        // r6 = ctx + 32 (slot 4, rsi); its load of +8 reads slot 5, rdi.
        assert_eq!(
            body("mov64 r6, r1\nadd64 r6, 32\nldxdw r0, [r6+8]\nexit"),
            disassemble(&assemble("mov64 r6, r1\nldxdw r0, [r6+112]\nmov64 r0, 0\nexit").unwrap())
        );
        let error = translated(
            "mov64 r6, r1\nadd64 r6, 8\nmov64 r0, 1\nadd64 r0, r6\nexit",
            0,
        )
        .unwrap_err();
        assert_eq!(error.code, ErrorCode::UNSUPPORTED);
        assert!(error.reason.contains("moved context pointer"), "{error}");
    }

    #[test]
    fn the_probe_slot_is_a_constant_and_return_slots_are_refused() {
        assert_eq!(
            body("ldxdw r0, [r1+144]\nexit"),
            disassemble(&assemble("lddw r0, 9\nmov64 r0, 0\nexit").unwrap())
        );
        // A sign-extending load from a register slot: a load and a sign extension.
        assert_eq!(
            body("ldxsw r2, [r1+0]\nmov64 r0, 0\nexit"),
            disassemble(
                &assemble("ldxw r2, [r1+80]\nmov64sx32 r2, r2\nmov64 r0, 0\nmov64 r0, 0\nexit")
                    .unwrap()
            )
        );
        for (offset, what) in [
            (152, "return-address"),
            (160, "entry stack"),
            (200, "entry values"),
        ] {
            let error = translated(&format!("ldxdw r0, [r1+{offset}]\nexit"), 0).unwrap_err();
            assert!(error.reason.contains(what), "{offset}: {error}");
            assert_eq!(error.index, 0);
        }
    }

    #[test]
    fn dead_code_is_dropped_and_jumps_follow_the_new_layout() {
        // The `ja` skips a dead `mov` that Linux would refuse as unreachable; the
        // helper call in between grows the program, and the jump still lands.
        let text = "
            jeq r1, 0, skip
            call time_ns
        skip:
            mov64 r0, 1
            exit
            mov64 r0, 2
            exit
        ";
        let insns = translated(text, 0).unwrap();
        let listing = disassemble(&insns);
        assert!(!listing.contains("mov64 r0, 2"), "{listing}");
        let jump = insns
            .iter()
            .position(|insn| insn.code == op::CLASS_JMP | op::JEQ | op::SRC_K && insn.dst() == 1)
            .unwrap();
        let target = (jump as i64 + 1 + i64::from(insns[jump].off)) as usize;
        assert_eq!(insns[target], assemble("mov64 r0, 1").unwrap()[0]);
        assert_eq!(insns[target + 1], assemble("mov64 r0, 0").unwrap()[0]);
        assert_eq!(insns.last(), Some(&assemble("exit").unwrap()[0]));
    }

    #[test]
    fn helpers_become_linux_helpers() {
        // (The disassembler names calls by our helper numbers; these are Linux's.)
        let calls = |text: &str| -> Vec<i32> {
            translated(text, 8)
                .unwrap()
                .iter()
                .filter(|insn| insn.code == op::CLASS_JMP | op::CALL)
                .map(|insn| insn.imm)
                .collect()
        };
        // The prologue's statistics lookup, then task_id, time_ns, cpu.
        assert_eq!(
            calls("call task_id\ncall time_ns\ncall cpu\nexit"),
            [1, 14, 5, 8]
        );
        let listing = body("call task_id\nexit");
        assert!(listing.contains("mov32 r0, r0"), "{listing}");
        // A failed read is counted and becomes EFAULT.
        let listing =
            body("mov64 r1, r10\nadd64 r1, -8\nmov64 r2, 8\nmov64 r3, 0\ncall read_user\nexit");
        assert!(listing.contains("call 112\njsge r0, 0"), "{listing}");
        assert_eq!(
            calls(
                "mov64 r1, r10\nadd64 r1, -8\nmov64 r2, 8\nmov64 r3, 0\ncall read_kernel_str\nexit"
            )[1],
            115
        );
        assert!(listing.contains("mov64 r0, -14"), "{listing}");
        for helper in ["stack_trace", "entry_save"] {
            let error = translated(&format!("call {helper}\nmov64 r0, 0\nexit"), 0).unwrap_err();
            assert!(error.reason.contains(helper), "{error}");
        }
    }

    #[test]
    fn map_numbers_become_map_descriptors() {
        let text = "stdw [r10-8], 5\nmov64 r1, 3\nmov64 r2, r10\nadd64 r2, -8\nmov64 r3, 1\n\
                    call aggregate\nmov64 r0, 0\nexit";
        let insns = translate(&assemble(text).unwrap(), 8, &environment(&count_map)).unwrap();
        let references: Vec<(u8, i32)> = insns
            .iter()
            .filter(|insn| insn.is_wide() && insn.src() != 0)
            .map(|insn| (insn.src(), insn.imm))
            .collect();
        assert!(references.contains(&(PSEUDO_MAP_FD, 200)), "{references:?}");
        assert!(
            references.contains(&(PSEUDO_MAP_VALUE, 201)),
            "{references:?}"
        );
        assert!(
            references.contains(&(PSEUDO_MAP_FD, STATS)),
            "{references:?}"
        );
        let error = translate(
            &assemble(&text.replace("mov64 r1, 3", "mov64 r1, 4")).unwrap(),
            8,
            &environment(&count_map),
        )
        .unwrap_err();
        assert_eq!(error.code, ErrorCode::UNKNOWN_MAP);
    }

    #[test]
    fn the_prologue_zeroes_the_used_stack_and_deep_stacks_are_refused() {
        let insns = translated("mov64 r0, 0\nexit", 20).unwrap();
        let zeroed: Vec<i16> = insns
            .iter()
            .filter(|insn| insn.code == op::CLASS_ST | op::MODE_MEM | op::SIZE_DW)
            .map(|insn| insn.off)
            .collect();
        assert_eq!(zeroed, [-8, -16, -24]);
        let error = translated("mov64 r0, 0\nexit", MAX_PROGRAM_STACK + 8).unwrap_err();
        assert_eq!(error.code, ErrorCode::NO_SPACE);
    }

    #[test]
    fn return_programs_read_entry_values_from_their_copy_of_the_record() {
        let program =
            assemble("ldxdw r2, [r1+200]\nldxdw r3, [r1+152]\nmov64 r0, 0\nexit").unwrap();
        let maps = no_maps;
        let return_environment = Environment {
            layout: Layout::Registers,
            role: Role::Return,
            entries_fd: 300,
            entry_zero_fd: 301,
            ..environment(&maps)
        };
        let insns = translate(&program, 0, &return_environment).unwrap();
        let listing = disassemble(&insns);
        // Entry slot 1 (context offset 200) is the second word of the copy; the
        // return address is `ip`.
        assert!(
            listing.contains("ldxdw r2, [r10-400]\nldxdw r3, [r1+128]"),
            "{listing}"
        );
        // The record is looked up, copied, deleted; a missing one is a miss and exit.
        let deletes = insns
            .iter()
            .filter(|insn| insn.code == op::CLASS_JMP | op::CALL && insn.imm == 3)
            .count();
        assert_eq!(deletes, 1);
        // Outside return programs, those slots are refused.
        let error = translate(&program, 0, &environment(&maps)).unwrap_err();
        assert!(error.reason.contains("entry values"), "{error}");
        let at_return = Environment {
            layout: Layout::Registers,
            role: Role::Probe { at_return: true },
            ..environment(&maps)
        };
        let insns = translate(
            &assemble("ldxdw r3, [r1+152]\nmov64 r0, 0\nexit").unwrap(),
            0,
            &at_return,
        )
        .unwrap();
        assert!(disassemble(&insns).contains("ldxdw r3, [r1+128]"));
        // Entry and return programs have less stack for themselves.
        let error = translate(&program, MAX_PROGRAM_STACK, &return_environment).unwrap_err();
        assert_eq!(error.code, ErrorCode::NO_SPACE);
    }

    #[test]
    fn jumps_too_far_for_16_bits_are_refused() {
        // Each `task_name(dst, 512)` grows to well over a thousand instructions.
        let mut text = String::from("jeq r1, 0, end\n");
        for _ in 0..80 {
            text.push_str("mov64 r1, r10\nadd64 r1, -400\nmov64 r2, 400\ncall task_name\n");
        }
        text.push_str("end:\nmov64 r0, 0\nexit\n");
        let Err(error) = translated(&text, 400) else {
            panic!("translated although the jump spans more than 32767 slots");
        };
        assert_eq!(error.code, ErrorCode::NO_SPACE);
        assert!(error.reason.contains("16-bit jump"), "{error}");
    }

    #[test]
    fn extreme_encodings_keep_order_and_zero_means_empty() {
        let values = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for pair in values.windows(2) {
            assert!(encode_max(pair[0]) < encode_max(pair[1]));
            assert!(encode_min(pair[0]) > encode_min(pair[1]));
        }
        for value in values {
            assert_eq!(decode_min(encode_min(value)), value);
            assert_eq!(decode_max(encode_max(value)), value);
        }
        assert_eq!(decode_min(0), i64::MAX);
        assert_eq!(decode_max(0), i64::MIN);
    }
}
