//! Publication and locking primitives shared by probe context and the session.
//!
//! # Design
//!
//! Probe context never locks what it only reads. The session writes a record (a
//! probe, a site, a map layout, a program) while no CPU can reach it, then
//! *publishes* it with a release (or sequentially consistent) store of a flag or
//! key that probe context loads with acquire (or sequentially consistent) ordering.
//! Before writing the record again the session *unpublishes* it and waits for
//! quiescence (`Stub::synchronize`: every CPU seen outside a handler since), so no
//! CPU still reads it. [`QuiescentCell`] and [`ProgramArena`] hold such records;
//! with [`HandlerStack`] they are the only `unsafe` of the stub, and their
//! contracts are that protocol.
//!
//! [`HandlerStack`] is a CPU's handler stack: the memory `interpreter::run_on_stack`
//! runs a handler on, so that a hit zeroes only the bytes its program can touch.
//! Only the probe-context entry that set the CPU's `in_handler` flag (not a nested
//! one) uses it, for the runs of that entry, one after another.
//!
//! [`CpuLock`] is a spin lock that records its owner CPU. Probe context takes it
//! with [`CpuLock::lock`], which refuses (returns `None`) instead of spinning when
//! the current CPU already holds it — the session holds such locks with interrupts
//! off, so only a non-maskable path could find its own CPU as owner, and it must
//! not deadlock there.
//!
//! # Invariants
//!
//! - A [`QuiescentCell`] or arena range is written only while unpublished and
//!   quiescent, and read only while published (or by the session, its only writer).
//! - A [`CpuLock`] owner is `cpu + 1`, 0 meaning free, so a fresh lock is all zero.
//! - A [`HandlerStack`] is borrowed by at most one handler run at a time: the one
//!   of the entry holding its CPU's `in_handler` flag.

use core::cell::UnsafeCell;
use core::ops::Range;
use core::sync::atomic::{AtomicUsize, Ordering};

use probe_port_protocol::isa::{Insn, STACK_SIZE};

use crate::limits::PROGRAM_ARENA_SLOTS;

/// One CPU's handler stack (aligned like a machine stack).
#[repr(C, align(8))]
pub(crate) struct HandlerStack(UnsafeCell<[u8; STACK_SIZE]>);

// SAFETY: the stack is only ever borrowed by the one handler run that holds its
// CPU's `in_handler` flag (see `HandlerStack::get`), so no two threads reach it at
// once; its bytes are plain data.
unsafe impl Sync for HandlerStack {}

impl HandlerStack {
    /// A zeroed stack.
    pub(crate) const fn new() -> Self {
        Self(UnsafeCell::new([0; STACK_SIZE]))
    }

    /// The stack, for one handler run.
    ///
    /// # Safety
    ///
    /// The caller is the probe-context entry that set this stack's CPU's
    /// `in_handler` flag (a swap from `false`), it still holds the flag, and it
    /// drops the borrow before taking another or clearing the flag.
    #[allow(
        clippy::mut_from_ref,
        reason = "exclusive by the in_handler flag, as the safety contract says"
    )]
    pub(crate) unsafe fn get(&self) -> &mut [u8; STACK_SIZE] {
        // SAFETY: the caller guarantees that no other borrow of the stack is live:
        // any other entry on this CPU saw the flag set and runs no handler.
        unsafe { &mut *self.0.get() }
    }
}

/// A `Copy` record written by the session while unpublished and read by probe
/// context while published (see the module documentation).
pub(crate) struct QuiescentCell<T: Copy>(UnsafeCell<T>);

// SAFETY: concurrent access follows the publication protocol of the module
// documentation: a write never overlaps a read, because the session writes only
// unpublished, quiescent cells and readers only read published ones. The values
// are plain `Copy` data that may move between CPUs (`Send`).
unsafe impl<T: Copy + Send> Sync for QuiescentCell<T> {}

impl<T: Copy> QuiescentCell<T> {
    /// A cell holding `value`.
    pub(crate) const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// Replaces the value.
    ///
    /// # Safety
    ///
    /// No CPU may read the cell during the write: it has never been published, or
    /// it was unpublished and quiescence has been reached since.
    pub(crate) unsafe fn write(&self, value: T) {
        // SAFETY: the caller guarantees that nothing reads or writes the cell
        // concurrently, and the pointer comes from a live `UnsafeCell`.
        unsafe { self.0.get().write(value) }
    }

    /// Copies the value out.
    ///
    /// # Safety
    ///
    /// The caller found the cell published (through an acquire load that follows
    /// the writer's release store), or is the session, the only writer.
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) unsafe fn read(&self) -> T {
        // SAFETY: the caller guarantees no write is in progress; a copy of plain
        // data from a live `UnsafeCell` is then an ordinary read.
        unsafe { self.0.get().read() }
    }

    /// Borrows the value in place.
    ///
    /// # Safety
    ///
    /// As [`QuiescentCell::read`], and the borrow must end before the session may
    /// write again: within the probe-context run that found the cell published
    /// (the session writes only after quiescence, which waits for that run), or
    /// within the session's own request.
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) unsafe fn get(&self) -> &T {
        // SAFETY: the caller guarantees no write happens while the borrow lives.
        unsafe { &*self.0.get() }
    }
}

/// The instruction slots of every stored program.
///
/// The session decodes a program into a free range, verifies it there, and
/// publishes the probe that names the range; it frees the range only after the
/// probe is unpublished and quiescence reached.
pub(crate) struct ProgramArena {
    insns: UnsafeCell<[Insn; PROGRAM_ARENA_SLOTS]>,
}

// SAFETY: ranges follow the publication protocol of the module documentation:
// the session writes only ranges no published probe names, and probe context
// reads only ranges of published probes. `Insn` is plain data.
unsafe impl Sync for ProgramArena {}

impl ProgramArena {
    /// An arena of zeroed slots.
    pub(crate) const fn new() -> Self {
        Self {
            insns: UnsafeCell::new([Insn::new(0, 0, 0, 0, 0); PROGRAM_ARENA_SLOTS]),
        }
    }

    /// Runs `fill` on the slots of `range`; `None` if the range is outside the arena.
    ///
    /// # Safety
    ///
    /// No published probe names any slot of `range`, and quiescence has been
    /// reached since the last one that did was unpublished.
    pub(crate) unsafe fn with_range_mut<R>(
        &self,
        range: Range<usize>,
        fill: impl FnOnce(&mut [Insn]) -> R,
    ) -> Option<R> {
        if range.start > range.end || range.end > PROGRAM_ARENA_SLOTS {
            return None;
        }
        let base = self.insns.get().cast::<Insn>();
        // SAFETY: `range` lies inside the array (checked above), so the pointer
        // and length describe initialised `Insn`s of the live arena; the caller
        // guarantees that nobody else accesses these slots meanwhile, and the
        // mutable slice does not outlive this call.
        let slots = unsafe {
            core::slice::from_raw_parts_mut(base.add(range.start), range.end - range.start)
        };
        Some(fill(slots))
    }

    /// The slots of `range`; empty if the range is outside the arena.
    ///
    /// # Safety
    ///
    /// `range` belongs to a published probe (found through an acquire load), or
    /// the caller is the session; either way no write to it is in progress, and
    /// none starts before the returned borrow ends (the session writes a range only
    /// after unpublishing its probe and reaching quiescence, which waits for this
    /// CPU to leave its handler).
    pub(crate) unsafe fn range(&self, range: Range<usize>) -> &[Insn] {
        if range.start > range.end || range.end > PROGRAM_ARENA_SLOTS {
            return &[];
        }
        let base = self.insns.get().cast::<Insn>().cast_const();
        // SAFETY: in bounds (checked above); the caller guarantees no concurrent
        // write for the lifetime of the borrow.
        unsafe { core::slice::from_raw_parts(base.add(range.start), range.end - range.start) }
    }
}

/// A spin lock that knows which CPU holds it (see the module documentation).
pub(crate) struct CpuLock {
    /// `cpu + 1` of the holder, 0 when free.
    owner: AtomicUsize,
}

/// Holds a [`CpuLock`] until dropped.
pub(crate) struct CpuLockGuard<'l> {
    lock: &'l CpuLock,
}

impl CpuLock {
    /// A free lock.
    pub(crate) const fn new() -> Self {
        Self {
            owner: AtomicUsize::new(0),
        }
    }

    /// Takes the lock for `cpu`, spinning while another CPU holds it. Returns
    /// `None` at once if `cpu` holds it already (a non-maskable re-entry).
    pub(crate) fn lock(&self, cpu: usize) -> Option<CpuLockGuard<'_>> {
        let me = cpu.wrapping_add(1);
        loop {
            match self
                .owner
                .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Some(CpuLockGuard { lock: self }),
                Err(holder) if holder == me => return None,
                Err(_) => core::hint::spin_loop(),
            }
        }
    }
}

impl Drop for CpuLockGuard<'_> {
    fn drop(&mut self) {
        self.lock.owner.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_never_waits_for_itself() {
        let lock = CpuLock::new();
        let guard = lock.lock(3).unwrap();
        assert!(lock.lock(3).is_none());
        drop(guard);
        assert!(lock.lock(3).is_some());
    }

    #[test]
    fn arena_ranges_are_bounded() {
        static ARENA: ProgramArena = ProgramArena::new();
        let insn = Insn::new(0x95, 0, 0, 0, 0);
        // SAFETY: the arena is local to this test and never published.
        unsafe {
            assert_eq!(
                ARENA.with_range_mut(4..6, |slots| slots.fill(insn)),
                Some(())
            );
            assert_eq!(ARENA.range(4..6), &[insn, insn]);
            assert!(
                ARENA
                    .with_range_mut(0..PROGRAM_ARENA_SLOTS + 1, |_| ())
                    .is_none()
            );
            assert!(
                ARENA
                    .range(PROGRAM_ARENA_SLOTS..PROGRAM_ARENA_SLOTS + 1)
                    .is_empty()
            );
        }
    }
}
