//! Fixed capacities of the stub: every table, arena and buffer is sized here.
//!
//! # Design
//!
//! The stub never allocates. Everything it stores lives in the [`crate::Stub`]
//! value, which a kernel places in a `static`: these constants size it at compile
//! time, and the handshake announces them to the client (`Limits`, PROTOCOL.md
//! §7.3), so a client never asks for more than fits. Going past one of them is a
//! `NO_SPACE` error whose detail is the limit, never a failure in probe context.
//!
//! # Invariants
//!
//! - Ring and arena sizes are powers of two or multiples of 8 where the code relies
//!   on it (checked by the constant assertions at the end).
//! - [`MAX_MESSAGE`] never exceeds the framing layer's `MAX_PAYLOAD`.

use probe_port_protocol::frame::MAX_PAYLOAD;
use probe_port_protocol::isa::MAX_INSNS;

/// Most CPUs the stub serves; a platform with more is refused at `Hello`.
pub const MAX_CPUS: usize = 8;

/// Most probes armed at once (every kind together): enough for one probe on every
/// function of a small kernel (the demo kernel has about a thousand).
pub const MAX_PROBES: usize = 2048;

/// Most maps defined at once.
pub const MAX_MAPS: usize = 32;

/// Instruction slots shared by all stored programs (entry programs included).
pub const PROGRAM_ARENA_SLOTS: usize = 32768;

/// Longest single program, in instruction slots (the protocol's own maximum).
pub const MAX_PROGRAM_INSNS: usize = MAX_INSNS;

/// Bytes of event ring per CPU.
pub const RING_BYTES_PER_CPU: usize = 64 * 1024;

/// Bytes of memory for all maps together, per-CPU aggregation tables included.
pub const MAP_ARENA_BYTES: usize = 2 * 1024 * 1024;

/// Pending returns announced per CPU (`return_depth`); the pending-return table
/// holds `MAX_CPUS * RETURN_DEPTH` entries shared by every CPU.
pub const RETURN_DEPTH: usize = 64;

/// Entries of the global pending-return table.
pub const PENDING_RETURNS: usize = MAX_CPUS * RETURN_DEPTH;

/// Largest record one `emit` may send, in bytes.
pub const MAX_RECORD: usize = 1024;

/// Largest message the stub accepts or sends (the frame layer's maximum).
pub const MAX_MESSAGE: usize = MAX_PAYLOAD;

/// Most out-of-line slots the stub uses (slot 0, the return trampoline,
/// included): a platform's area beyond `MAX_OUT_OF_LINE_SLOTS * SLOT_SIZE` bytes
/// (512 KiB on x86_64) is not used. Slots are written once per boot and never
/// rewritten with other code (see `session.rs`), so this bounds the distinct
/// probe sites a boot can ever arm, not the probes armed at once.
pub const MAX_OUT_OF_LINE_SLOTS: usize = 16384;

/// Most timer probes armed at once.
pub const MAX_TIMERS: usize = 32;

/// Bytes a `ReadMap` reply needs besides its entries (sequence number, variant
/// tags, map number, count, length prefix and cursor, each a varint): a page's
/// entries take at most `MAX_MESSAGE - PAGE_HEADROOM` bytes.
pub const PAGE_HEADROOM: usize = 64;

/// Most bytes of a map page's entries.
pub const MAX_PAGE_ENTRIES: usize = MAX_MESSAGE - PAGE_HEADROOM;

/// Lease announced in the handshake unless the kernel sets another
/// ([`crate::Stub::with_lease_ms`]).
pub const DEFAULT_LEASE_MS: u32 = 5000;

/// Most bytes between a function's start and a probe address that the stub decodes
/// to check the instruction boundary; a probe further into a function is checked
/// only against its expected bytes.
pub const MAX_BOUNDARY_SCAN: usize = 16 * 1024;

/// Most return addresses one `stack_trace` helper call collects (its buffer is at
/// most 512 bytes).
pub const MAX_STACK_TRACE: usize = 64;

/// Entries of the open-addressing table that finds a site by its address (twice
/// the probes, so the table is at most half full).
pub const SITE_TABLE: usize = 2 * MAX_PROBES;

/// Words of one CPU's event ring.
pub(crate) const RING_WORDS: usize = RING_BYTES_PER_CPU / 8;

/// Words of the map arena.
pub(crate) const MAP_ARENA_WORDS: usize = MAP_ARENA_BYTES / 8;

const _: () = {
    assert!(RING_WORDS.is_power_of_two());
    assert!(MAX_MESSAGE <= MAX_PAYLOAD);
    assert!(MAX_RECORD.is_multiple_of(8));
    assert!(MAX_PROBES <= u16::MAX as usize);
    assert!(MAX_TIMERS <= MAX_PROBES);
    assert!(MAP_ARENA_WORDS <= u32::MAX as usize);
};
