//! The in-kernel probe stub.
//!
//! # Design
//!
//! This crate is what a kernel embeds to expose the probe port. A kernel
//! implements [`Platform`] (CPUs, clock, fault-tolerant memory access, text
//! patching), puts one [`Stub`] in a `static`, and wires four things:
//!
//! - its breakpoint trap calls [`Stub::on_breakpoint`] and returns with the
//!   registers it modified ([`TrapOutcome::Handled`]), or treats the trap as its
//!   own ([`TrapOutcome::NotMine`]);
//! - its timer interrupt calls [`Stub::on_timer`] on every CPU;
//! - at boot it registers the stub as the sink of static markers
//!   ([`set_marker_sink`]), which it places with [`marker!`];
//! - the thread that owns the port feeds received bytes to
//!   [`Stub::serve_bytes`] (or payloads to [`Stub::handle`] and calls
//!   [`Stub::drain`]), calls [`Stub::poll`] now and then for the lease, and
//!   [`Stub::end_session`] when the port's holder goes away.
//!
//! Inside: [`interpreter`] runs verified handler programs and [`jit`] compiles
//! them to native code with the same semantics; `stub.rs` holds the
//! probe-context entry points and the quiescence protocol; `session.rs` the
//! requests; `probes.rs`, `maps.rs`, `ring.rs` and `returns.rs` the tables; and
//! `limits.rs` every capacity. [`arch`] is the architecture backend.
//!
//! # Invariants
//!
//! - `no_std`, and nothing here allocates; every capacity is fixed in [`limits`].
//! - Probe context never blocks, never sends anything, and never takes a lock its
//!   own CPU may hold; no input makes the stub panic.
//! - The `unsafe` of the stub is confined to `sync.rs` (publication cells), the
//!   reads that its contracts allow, and `jit/x86_64/runtime.rs` (calling
//!   compiled code).
#![cfg_attr(not(test), no_std)]

pub mod arch;
pub mod interpreter;
pub mod jit;
mod jump;
pub mod limits;
mod maps;
mod markers;
pub mod platform;
mod probes;
mod returns;
mod ring;
mod session;
mod stub;
mod sync;

pub use limits::{DEFAULT_LEASE_MS, MAX_CPUS};
pub use markers::{MarkerSink, fire_marker, set_marker_sink};
pub use platform::{MarkerSite, Platform, TextError};
pub use probe_port_protocol::message::{ArgType, MAX_MARKER_ARGS, MAX_NAME as MAX_MARKER_NAME};
pub use stub::{Stub, TrapOutcome};
