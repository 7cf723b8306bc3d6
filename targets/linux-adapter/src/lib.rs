//! The Linux adapter: the probe port served by a daemon with Linux's own tracing
//! mechanisms, no kernel module.
//!
//! # Design
//!
//! ```text
//! client ──port (Unix socket, serial line)──▶ server ──▶ session ──translate──▶ BPF program ──bpf()──▶ kernel
//!              uprobe, kprobe, tracepoint and cpu-clock events ◀──perf_event_open──┘
//! client ◀── Event / Lost ◀── session::drain ◀── BPF ring buffer ◀── programs
//! ```
//!
//! - [`server`]: the root-only socket, peer credentials, one client at a time,
//!   lease and end-of-stream handling; [`serial`]: the same on a raw serial line.
//! - [`session`]: one handler per request, as the demo stub answers them; owns
//!   every kernel object of the session, so ending it closes them all.
//! - [`translate`]: our verified handler programs into Linux BPF (pure, tested on
//!   the host without privileges).
//! - [`sys`]: `bpf()`, `perf_event_open()` and the ring buffer's pages.
//! - [`kallsyms`]: kernel addresses named from `/proc/kallsyms` (`Symbolize`).
//! - [`tracepoints`]: the kernel tracepoints published as the marker table, with
//!   their fields from tracefs.
//!
//! # Invariants
//!
//! - A program reaches the kernel only after our own verifier accepted it and the
//!   translator produced an exact equivalent; anything else is refused with an
//!   error code and a reason.
//! - Every kernel object is an owned descriptor of the session; nothing outlives
//!   the client's session.

pub mod kallsyms;
pub mod serial;
pub mod server;
pub mod session;
pub mod sys;
pub mod tracepoints;
pub mod translate;
