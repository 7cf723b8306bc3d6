//! The probe table and the site index that finds probes by address.
//!
//! # Design
//!
//! **Probes** live in a fixed array of [`ProbeSlot`]s. A slot's state goes
//! free → staged (armed, not firing) → live (firing) → staged … → free. The
//! session writes a probe's [`ProbeData`] while the slot is free, then publishes it
//! with a release store of the state; probe context runs a probe's handler only
//! when it loads the state as live. Per-probe counters are atomics, updated from
//! any CPU.
//!
//! **Sites** are what probe context looks up by address: a patched instruction
//! (dynamic and return probes share one site, one breakpoint and one out-of-line
//! slot when they sit at the same address) or a marker (keyed by the address of
//! its `MarkerSite`). The index is an open-addressing table over atomics keyed by
//! address: lookups are lock-free and O(1) on average (the table has twice as
//! many entries as there can be probes, so it is at most half full), inserts need
//! no quiescence, and a removed site leaves a tombstone that the next insert on
//! its chain reuses. A sorted array swapped by generation would also be
//! lock-free, but every arm after `Start` would then wait for quiescence before
//! reusing the old array; open addressing arms at once.
//!
//! # Invariants
//!
//! - A site or probe slot is rewritten only after it was unpublished and the
//!   session reached quiescence (every request that unpublishes something waits
//!   for quiescence before it replies).
//! - Addresses 0 and `u64::MAX` mark empty entries and tombstones; arming refuses
//!   them.
//! - Publication loads and stores on the index are sequentially consistent: the
//!   quiescence protocol pairs them with each CPU's `in_handler` flag.

use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use probe_port_protocol::message::{ProbeId, ProbeStats};

use crate::arch::Displaced;
use crate::limits::{MAX_PROBES, SITE_TABLE};
use crate::sync::QuiescentCell;

/// Probe slot states.
pub(crate) const FREE: u8 = 0;
pub(crate) const STAGED: u8 = 1;
pub(crate) const LIVE: u8 = 2;

/// Probe kinds, as stored in [`ProbeData::kind`].
pub(crate) const DYNAMIC: u8 = 0;
pub(crate) const RETURN: u8 = 1;
pub(crate) const MARKER: u8 = 2;
pub(crate) const TIMER: u8 = 3;

/// Index-table key of an empty entry, and of a removed one.
const EMPTY: u64 = 0;
const TOMBSTONE: u64 = u64::MAX;

/// What probe context needs to know about a probe. Plain integers, so a fresh
/// table is all zero bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProbeData {
    /// The probe's number.
    pub(crate) id: u32,
    /// [`DYNAMIC`], [`RETURN`], [`MARKER`] or [`TIMER`].
    pub(crate) kind: u8,
    /// Dynamic and return probes: the address; markers: the site's address;
    /// timers: the period in nanoseconds.
    pub(crate) address: u64,
    /// Timers: fire on every CPU rather than on CPU 0 only.
    pub(crate) each_cpu: bool,
    /// The handler (for return probes, the return program): first arena slot.
    pub(crate) program_start: u32,
    /// Its length in slots.
    pub(crate) program_len: u32,
    /// Return probes: the entry program's first slot (0 slots: none).
    pub(crate) entry_start: u32,
    /// Its length in slots.
    pub(crate) entry_len: u32,
    /// Bytes of handler stack the handler may touch, as its verifier found
    /// (`interpreter::run_on_stack` zeroes only those).
    pub(crate) stack_depth: u16,
    /// The same for the entry program.
    pub(crate) entry_stack_depth: u16,
    /// Bytes of compiled code in the platform's compiled-code area (0: the
    /// programs are interpreted): the handler's first, at `code_start`.
    pub(crate) code_len: u32,
    /// Offset of the compiled code in the area.
    pub(crate) code_start: u32,
    /// Offset of the entry program's code from `code_start` (return probes with an
    /// entry program).
    pub(crate) entry_code_offset: u32,
}

impl ProbeData {
    const ZERO: ProbeData = ProbeData {
        id: 0,
        kind: 0,
        address: 0,
        each_cpu: false,
        program_start: 0,
        program_len: 0,
        entry_start: 0,
        entry_len: 0,
        stack_depth: 0,
        entry_stack_depth: 0,
        code_len: 0,
        code_start: 0,
        entry_code_offset: 0,
    };

    /// The arena range of the handler.
    pub(crate) fn program(&self) -> core::ops::Range<usize> {
        let start = self.program_start as usize;
        start..start + self.program_len as usize
    }

    /// The arena range of the entry program (empty if none).
    pub(crate) fn entry_program(&self) -> core::ops::Range<usize> {
        let start = self.entry_start as usize;
        start..start + self.entry_len as usize
    }
}

/// Counters of one probe.
pub(crate) struct ProbeCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) faults: AtomicU64,
    pub(crate) last_fault_address: AtomicU64,
    pub(crate) drops: AtomicU64,
}

impl ProbeCounters {
    const fn new() -> Self {
        Self {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            last_fault_address: AtomicU64::new(0),
            drops: AtomicU64::new(0),
        }
    }

    fn reset(&self) {
        for counter in [
            &self.hits,
            &self.misses,
            &self.faults,
            &self.last_fault_address,
            &self.drops,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a fault; `address` is recorded unless it is unknown (`None`).
    pub(crate) fn fault(&self, address: Option<u64>) {
        self.faults.fetch_add(1, Ordering::Relaxed);
        if let Some(address) = address {
            self.last_fault_address.store(address, Ordering::Relaxed);
        }
    }
}

/// One probe.
pub(crate) struct ProbeSlot {
    state: AtomicU8,
    data: QuiescentCell<ProbeData>,
    pub(crate) counters: ProbeCounters,
}

impl ProbeSlot {
    const fn new() -> Self {
        Self {
            state: AtomicU8::new(FREE),
            data: QuiescentCell::new(ProbeData::ZERO),
            counters: ProbeCounters::new(),
        }
    }

    /// The probe, if it is live. *Probe context.*
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn live(&self) -> Option<ProbeData> {
        if self.state.load(Ordering::SeqCst) != LIVE {
            return None;
        }
        // SAFETY: the state load saw the slot published; the session rewrites
        // the data only after freeing the slot and reaching quiescence, which
        // waits for this CPU's handler to end.
        Some(unsafe { self.data.read() })
    }

    /// The probe, if it is live, borrowed in place. *Probe context.*
    ///
    /// # Safety
    ///
    /// The caller is in probe context (its CPU marked by `Stub::enter`) and the
    /// borrow ends before it leaves: the session rewrites the data only after
    /// unpublishing the slot and reaching quiescence.
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) unsafe fn live_ref(&self) -> Option<&ProbeData> {
        if self.state.load(Ordering::SeqCst) != LIVE {
            return None;
        }
        // SAFETY: as in `live`, for as long as the caller stays in probe context.
        Some(unsafe { self.data.get() })
    }

    /// The probe if armed (staged or live). Session, or probe context.
    pub(crate) fn armed(&self) -> Option<ProbeData> {
        if self.state.load(Ordering::SeqCst) == FREE {
            return None;
        }
        // SAFETY: as in `live`: the slot is published.
        Some(unsafe { self.data.read() })
    }

    /// Session: publishes a new probe in a free, quiescent slot, staged.
    pub(crate) fn install(&self, data: ProbeData) {
        self.counters.reset();
        // SAFETY: the session calls this only for a free slot, and every request
        // that freed a slot reached quiescence before replying, so no CPU reads it.
        unsafe { self.data.write(data) };
        self.state.store(STAGED, Ordering::SeqCst);
    }

    /// Session: makes an armed probe live or staged.
    pub(crate) fn set_live(&self, live: bool) {
        if self.state.load(Ordering::Relaxed) != FREE {
            self.state
                .store(if live { LIVE } else { STAGED }, Ordering::SeqCst);
        }
    }

    /// Session: unpublishes the probe. The slot is reusable once quiescence is
    /// reached.
    pub(crate) fn remove(&self) {
        self.state.store(FREE, Ordering::SeqCst);
    }

    /// The probe's counters in the protocol's form.
    pub(crate) fn stats(&self, id: u32) -> ProbeStats {
        ProbeStats {
            probe: ProbeId(id),
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            faults: self.counters.faults.load(Ordering::Relaxed),
            last_fault_address: self.counters.last_fault_address.load(Ordering::Relaxed),
            drops: self.counters.drops.load(Ordering::Relaxed),
        }
    }
}

/// The probe table.
pub(crate) struct ProbeTable {
    slots: [ProbeSlot; MAX_PROBES],
}

impl ProbeTable {
    pub(crate) const fn new() -> Self {
        Self {
            slots: [const { ProbeSlot::new() }; MAX_PROBES],
        }
    }

    /// The slot at `index` (masked into the table: never panics).
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn slot(&self, index: usize) -> &ProbeSlot {
        &self.slots[index % MAX_PROBES]
    }

    /// The first free slot. Session.
    pub(crate) fn free_slot(&self) -> Option<usize> {
        self.slots
            .iter()
            .position(|slot| slot.state.load(Ordering::Relaxed) == FREE)
    }

    /// Every armed probe with its slot index. Session.
    pub(crate) fn armed(&self) -> impl Iterator<Item = (usize, ProbeData)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| slot.armed().map(|data| (index, data)))
    }

    /// The slot of the armed probe numbered `id`. Session.
    pub(crate) fn find(&self, id: u32) -> Option<(usize, ProbeData)> {
        self.armed().find(|(_, data)| data.id == id)
    }
}

/// What probe context needs to know about a site.
///
/// The displaced instruction is kept as a zeroed `MaybeUninit` plus a flag, not
/// an `Option`: `Option<Displaced>` encodes `None` in a niche of the
/// architecture's type, which would make a fresh table non-zero and move the
/// whole stub from `.bss` to `.data`.
#[derive(Clone, Copy)]
pub(crate) struct SiteData {
    /// Whether `displaced` holds a value (text sites; markers have none).
    has_displaced: bool,
    displaced: MaybeUninit<Displaced>,
    /// The address of the out-of-line slot that runs it.
    slot_address: u64,
}

impl SiteData {
    const EMPTY: SiteData = SiteData {
        has_displaced: false,
        displaced: MaybeUninit::zeroed(),
        slot_address: 0,
    };

    /// A patched instruction, run from the slot at `slot_address`.
    pub(crate) fn text(displaced: Displaced, slot_address: u64) -> Self {
        Self {
            has_displaced: true,
            displaced: MaybeUninit::new(displaced),
            slot_address,
        }
    }

    /// A marker: no instruction, no slot.
    pub(crate) fn marker() -> Self {
        Self::EMPTY
    }

    /// The instruction the breakpoint displaced (`None` for markers).
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn displaced(&self) -> Option<Displaced> {
        if self.has_displaced {
            // SAFETY: `has_displaced` is private and true only for values built
            // by `SiteData::text`, which initialises `displaced`.
            Some(unsafe { self.displaced.assume_init() })
        } else {
            None
        }
    }

    /// The out-of-line slot's address.
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn slot_address(&self) -> u64 {
        self.slot_address
    }
}

impl core::fmt::Debug for SiteData {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SiteData")
            .field("displaced", &self.displaced())
            .field("slot_address", &self.slot_address)
            .finish()
    }
}

/// One entry of the site index.
pub(crate) struct SiteEntry {
    address: AtomicU64,
    /// Probe slot + 1 of the dynamic (or marker) probe here, 0 if none.
    primary: AtomicU32,
    /// Probe slot + 1 of the return probe here, 0 if none.
    returns: AtomicU32,
    data: QuiescentCell<SiteData>,
}

impl SiteEntry {
    const fn new() -> Self {
        Self {
            address: AtomicU64::new(EMPTY),
            primary: AtomicU32::new(0),
            returns: AtomicU32::new(0),
            data: QuiescentCell::new(SiteData::EMPTY),
        }
    }

    /// The site's data. Only after finding the site published.
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn data(&self) -> SiteData {
        // SAFETY: callers reach an entry only through `SiteTable::find` (a
        // sequentially consistent load that saw it published) or as the session,
        // its only writer; it is rewritten only after removal and quiescence.
        unsafe { self.data.read() }
    }

    /// The probe slot of the dynamic or marker probe here.
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn primary(&self) -> Option<usize> {
        slot_of(self.primary.load(Ordering::SeqCst))
    }

    /// The probe slot of the return probe here.
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn returns(&self) -> Option<usize> {
        slot_of(self.returns.load(Ordering::SeqCst))
    }

    /// Session: attaches or detaches (`None`) the dynamic or marker probe.
    pub(crate) fn set_primary(&self, slot: Option<usize>) {
        self.primary.store(encode_slot(slot), Ordering::SeqCst);
    }

    /// Session: attaches or detaches (`None`) the return probe.
    pub(crate) fn set_returns(&self, slot: Option<usize>) {
        self.returns.store(encode_slot(slot), Ordering::SeqCst);
    }
}

fn slot_of(encoded: u32) -> Option<usize> {
    (encoded as usize).checked_sub(1)
}

fn encode_slot(slot: Option<usize>) -> u32 {
    slot.map_or(0, |slot| slot as u32 + 1)
}

/// The site index.
pub(crate) struct SiteTable {
    entries: [SiteEntry; SITE_TABLE],
}

impl SiteTable {
    pub(crate) const fn new() -> Self {
        Self {
            entries: [const { SiteEntry::new() }; SITE_TABLE],
        }
    }

    #[unsafe(link_section = ".text.probeport")]
    fn start(address: u64) -> usize {
        (address.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % SITE_TABLE
    }

    /// The entry at `index` (masked into the table).
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn entry(&self, index: usize) -> &SiteEntry {
        &self.entries[index % SITE_TABLE]
    }

    /// The index of the published site at `address`. *Probe context.*
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn find(&self, address: u64) -> Option<usize> {
        self.find_inline(address)
    }

    /// [`SiteTable::find`], inlined into the jump probe's entry.
    #[inline(always)]
    pub(crate) fn find_inline(&self, address: u64) -> Option<usize> {
        if address == EMPTY || address == TOMBSTONE {
            return None;
        }
        let start = Self::start(address);
        for step in 0..SITE_TABLE {
            let index = (start + step) % SITE_TABLE;
            match self.entries[index].address.load(Ordering::SeqCst) {
                EMPTY => return None,
                found if found == address => return Some(index),
                _ => {}
            }
        }
        None
    }

    /// Session: publishes a new site at `address` (not present yet). `None` if
    /// the table is full (cannot happen with at most `MAX_PROBES` sites).
    pub(crate) fn insert(&self, address: u64, data: SiteData) -> Option<usize> {
        if address == EMPTY || address == TOMBSTONE || self.find(address).is_some() {
            return None;
        }
        let start = Self::start(address);
        let index = (0..SITE_TABLE)
            .map(|step| (start + step) % SITE_TABLE)
            .find(|&index| {
                matches!(
                    self.entries[index].address.load(Ordering::Relaxed),
                    EMPTY | TOMBSTONE
                )
            })?;
        let entry = &self.entries[index];
        entry.primary.store(0, Ordering::Relaxed);
        entry.returns.store(0, Ordering::Relaxed);
        // SAFETY: the entry is empty or a tombstone: unpublished, and every
        // request that removed a site reached quiescence before replying.
        unsafe { entry.data.write(data) };
        entry.address.store(address, Ordering::SeqCst);
        Some(index)
    }

    /// Session: unpublishes a site. Reusable once quiescence is reached.
    pub(crate) fn remove(&self, index: usize) {
        self.entry(index).address.store(TOMBSTONE, Ordering::SeqCst);
    }

    /// Session: forgets every tombstone. Only when no site is published and
    /// quiescence has been reached.
    pub(crate) fn reset(&self) {
        for entry in &self.entries {
            entry.address.store(EMPTY, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_are_found_until_removed_and_tombstones_are_reused() {
        let table = Box::new(SiteTable::new());
        let data = SiteData::marker();
        // Colliding and non-colliding addresses alike.
        let addresses: Vec<u64> = (1..200).map(|n| 0xffff_ffff_8100_0000 + n * 7).collect();
        let indices: Vec<usize> = addresses
            .iter()
            .map(|&address| table.insert(address, data).unwrap())
            .collect();
        assert!(table.insert(addresses[0], data).is_none());
        for (address, index) in addresses.iter().zip(&indices) {
            assert_eq!(table.find(*address), Some(*index));
        }
        for index in indices.iter().step_by(2) {
            table.remove(*index);
        }
        for (position, address) in addresses.iter().enumerate() {
            assert_eq!(table.find(*address).is_some(), position % 2 == 1);
        }
        let again = table.insert(addresses[0], data).unwrap();
        assert_eq!(table.find(addresses[0]), Some(again));
        assert_eq!(table.find(0), None);
        assert_eq!(table.find(u64::MAX), None);
    }
}
