//! What a kernel provides to the stub: the `Platform` trait.
//!
//! # Design
//!
//! A kernel embeds the stub by implementing [`Platform`]: a handful of required
//! methods (CPUs, tasks, time, fault-tolerant reads, text patching) and optional
//! capabilities as default methods that say "unsupported". Everything the stub
//! knows about a particular kernel goes through here; the stub itself never touches
//! a device, a page table or a scheduler.
//!
//! Methods marked *probe context* are called from the trap path, with interrupts
//! off on the current CPU: they must not allocate, block, take a lock the CPU could
//! already hold, or send IPC. The others are called from the session (the thread
//! serving the port), where blocking briefly is fine.
//!
//! # Invariants
//!
//! - `cpu_id` is below `cpu_count`, and `cpu_count` never changes after the stub
//!   starts.
//! - `write_text` either writes every byte or none, and returns only when every CPU
//!   will fetch the new bytes.

use core::ops::Range;

use probe_port_protocol::message::{Arch, ArgType};

pub use crate::interpreter::Fault;

/// Why a kernel text write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TextError {
    /// The address is not kernel text the platform can write.
    NotText,
    /// The platform has no way to write its text.
    Unsupported,
}

/// A static marker compiled into the kernel (see [`crate::marker!`]).
#[derive(Debug)]
pub struct MarkerSite {
    /// `subsystem:event`.
    pub name: &'static str,
    /// Argument names and types, in the order the marker passes them.
    pub args: &'static [(&'static str, ArgType)],
    /// Set by the stub when a probe is armed on the marker; the marker's disabled
    /// cost is one load of this flag and a not-taken branch.
    pub enabled: core::sync::atomic::AtomicBool,
}

impl MarkerSite {
    /// A disabled marker.
    pub const fn new(name: &'static str, args: &'static [(&'static str, ArgType)]) -> Self {
        Self {
            name,
            args,
            enabled: core::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// What a kernel provides to the stub.
pub trait Platform: Sync {
    /// The processor architecture, for the handshake.
    fn arch(&self) -> Arch;

    /// The kernel's name and version, for the handshake (at most 64 bytes).
    fn kernel_name(&self) -> &str;

    /// The GNU build-id of the running kernel image, or empty.
    fn build_id(&self) -> &[u8];

    /// Number of CPUs, fixed once the stub runs (at most [`crate::MAX_CPUS`]).
    fn cpu_count(&self) -> usize;

    /// The current CPU, in `0..cpu_count()`. *Probe context.*
    fn cpu_id(&self) -> usize;

    /// The current task (thread) identifier. *Probe context.*
    fn task_id(&self) -> u64;

    /// Writes the current task's name into `dst` and returns its length
    /// (truncated to `dst.len()`). *Probe context.* Default: no names, 0.
    fn task_name(&self, dst: &mut [u8]) -> usize {
        let _ = dst;
        0
    }

    /// Monotonic nanoseconds since an arbitrary origin. *Probe context.*
    fn now_ns(&self) -> u64;

    /// Copies kernel memory at `src` into `dst`, without ever faulting the kernel:
    /// an unmapped or unreadable address yields `Err` with the first bad address.
    /// *Probe context.*
    fn read_kernel(&self, dst: &mut [u8], src: u64) -> Result<(), Fault>;

    /// As [`Platform::read_kernel`] for the current task's user memory. Default:
    /// unsupported (every read faults).
    fn read_user(&self, dst: &mut [u8], src: u64) -> Result<(), Fault> {
        let _ = dst;
        Err(Fault { address: src })
    }

    /// Writes `bytes` over kernel text at `address`, through a writable alias if
    /// the text is mapped read-only, and returns once every CPU will fetch the new
    /// bytes (each CPU has executed a serialising instruction after the write).
    /// The stub only ever writes one byte at a time over a live instruction
    /// (the breakpoint opcode, or the original byte back), so a single-byte write
    /// is atomic for every CPU executing there.
    fn write_text(&self, address: u64, bytes: &[u8]) -> Result<(), TextError>;

    /// Writes each `(address, bytes)` of `writes` into kernel text while every other
    /// CPU is held with interrupts off (in an interrupt handler, say), but only if
    /// no CPU and no suspended context — interrupted, or a thread preempted by an
    /// interrupt — would resume execution at an address inside one of `avoid`.
    /// Returns `Ok(true)` once written and every CPU serialised, `Ok(false)` when
    /// something would resume inside `avoid` or a CPU did not come to be held in
    /// time (nothing written; the stub tries again later or keeps its breakpoint).
    ///
    /// The stub uses it to turn a breakpoint into a jump over several instructions
    /// (a jump probe, `RequestBody::Jump`) and back; the jump's code runs the
    /// handler on the probed thread's own stack, so a kernel offering this must not
    /// use a red zone below the stack pointer (kernels never do) and must allow
    /// about 2 KiB of stack at any probed instruction. The jump's code turns
    /// interrupts off and on with `cli` and `sti` (on x86_64), so a kernel offering
    /// this must take RFLAGS.IF as its interrupt mask, and the platform methods
    /// probe context calls must leave IF, AC and TF as they found them (the detour
    /// checks, and puts the saved flags back with `popfq` when they differ). With
    /// no writes it returns
    /// at once, `Ok(true)` if the platform can do this at all. Default: unsupported,
    /// and the stub keeps breakpoints.
    fn write_text_stopped(
        &self,
        avoid: &[Range<u64>],
        writes: &[(u64, &[u8])],
    ) -> Result<bool, TextError> {
        let _ = (avoid, writes);
        Err(TextError::Unsupported)
    }

    /// Writes `bytes` into kernel data memory at `address` without ever faulting
    /// the kernel. The stub uses it for the interrupted stack only: to swap a return
    /// address for the return trampoline, and to push a return address when it
    /// emulates a call. *Probe context.*
    fn write_kernel(&self, address: u64, bytes: &[u8]) -> Result<(), Fault>;

    /// The executable memory the stub writes its out-of-line slots into (through
    /// [`Platform::write_text`]), within ±2 GiB of all kernel text (x86_64 reaches
    /// the original code with 32-bit displacements). One slot
    /// ([`crate::arch::SLOT_SIZE`] bytes) holds the return trampoline; every other
    /// slot holds the displaced instruction of one probe site and is never
    /// rewritten with other code during the boot (a thread may be preempted inside
    /// a slot), so size the area for the distinct sites a boot will arm, not for
    /// the probes armed at once; past [`crate::limits::MAX_OUT_OF_LINE_SLOTS`]
    /// slots the rest is unused. The [`crate::out_of_line_area!`] macro defines one
    /// in the kernel image.
    fn out_of_line_area(&self) -> Range<u64>;

    /// Executable memory the stub writes compiled handler programs into (through
    /// [`Platform::write_text`]); its bytes are reused for other programs once the
    /// probes that used them are gone and no CPU can be running them. The
    /// [`crate::out_of_line_area!`] macro defines one as well. Default: none, and
    /// handlers are interpreted.
    fn compiled_code_area(&self) -> Range<u64> {
        0..0
    }

    /// Whether the stub may interpret handlers. `true` (the default): a program
    /// that does not compile, or whose code finds no room in
    /// [`Platform::compiled_code_area`], runs in the interpreter. `false`, for a
    /// platform with a compiled-code area: every handler runs compiled and the
    /// kernel links no interpreter; arming a probe whose programs do not compile
    /// (or any probe, if the area is empty) is refused with
    /// [`ErrorCode::UNSUPPORTED`] and the text detail `"compiled code"`, and one
    /// whose code does not fit in the area (or cannot be written there) with
    /// [`ErrorCode::NO_SPACE`] and `"compiled code area"`.
    ///
    /// [`ErrorCode::UNSUPPORTED`]: probe_port_protocol::error::ErrorCode::UNSUPPORTED
    /// [`ErrorCode::NO_SPACE`]: probe_port_protocol::error::ErrorCode::NO_SPACE
    const INTERPRETER: bool = true;

    /// Runs `f` with interrupts disabled on the current CPU, then restores the
    /// previous state (so calls nest, and a call with interrupts already off
    /// leaves them off). The session holds the locks that probe context also
    /// takes only inside this, so a probe firing on the same CPU (a timer, say)
    /// can never spin on a lock its own CPU holds; an enabled marker runs its
    /// handler inside this, so the handler stays on one CPU. Any context.
    fn without_interrupts<R>(&self, f: impl FnOnce() -> R) -> R;

    /// Ranges of kernel text that must never be probed: the trap entry path, the
    /// platform's methods called in probe context, and anything else the kernel
    /// forbids. The stub refuses its out-of-line area and the entry addresses of
    /// its probe-context functions by itself, but it cannot know the extent of
    /// its own code (most of it is monomorphised and inlined into the kernel's
    /// code units), so a kernel should list here the text of the trap path as a
    /// whole, stub included (for example between linker-script symbols around
    /// the sections that hold it: the stub puts its own probe-context entry
    /// points and everything a re-entered hit runs in `.text.probeport`).
    /// Default: none.
    fn forbidden_text(&self) -> &[Range<u64>] {
        &[]
    }

    /// The start of the function containing `address`, if the platform has a
    /// symbol table; the stub then checks instruction boundaries by decoding from
    /// there. Default: unknown (the stub decodes from `address` only).
    fn function_start(&self, address: u64) -> Option<u64> {
        let _ = address;
        None
    }

    /// The kernel's static markers. Default: none.
    fn markers(&self) -> &'static [MarkerSite] {
        &[]
    }

    /// Writes the return addresses of the interrupted kernel stack, innermost
    /// first, starting from the frame pointer `frame_pointer`, into `dst`, and
    /// returns how many. *Probe context.* Default: none.
    fn stack_trace(&self, frame_pointer: u64, dst: &mut [u64]) -> usize {
        let _ = (frame_pointer, dst);
        0
    }

    /// Asks the thread that serves the port to drain the event rings soon.
    /// *Probe context*: set a flag or send a wake-up that cannot block. Default:
    /// nothing (the server polls).
    fn wake_server(&self) {}
}
