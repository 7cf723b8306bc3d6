//! Native code for verified handler programs: a JIT next to the interpreter.
//!
//! # Design
//!
//! A verified program can be compiled once, when it is armed, into machine code
//! that a probe hit then calls directly instead of interpreting. The compiled code
//! has **exactly the interpreter's semantics** for every program the verifier
//! accepts: the same `r0`, the same helper calls with the same arguments, the same
//! stack bytes and the same traps. Three things make that hold by construction:
//!
//! - only [`VerifiedProgram`](probe_port_protocol::verifier::VerifiedProgram)s
//!   compile, so every direct load and store is proven in bounds and the code
//!   needs no run-time checks for them (the interpreter's checks never fire for
//!   such programs either);
//! - every helper call leaves the compiled code through a dispatch function
//!   written in Rust, which runs the interpreter's own argument checking and
//!   translation (`interpreter::call_other_helper`, or for `aggregate`
//!   `interpreter::aggregate`), so helper semantics are shared, not reimplemented;
//! - everything else (division by zero, `INT_MIN / -1`, shift masking, 32-bit
//!   zero-extension, byte swaps, sign extension) is spelled out instruction by
//!   instruction and checked differentially against the interpreter by the tests
//!   (`tests/jit*.rs`).
//!
//! The code is position-independent (every jump is relative, the dispatch
//! function is reached through the environment), so the caller may copy it
//! anywhere. One backend exists: [`x86_64`]. The code generator itself is plain
//! byte arithmetic and builds on any host; only running the code needs an x86-64
//! CPU.
//!
//! # Use
//!
//! When a program is armed (session context, not probe context):
//!
//! 1. verify it, and keep the [`VerifiedProgram`]'s `stack_depth`;
//! 2. [`x86_64::compile`] it into a staging buffer of
//!    [`x86_64::max_code_size`]`(slots)` bytes with the kernel's [`JitScratch`]
//!    (on [`JitError`], keep running it with the interpreter);
//! 3. copy the returned number of bytes into executable kernel memory with
//!    [`Platform::write_text`](crate::Platform::write_text) (which returns once
//!    every CPU will fetch the new bytes), into a region no CPU can be executing:
//!    code is only ever rewritten after the quiescence that also retires a
//!    probe's program;
//! 4. make a [`x86_64::JitProgram`] from the address and the stack depth
//!    (`unsafe`: the address must hold exactly those bytes) and publish it with
//!    the probe, as the program slice is published today.
//!
//! On a hit, [`x86_64::JitProgram::run`] replaces
//! [`interpreter::run_on_stack`](crate::interpreter::run_on_stack): same
//! arguments but the program, same result.
//!
//! [`VerifiedProgram`]: probe_port_protocol::verifier::VerifiedProgram
//!
//! # Invariants
//!
//! - Compiling never panics and never writes past the output buffer; a program
//!   whose code does not fit is refused with [`JitError::TooLarge`].
//! - Compiling allocates nothing; its working memory is a caller-provided
//!   [`JitScratch`], as the verifier's is.
//! - Running compiled code allocates nothing and uses a bounded amount of machine
//!   stack (the code's own frame plus the dispatch function's), so it may run in
//!   probe context.

use core::fmt;

use probe_port_protocol::isa::MAX_INSNS;

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// Why a program was not compiled. The caller falls back to the interpreter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JitError {
    /// The code needs `needed` bytes and the output buffer has `available`.
    TooLarge {
        /// Bytes the code takes.
        needed: usize,
        /// Bytes the output buffer holds.
        available: usize,
    },
    /// The instruction at slot `index` has no translation. The verifier accepts
    /// nothing that reaches this; it exists so that a verifier extended before the
    /// JIT makes the caller fall back to the interpreter instead of failing.
    Unsupported {
        /// The slot of the instruction.
        index: u32,
        /// Its opcode byte.
        code: u8,
    },
    /// The program has more slots than [`JitScratch`] (and the protocol) allow.
    TooManySlots {
        /// Slots in the program.
        slots: usize,
    },
}

impl fmt::Display for JitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            JitError::TooLarge { needed, available } => write!(
                f,
                "compiled code needs {needed} bytes, the buffer holds {available}"
            ),
            JitError::Unsupported { index, code } => write!(
                f,
                "instruction {index} (opcode {code:#04x}) has no native translation"
            ),
            JitError::TooManySlots { slots } => {
                write!(f, "program has {slots} slots, more than {MAX_INSNS}")
            }
        }
    }
}

impl core::error::Error for JitError {}

/// Working memory of a compilation: the code offset of every slot.
///
/// 16 KiB: too much for a kernel stack, so a kernel keeps one in a static beside
/// its [`VerifierScratch`](probe_port_protocol::verifier::VerifierScratch) (behind
/// the same lock) and reuses it. Its contents between calls mean nothing.
pub struct JitScratch {
    /// Byte offset of each slot's code, and of the code after the last slot.
    pub(crate) offsets: [u32; MAX_INSNS + 1],
}

impl JitScratch {
    /// Scratch for programs of up to [`MAX_INSNS`] slots.
    pub const fn new() -> Self {
        Self {
            offsets: [0; MAX_INSNS + 1],
        }
    }
}

impl Default for JitScratch {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for JitScratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitScratch").finish_non_exhaustive()
    }
}
