//! Pending returns: the activations whose return address the stub swapped for the
//! return trampoline.
//!
//! # Design
//!
//! At the entry of a function with a return probe, the stub saves the real return
//! address (read at the entry stack pointer) with the values the entry program
//! saved, and writes the trampoline's address over it. When the function returns,
//! the `ret` pops the trampoline's address and the CPU traps there with its stack
//! pointer just above the slot: `entry_sp + 8`. The stub finds the activation by
//! that entry stack pointer, runs the return program and resumes at the saved
//! address.
//!
//! The table is global, not per CPU, because a thread may sleep inside the probed
//! function and return on another CPU. Entries are claimed with a compare-exchange
//! on their state (free → claimed → ready → claimed → free), so every CPU may enter
//! and return at once without a lock. The search starts at a hash of the stack
//! pointer, which keeps it short.
//!
//! An activation is keyed by its entry stack pointer, which identifies it: two live
//! activations never share one (a nested or recursive call has a lower one, another
//! thread another stack). A ready entry found with the stack pointer of a *new*
//! entry is therefore stale — its function left without returning through the
//! trampoline, for example by a thread exit — and is reused.
//!
//! Pending returns outlive probes and sessions: the trampoline stays in place
//! forever and each entry is freed only when its function returns, so no swapped
//! return address is ever left without its original.
//!
//! # Invariants
//!
//! - An entry is ready exactly while the trampoline's address stands in place of
//!   its return address on some stack.
//! - Nothing here blocks: every operation is a bounded scan of the table.

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use probe_port_protocol::context::ENTRY_SLOTS;

use crate::limits::PENDING_RETURNS;

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const READY: u8 = 2;

/// One activation waiting for its function to return.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Activation {
    /// The stack pointer at function entry (where the return address was).
    pub(crate) entry_sp: u64,
    /// The real return address.
    pub(crate) return_address: u64,
    /// The probe table slot of the return probe.
    pub(crate) probe_slot: u32,
    /// The probe's number, to recognise the probe if the slot was reused.
    pub(crate) probe_id: u32,
    /// The session the probe belonged to.
    pub(crate) session: u32,
    /// Values the entry program saved.
    pub(crate) values: [u64; ENTRY_SLOTS],
}

struct Entry {
    state: AtomicU8,
    entry_sp: AtomicU64,
    return_address: AtomicU64,
    probe_slot: AtomicU32,
    probe_id: AtomicU32,
    session: AtomicU32,
    values: [AtomicU64; ENTRY_SLOTS],
}

impl Entry {
    const fn new() -> Self {
        Self {
            state: AtomicU8::new(FREE),
            entry_sp: AtomicU64::new(0),
            return_address: AtomicU64::new(0),
            probe_slot: AtomicU32::new(0),
            probe_id: AtomicU32::new(0),
            session: AtomicU32::new(0),
            values: [const { AtomicU64::new(0) }; ENTRY_SLOTS],
        }
    }
}

/// The global table of pending returns.
pub(crate) struct PendingReturns {
    entries: [Entry; PENDING_RETURNS],
}

impl PendingReturns {
    pub(crate) const fn new() -> Self {
        Self {
            entries: [const { Entry::new() }; PENDING_RETURNS],
        }
    }

    /// Table indices in search order for a stack pointer.
    #[unsafe(link_section = ".text.probeport")]
    fn order(entry_sp: u64) -> impl Iterator<Item = usize> {
        let start = ((entry_sp >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize;
        (0..PENDING_RETURNS).map(move |step| (start + step) % PENDING_RETURNS)
    }

    /// Claims an entry for a new activation at `entry_sp`: a stale one with the
    /// same stack pointer if there is one, else a free one. `None` if the table is
    /// full.
    pub(crate) fn claim(&self, entry_sp: u64) -> Option<usize> {
        let mut free = None;
        for index in Self::order(entry_sp) {
            let entry = &self.entries[index];
            let claim = |from: u8| {
                entry
                    .state
                    .compare_exchange(from, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            };
            match entry.state.load(Ordering::Acquire) {
                READY if entry.entry_sp.load(Ordering::Relaxed) == entry_sp && claim(READY) => {
                    if let Some(other) = free {
                        self.release(other);
                    }
                    return Some(index);
                }
                FREE if free.is_none() && claim(FREE) => free = Some(index),
                _ => {}
            }
        }
        free
    }

    /// Fills a claimed entry and makes it findable.
    pub(crate) fn publish(&self, index: usize, activation: &Activation) {
        let Some(entry) = self.entries.get(index) else {
            return;
        };
        entry.entry_sp.store(activation.entry_sp, Ordering::Relaxed);
        entry
            .return_address
            .store(activation.return_address, Ordering::Relaxed);
        entry
            .probe_slot
            .store(activation.probe_slot, Ordering::Relaxed);
        entry.probe_id.store(activation.probe_id, Ordering::Relaxed);
        entry.session.store(activation.session, Ordering::Relaxed);
        for (slot, value) in entry.values.iter().zip(activation.values) {
            slot.store(value, Ordering::Relaxed);
        }
        entry.state.store(READY, Ordering::Release);
    }

    /// Gives a claimed (or taken) entry back.
    pub(crate) fn release(&self, index: usize) {
        if let Some(entry) = self.entries.get(index) {
            entry.state.store(FREE, Ordering::Release);
        }
    }

    /// Finds the ready activation entered at `entry_sp`, frees its entry and
    /// returns it.
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn take(&self, entry_sp: u64) -> Option<Activation> {
        for index in Self::order(entry_sp) {
            let entry = &self.entries[index];
            if entry.state.load(Ordering::Acquire) != READY
                || entry.entry_sp.load(Ordering::Relaxed) != entry_sp
            {
                continue;
            }
            if entry
                .state
                .compare_exchange(READY, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let activation = Activation {
                entry_sp,
                return_address: entry.return_address.load(Ordering::Relaxed),
                probe_slot: entry.probe_slot.load(Ordering::Relaxed),
                probe_id: entry.probe_id.load(Ordering::Relaxed),
                session: entry.session.load(Ordering::Relaxed),
                values: core::array::from_fn(|slot| entry.values[slot].load(Ordering::Relaxed)),
            };
            entry.state.store(FREE, Ordering::Release);
            return Some(activation);
        }
        None
    }

    /// How many activations are pending.
    pub(crate) fn pending(&self) -> usize {
        self.entries
            .iter()
            .filter(|entry| entry.state.load(Ordering::Relaxed) == READY)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activation(entry_sp: u64, return_address: u64) -> Activation {
        Activation {
            entry_sp,
            return_address,
            ..Activation::default()
        }
    }

    #[test]
    fn activations_are_found_by_stack_pointer() {
        let table = Box::new(PendingReturns::new());
        let outer = table.claim(0x1000).unwrap();
        table.publish(outer, &activation(0x1000, 0xaaaa));
        let inner = table.claim(0x0f00).unwrap();
        table.publish(inner, &activation(0x0f00, 0xbbbb));
        assert_eq!(table.pending(), 2);
        assert_eq!(table.take(0x0f00).unwrap().return_address, 0xbbbb);
        assert_eq!(table.take(0x0f00), None);
        assert_eq!(table.take(0x1000).unwrap().return_address, 0xaaaa);
        assert_eq!(table.pending(), 0);
    }

    #[test]
    fn a_stale_activation_is_replaced_and_a_full_table_refuses() {
        let table = Box::new(PendingReturns::new());
        let first = table.claim(0x2000).unwrap();
        table.publish(first, &activation(0x2000, 1));
        let again = table.claim(0x2000).unwrap();
        assert_eq!(again, first);
        table.publish(again, &activation(0x2000, 2));
        assert_eq!(table.pending(), 1);
        for sp in 0..PENDING_RETURNS as u64 - 1 {
            let index = table.claim(0x10_0000 + sp * 16).unwrap();
            table.publish(index, &activation(0x10_0000 + sp * 16, 3));
        }
        assert_eq!(table.claim(0x9999_0000), None);
        assert_eq!(table.take(0x2000).unwrap().return_address, 2);
    }
}
