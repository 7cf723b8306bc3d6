//! Architecture backends: breakpoints, trapped registers, out-of-line execution.
//!
//! # Design
//!
//! Each architecture is one module with the same public items (the "arch
//! interface" below); the rest of the stub uses `crate::arch::*` and never names
//! an architecture. The interface:
//!
//! - [`TrapRegisters`]: the trapped registers in DWARF order plus pc and flags.
//! - [`BREAKPOINT`], [`SLOT_SIZE`], [`breakpoint_address`], [`stack_pointer`],
//!   [`frame_pointer`].
//! - [`prepare`]: decode the instruction at a probe address and decide how to run
//!   it displaced: copied into an out-of-line slot (operands fixed up for the slot's
//!   address, followed by a jump back) or emulated.
//! - [`is_instruction_boundary`]: decode a function from its start.
//! - [`resume`]: after the handler ran, make the trapped CPU execute the displaced
//!   instruction and continue.
//!
//! x86_64 also exposes `decode`, the instruction decoder behind [`prepare`] and
//! [`is_instruction_boundary`], for its differential tests against iced-x86.
//!
//! An unsupported architecture is a compile error.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(not(target_arch = "x86_64"))]
compile_error!("kernel-stub supports x86_64 only so far");
