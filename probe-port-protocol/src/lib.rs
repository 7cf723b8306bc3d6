//! The probe port contract: messages, framing, error codes and handler programs.
//!
//! # Design
//!
//! Both sides of the port compile this crate: the `no_std` stub inside a kernel and
//! the userland client. It holds everything they must agree on and nothing else:
//!
//! - [`message`]: every request, reply, event and lost-event report, serialised with
//!   postcard; [`error`]: the numbered error codes.
//! - [`frame`]: COBS + CRC-32 framing for byte streams (serial lines, sockets).
//! - [`isa`], [`context`], [`maps`]: the handler instruction set (RFC 9669 encoding
//!   with probeport's helpers), the probe context a handler reads, map definitions.
//! - [`verifier`]: the checks a program passes before any executor runs it.
//! - [`asm`] (with `alloc`): the text assembler and disassembler.
//!
//! The written contract is `PROTOCOL.md` beside this crate.
//!
//! # Invariants
//!
//! - This crate depends on nothing of ours, and only on serde, postcard and heapless.
//! - Without the `alloc` feature nothing here allocates; decoders never panic on
//!   untrusted bytes.
#![cfg_attr(not(test), no_std)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(feature = "alloc")]
pub mod asm;
pub mod context;
pub mod error;
pub mod frame;
pub mod isa;
pub mod maps;
pub mod message;
pub mod verifier;
