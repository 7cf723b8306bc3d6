//! Map storage: hash maps and per-CPU aggregations in one fixed arena.
//!
//! # Design
//!
//! Every map lives in a region of one arena of `AtomicU64` words, carved by a bump
//! pointer when the client defines the map and given back all at once when the
//! session ends (the protocol has no request that deletes one map). A region is one
//! open-addressing table (hash maps) or one table per CPU (aggregations). A table is
//! `buckets` buckets of `1 + key_words + value_words` words: a state word (empty,
//! full, or — hash maps only — deleted), the key zero-padded to whole words, the
//! value. `buckets` is `max_entries * 5 / 4 + 1`, so a table is at most 80 % full,
//! and a probe sequence is linear and never longer than the table.
//!
//! **Hash maps** are shared by all CPUs and guarded by one [`CpuLock`] per map.
//! Probe context spins on it: the holder is another CPU's handler or the session,
//! which holds it only with interrupts off, so the wait is short and bounded.
//!
//! **Aggregations** have one table per CPU. Only the CPU's own handler writes its
//! table (handlers never nest on a CPU), so a fold is a load and a store of the
//! value words, with no lock and no read-modify-write instruction. A new key is
//! written first and published by a release store of the bucket's state; the
//! session reads tables racily but safely (a value word may be one fold behind, a
//! bucket half-inserted is not yet visible). `ClearMap` sets the map's `clearing`
//! flag, waits for quiescence, zeroes the tables and clears the flag; folds that
//! meet the flag are refused and counted as drops, so nothing is lost silently and
//! no CPU writes into memory being zeroed.
//!
//! Map layouts ([`MapLayout`]) are written once at `DefineMap` and published with
//! the slot's `defined` flag, the [`QuiescentCell`] protocol.
//!
//! # Invariants
//!
//! - Every region lies inside the arena; word indices are masked into it anyway,
//!   so no input can make an access panic.
//! - A table never holds more than `max_entries` keys; the bucket count leaves at
//!   least one bucket more than that.
//! - One entry of a `ReadMap` page (key and every CPU's value) always fits a page:
//!   `DefineMap` refuses maps whose entries would not.

use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use probe_port_protocol::maps::{
    AggregateKind, MapId, MapKind, MapShapes, MapSpec, linear_bucket, log2_bucket,
};

use crate::interpreter::Full;
use crate::limits::{MAP_ARENA_BYTES, MAP_ARENA_WORDS, MAX_CPUS, MAX_MAPS, MAX_PAGE_ENTRIES};
use crate::sync::{CpuLock, QuiescentCell};

/// Bucket states.
const EMPTY: u64 = 0;
const FULL: u64 = 1;
const DELETED: u64 = 2;

/// Where a map lives in the arena and what it holds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MapLayout {
    pub(crate) spec: MapSpec,
    /// First arena word of the region.
    base: usize,
    /// Buckets per table.
    buckets: usize,
    key_words: usize,
    value_words: usize,
    /// 1 for a hash map, the CPU count for an aggregation.
    tables: usize,
}

impl MapLayout {
    fn bucket_words(&self) -> usize {
        1 + self.key_words + self.value_words
    }

    /// The first word (the state) of bucket `bucket` of table `table`.
    fn bucket(&self, table: usize, bucket: usize) -> usize {
        self.base + (table * self.buckets + bucket) * self.bucket_words()
    }

    /// Bytes of one `ReadMap` entry: the key and one value per table.
    pub(crate) fn page_entry_len(&self) -> usize {
        usize::from(self.spec.key_size) + usize::from(self.spec.value_size) * self.tables
    }

    /// Cursor just past the last bucket of the last table.
    fn cursor_end(&self) -> usize {
        self.buckets * self.tables
    }
}

/// One slot of the map directory.
struct MapSlot {
    defined: AtomicBool,
    /// The map's number (valid while defined): a lookup compares it before it
    /// copies the layout.
    map: AtomicU32,
    /// Valid while `defined` (a zeroed `MaybeUninit` rather than a placeholder
    /// layout: `MapKind` keeps a niche, so a placeholder would not be all zero
    /// bytes and would move the stub out of `.bss`).
    layout: QuiescentCell<MaybeUninit<MapLayout>>,
    /// Keys held, per table.
    counts: [AtomicU32; MAX_CPUS],
    /// Guards a hash map (aggregations do not use it).
    lock: CpuLock,
    /// Set while `ClearMap` empties an aggregation.
    clearing: AtomicBool,
}

impl MapSlot {
    const fn new() -> Self {
        Self {
            defined: AtomicBool::new(false),
            map: AtomicU32::new(0),
            layout: QuiescentCell::new(MaybeUninit::zeroed()),
            counts: [const { AtomicU32::new(0) }; MAX_CPUS],
            lock: CpuLock::new(),
            clearing: AtomicBool::new(false),
        }
    }
}

/// Why `DefineMap` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DefineError {
    /// A map with that number exists.
    Exists,
    /// [`MAX_MAPS`] maps are defined.
    TooManyMaps,
    /// The arena has no room left (the detail is [`MAP_ARENA_BYTES`]).
    NoMemory,
    /// One entry would not fit a `ReadMap` page (the detail is [`MAX_PAGE_ENTRIES`]).
    EntryTooLarge,
}

/// A page of entries written by [`MapStore::read_page`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) count: u32,
    pub(crate) len: usize,
    pub(crate) next_cursor: Option<u32>,
}

/// Every map of the session.
pub(crate) struct MapStore {
    slots: [MapSlot; MAX_MAPS],
    /// Arena words handed out so far (session only).
    used: AtomicUsize,
    arena: [AtomicU64; MAP_ARENA_WORDS],
}

/// Where a key is, or could go, in a table.
enum Search {
    Found(usize),
    Vacant(usize),
    Exhausted,
}

impl MapStore {
    pub(crate) const fn new() -> Self {
        Self {
            slots: [const { MapSlot::new() }; MAX_MAPS],
            used: AtomicUsize::new(0),
            arena: [const { AtomicU64::new(0) }; MAP_ARENA_WORDS],
        }
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        &self.arena[index % MAP_ARENA_WORDS]
    }

    fn slot(&self, slot: usize) -> &MapSlot {
        &self.slots[slot % MAX_MAPS]
    }

    /// The directory slot and layout of `map`, if defined. Any context.
    pub(crate) fn find(&self, map: MapId) -> Option<(usize, MapLayout)> {
        self.find_published(map)
            .map(|(index, layout)| (index, *layout))
    }

    /// [`MapStore::find`] without copying the layout out: the borrow is valid for
    /// as long as the caller's probe-context run (or session request) lasts, since
    /// a published layout is rewritten only after `reset` unpublishes it and the
    /// session reaches quiescence.
    #[inline(always)]
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn find_published(&self, map: MapId) -> Option<(usize, &MapLayout)> {
        self.slots.iter().enumerate().find_map(|(index, slot)| {
            if !slot.defined.load(Ordering::Acquire)
                || slot.map.load(Ordering::Relaxed) != u32::from(map.0)
            {
                return None;
            }
            // SAFETY: the acquire load above saw the slot published, so `define`
            // initialised its layout; it is rewritten only after `reset`
            // unpublishes it and the session reaches quiescence, which waits for
            // the run (or request) this borrow belongs to.
            let layout = unsafe { slot.layout.get().assume_init_ref() };
            (layout.spec.map == map).then_some((index, layout))
        })
    }

    // ------------------------------------------------------------------------
    // Keys and buckets.

    #[inline(always)]
    fn key_equal(&self, at: usize, key: &[u8]) -> bool {
        // The common key, one word (a CPU, a task, an address, a constant).
        if let Ok(word) = <[u8; 8]>::try_from(key) {
            return self.word(at).load(Ordering::Relaxed) == u64::from_le_bytes(word);
        }
        key.chunks(8)
            .enumerate()
            .all(|(index, chunk)| self.word(at + index).load(Ordering::Relaxed) == pack(chunk))
    }

    fn write_bytes(&self, at: usize, bytes: &[u8]) {
        for (index, chunk) in bytes.chunks(8).enumerate() {
            self.word(at + index).store(pack(chunk), Ordering::Relaxed);
        }
    }

    fn read_bytes(&self, at: usize, out: &mut [u8]) {
        for (index, chunk) in out.chunks_mut(8).enumerate() {
            let word = self.word(at + index).load(Ordering::Relaxed);
            chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
        }
    }

    /// Looks `key` up in table `table`. Deleted buckets are skipped (and the first
    /// one offered as the vacancy); an empty bucket ends the search.
    #[inline(always)]
    #[unsafe(link_section = ".text.probeport")]
    fn search(&self, layout: &MapLayout, table: usize, key: &[u8]) -> Search {
        if layout.buckets == 0 {
            return Search::Exhausted;
        }
        let mut bucket = home_bucket(hash(key), layout.buckets);
        let mut vacancy = None;
        for _ in 0..layout.buckets {
            let at = layout.bucket(table, bucket);
            match self.word(at).load(Ordering::Acquire) {
                EMPTY => return Search::Vacant(vacancy.unwrap_or(bucket)),
                FULL if self.key_equal(at + 1, key) => return Search::Found(bucket),
                DELETED if vacancy.is_none() => vacancy = Some(bucket),
                _ => {}
            }
            bucket += 1;
            if bucket == layout.buckets {
                bucket = 0;
            }
        }
        vacancy.map_or(Search::Exhausted, Search::Vacant)
    }

    /// [`MapStore::search`] out of line, for every caller but the aggregation's
    /// hit path: one copy of the search for them all.
    #[inline(never)]
    #[unsafe(link_section = ".text.probeport")]
    fn search_shared(&self, layout: &MapLayout, table: usize, key: &[u8]) -> Search {
        self.search(layout, table, key)
    }

    // ------------------------------------------------------------------------
    // Hash maps (probe context and session, under the map's lock).

    /// Copies the value of `key` into `value`. Returns whether it was present.
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn lookup(
        &self,
        slot: usize,
        layout: &MapLayout,
        key: &[u8],
        value: &mut [u8],
        cpu: usize,
    ) -> bool {
        let Some(_guard) = self.slot(slot).lock.lock(cpu) else {
            return false;
        };
        match self.search_shared(layout, 0, key) {
            Search::Found(bucket) => {
                let at = layout.bucket(0, bucket) + 1 + layout.key_words;
                self.read_bytes(at, value);
                true
            }
            _ => false,
        }
    }

    /// Inserts or replaces the value of `key`.
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn update(
        &self,
        slot: usize,
        layout: &MapLayout,
        key: &[u8],
        value: &[u8],
        cpu: usize,
    ) -> Result<(), Full> {
        let map = self.slot(slot);
        let Some(_guard) = map.lock.lock(cpu) else {
            return Err(Full);
        };
        let bucket = match self.search_shared(layout, 0, key) {
            Search::Found(bucket) => bucket,
            Search::Vacant(bucket)
                if map.counts[0].load(Ordering::Relaxed) < layout.spec.max_entries =>
            {
                let at = layout.bucket(0, bucket);
                self.write_bytes(at + 1, key);
                map.counts[0].fetch_add(1, Ordering::Relaxed);
                self.word(at).store(FULL, Ordering::Release);
                bucket
            }
            _ => return Err(Full),
        };
        let at = layout.bucket(0, bucket) + 1 + layout.key_words;
        self.write_bytes(at, value);
        Ok(())
    }

    /// Removes `key`. Returns whether it was present.
    pub(crate) fn delete(&self, slot: usize, layout: &MapLayout, key: &[u8], cpu: usize) -> bool {
        let map = self.slot(slot);
        let Some(_guard) = map.lock.lock(cpu) else {
            return false;
        };
        match self.search_shared(layout, 0, key) {
            Search::Found(bucket) => {
                self.word(layout.bucket(0, bucket))
                    .store(DELETED, Ordering::Release);
                map.counts[0].fetch_sub(1, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    // ------------------------------------------------------------------------
    // Aggregations (probe context: the CPU's own table only).

    /// Folds `value` into `cpu`'s entry for `key`.
    #[inline(always)]
    #[unsafe(link_section = ".text.probeport")]
    pub(crate) fn aggregate(
        &self,
        slot: usize,
        layout: &MapLayout,
        key: &[u8],
        value: i64,
        cpu: usize,
    ) -> Result<(), Full> {
        let MapKind::Aggregate(kind) = layout.spec.kind else {
            return Err(Full);
        };
        let map = self.slot(slot);
        if cpu >= layout.tables || map.clearing.load(Ordering::SeqCst) {
            return Err(Full);
        }
        let bucket = match self.search(layout, cpu, key) {
            Search::Found(bucket) => bucket,
            Search::Vacant(bucket)
                if map.counts[cpu].load(Ordering::Relaxed) < layout.spec.max_entries =>
            {
                let at = layout.bucket(cpu, bucket);
                self.write_bytes(at + 1, key);
                for index in 0..layout.value_words {
                    self.word(at + 1 + layout.key_words + index)
                        .store(identity(kind, index), Ordering::Relaxed);
                }
                map.counts[cpu].fetch_add(1, Ordering::Relaxed);
                self.word(at).store(FULL, Ordering::Release);
                bucket
            }
            _ => return Err(Full),
        };
        let at = layout.bucket(cpu, bucket) + 1 + layout.key_words;
        self.fold(kind, at, layout.value_words, value);
        Ok(())
    }

    /// Folds one value into the value words at `at` (single writer).
    #[inline(always)]
    fn fold(&self, kind: AggregateKind, at: usize, words: usize, value: i64) {
        let load = |index: usize| self.word(at + index).load(Ordering::Relaxed);
        let store = |index: usize, word: u64| self.word(at + index).store(word, Ordering::Relaxed);
        let add = |index: usize, amount: u64| store(index, load(index).wrapping_add(amount));
        let lower = |index: usize| {
            if value < load(index) as i64 {
                store(index, value as u64);
            }
        };
        let raise = |index: usize| {
            if value > load(index) as i64 {
                store(index, value as u64);
            }
        };
        match kind {
            AggregateKind::Count => add(0, 1),
            AggregateKind::Sum => add(0, value as u64),
            AggregateKind::Min => lower(0),
            AggregateKind::Max => raise(0),
            AggregateKind::Avg => {
                add(0, 1);
                add(1, value as u64);
            }
            AggregateKind::Stats => {
                add(0, 1);
                add(1, value as u64);
                lower(2);
                raise(3);
            }
            AggregateKind::Log2Hist => add(log2_bucket(value), 1),
            AggregateKind::LinearHist { min, max, step } => {
                let bucket = linear_bucket(value, min, max, step);
                if bucket < words {
                    add(bucket, 1);
                }
            }
        }
    }

    // ------------------------------------------------------------------------
    // Session.

    /// Defines a map with `tables` tables (the CPU count for aggregations).
    /// The caller has validated `spec`.
    pub(crate) fn define(&self, spec: MapSpec, cpu_count: usize) -> Result<(), DefineError> {
        if self.find(spec.map).is_some() {
            return Err(DefineError::Exists);
        }
        let Some(slot) = self
            .slots
            .iter()
            .find(|slot| !slot.defined.load(Ordering::Relaxed))
        else {
            return Err(DefineError::TooManyMaps);
        };
        let tables = if spec.is_aggregate() { cpu_count } else { 1 };
        let mut layout = MapLayout {
            spec,
            base: 0,
            buckets: 0,
            key_words: usize::from(spec.key_size).div_ceil(8),
            value_words: usize::from(spec.value_size).div_ceil(8),
            tables,
        };
        if layout.page_entry_len() > MAX_PAGE_ENTRIES {
            return Err(DefineError::EntryTooLarge);
        }
        let max_entries = u64::from(spec.max_entries);
        let buckets = max_entries + max_entries / 4 + 1;
        let words = buckets
            .saturating_mul(layout.bucket_words() as u64)
            .saturating_mul(tables as u64);
        let used = self.used.load(Ordering::Relaxed);
        if words > (MAP_ARENA_WORDS - used.min(MAP_ARENA_WORDS)) as u64 {
            return Err(DefineError::NoMemory);
        }
        layout.base = used;
        layout.buckets = buckets as usize;
        let words = words as usize;
        for index in used..used + words {
            self.word(index).store(0, Ordering::Relaxed);
        }
        self.used.store(used + words, Ordering::Relaxed);
        for count in &slot.counts {
            count.store(0, Ordering::Relaxed);
        }
        slot.clearing.store(false, Ordering::Relaxed);
        // SAFETY: the slot is unpublished (`defined` false): never published, or
        // unpublished by `reset` at the end of a session, after which the session
        // reached quiescence before any new request.
        unsafe { slot.layout.write(MaybeUninit::new(layout)) };
        slot.map.store(u32::from(spec.map.0), Ordering::Relaxed);
        slot.defined.store(true, Ordering::Release);
        Ok(())
    }

    /// Empties a hash map, under its lock. Returns `false` if `cpu` already holds
    /// the lock (cannot happen from the session).
    pub(crate) fn clear_hash(&self, slot: usize, layout: &MapLayout, cpu: usize) -> bool {
        let map = self.slot(slot);
        let Some(_guard) = map.lock.lock(cpu) else {
            return false;
        };
        self.zero_tables(layout);
        map.counts[0].store(0, Ordering::Relaxed);
        true
    }

    /// First half of clearing an aggregation: refuse new folds. The caller then
    /// waits for quiescence and calls [`MapStore::finish_clear`].
    pub(crate) fn begin_clear(&self, slot: usize) {
        self.slot(slot).clearing.store(true, Ordering::SeqCst);
    }

    /// Second half of clearing an aggregation: zero it and accept folds again.
    pub(crate) fn finish_clear(&self, slot: usize, layout: &MapLayout) {
        let map = self.slot(slot);
        self.zero_tables(layout);
        for count in &map.counts {
            count.store(0, Ordering::Relaxed);
        }
        map.clearing.store(false, Ordering::SeqCst);
    }

    fn zero_tables(&self, layout: &MapLayout) {
        let words = layout.buckets * layout.bucket_words() * layout.tables;
        // States first, so a racing reader sees buckets vanish before their keys.
        for table in 0..layout.tables {
            for bucket in 0..layout.buckets {
                self.word(layout.bucket(table, bucket))
                    .store(EMPTY, Ordering::Release);
            }
        }
        for index in layout.base..layout.base + words {
            self.word(index).store(0, Ordering::Relaxed);
        }
    }

    /// Writes the entries of one page starting at `cursor` into `out`. `None` for
    /// a cursor beyond the map. Hash maps are read under their lock (`None` too if
    /// `cpu` holds it already, which the session never does).
    pub(crate) fn read_page(
        &self,
        slot: usize,
        layout: &MapLayout,
        cursor: u32,
        out: &mut [u8],
        cpu: usize,
    ) -> Option<Page> {
        let cursor = cursor as usize;
        if cursor > layout.cursor_end() {
            return None;
        }
        let entry_len = layout.page_entry_len();
        let key_size = usize::from(layout.spec.key_size);
        let value_size = usize::from(layout.spec.value_size);
        let mut page = Page {
            count: 0,
            len: 0,
            next_cursor: None,
        };
        let mut key = [0u8; probe_port_protocol::maps::MAX_KEY_SIZE as usize];
        let key = &mut key[..key_size];
        match layout.spec.kind {
            MapKind::Hash => {
                let _guard = self.slot(slot).lock.lock(cpu)?;
                for bucket in cursor..layout.buckets {
                    let at = layout.bucket(0, bucket);
                    if self.word(at).load(Ordering::Acquire) != FULL {
                        continue;
                    }
                    let Some(entry) = out.get_mut(page.len..page.len + entry_len) else {
                        page.next_cursor = Some(bucket as u32);
                        break;
                    };
                    let (key_out, value_out) = entry.split_at_mut(key_size);
                    self.read_bytes(at + 1, key_out);
                    self.read_bytes(at + 1 + layout.key_words, value_out);
                    page.count += 1;
                    page.len += entry_len;
                }
            }
            MapKind::Aggregate(kind) => {
                for position in cursor..layout.cursor_end() {
                    let (table, bucket) = (position / layout.buckets, position % layout.buckets);
                    let at = layout.bucket(table, bucket);
                    if self.word(at).load(Ordering::Acquire) != FULL {
                        continue;
                    }
                    self.read_bytes(at + 1, key);
                    // The entry was written at the first table that holds the key.
                    let earlier = (0..table).any(|other| {
                        matches!(self.search_shared(layout, other, key), Search::Found(_))
                    });
                    if earlier {
                        continue;
                    }
                    let Some(entry) = out.get_mut(page.len..page.len + entry_len) else {
                        page.next_cursor = Some(position as u32);
                        break;
                    };
                    let (key_out, values) = entry.split_at_mut(key_size);
                    key_out.copy_from_slice(key);
                    for (table, value_out) in values.chunks_mut(value_size.max(1)).enumerate() {
                        match self.search_shared(layout, table, key) {
                            Search::Found(bucket) => {
                                let at = layout.bucket(table, bucket) + 1 + layout.key_words;
                                self.read_bytes(at, value_out);
                            }
                            _ => {
                                for (index, chunk) in value_out.chunks_mut(8).enumerate() {
                                    let word = identity(kind, index).to_le_bytes();
                                    chunk.copy_from_slice(&word[..chunk.len()]);
                                }
                            }
                        }
                    }
                    page.count += 1;
                    page.len += entry_len;
                }
            }
        }
        Some(page)
    }

    /// Forgets every map. Only once no probe can run a program that uses them
    /// (every probe disarmed and quiescence reached); the caller waits for
    /// quiescence again before any new definition reuses a slot.
    pub(crate) fn reset(&self) {
        for slot in &self.slots {
            slot.defined.store(false, Ordering::SeqCst);
        }
        self.used.store(0, Ordering::Relaxed);
    }

    /// Bytes of the arena in use.
    #[cfg(test)]
    fn used_bytes(&self) -> usize {
        self.used.load(Ordering::Relaxed) * 8
    }
}

/// The maps defined so far, as the verifier needs them.
impl MapShapes for MapStore {
    fn spec(&self, map: MapId) -> Option<MapSpec> {
        self.find(map).map(|(_, layout)| layout.spec)
    }
}

/// The value word `index` of an aggregation no value has reached yet.
const fn identity(kind: AggregateKind, index: usize) -> u64 {
    match (kind, index) {
        (AggregateKind::Min, 0) | (AggregateKind::Stats, 2) => i64::MAX as u64,
        (AggregateKind::Max, 0) | (AggregateKind::Stats, 3) => i64::MIN as u64,
        _ => 0,
    }
}

/// Up to 8 bytes as a little-endian word, zero-padded.
fn pack(chunk: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let len = chunk.len().min(8);
    bytes[..len].copy_from_slice(&chunk[..len]);
    u64::from_le_bytes(bytes)
}

/// A cheap, well-mixed hash of a key (FNV-style over words, then a final mix).
#[inline(always)]
fn hash(key: &[u8]) -> u64 {
    const SEED: u64 = 0xcbf2_9ce4_8422_2325;
    let step = |state: u64, word: u64| {
        let state = (state ^ word).wrapping_mul(0x0000_0100_0000_01b3);
        state ^ (state >> 29)
    };
    // One-word keys (the common case) skip the chunking; the result is the same.
    let state = match <[u8; 8]>::try_from(key) {
        Ok(word) => step(SEED, u64::from_le_bytes(word)),
        Err(_) => key
            .chunks(8)
            .fold(SEED, |state, chunk| step(state, pack(chunk))),
    };
    let state = state.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    state ^ (state >> 32)
}

/// The bucket a key with hash `hash` starts its search at, in `0..buckets`: the
/// high half of `hash * buckets` (the hash's high bits are as well mixed as its
/// low ones), one multiplication instead of a division.
#[inline]
fn home_bucket(hash: u64, buckets: usize) -> usize {
    ((u128::from(hash) * buckets as u128) >> 64) as usize
}

/// The announced map memory, for `Limits`.
pub(crate) const MAP_MEMORY: u64 = MAP_ARENA_BYTES as u64;

#[cfg(test)]
mod tests {
    use super::*;

    /// A store of its own for each test, in a static (2 MiB would not fit the
    /// stack of a test thread on its way to the heap).
    macro_rules! store {
        () => {{
            static MAPS: MapStore = MapStore::new();
            &MAPS
        }};
    }

    fn spec(map: u16, kind: MapKind, key_size: u16, value_size: u16, max_entries: u32) -> MapSpec {
        MapSpec {
            map: MapId(map),
            kind,
            key_size,
            value_size,
            max_entries,
        }
    }

    #[test]
    fn hash_maps_insert_replace_delete_and_fill_up() {
        let maps = store!();
        maps.define(spec(1, MapKind::Hash, 3, 5, 2), 2).unwrap();
        let (slot, layout) = maps.find(MapId(1)).unwrap();
        let mut value = [0u8; 5];
        assert!(!maps.lookup(slot, &layout, b"abc", &mut value, 0));
        maps.update(slot, &layout, b"abc", b"12345", 0).unwrap();
        maps.update(slot, &layout, b"abc", b"67890", 1).unwrap();
        maps.update(slot, &layout, b"xyz", b"aaaaa", 0).unwrap();
        assert_eq!(maps.update(slot, &layout, b"new", b"bbbbb", 0), Err(Full));
        assert!(maps.lookup(slot, &layout, b"abc", &mut value, 0));
        assert_eq!(&value, b"67890");
        assert!(maps.delete(slot, &layout, b"abc", 0));
        assert!(!maps.delete(slot, &layout, b"abc", 0));
        maps.update(slot, &layout, b"new", b"bbbbb", 0).unwrap();
        let mut out = [0u8; 64];
        let page = maps.read_page(slot, &layout, 0, &mut out, 0).unwrap();
        assert_eq!(page.count, 2);
        assert_eq!(page.len, 16);
        assert_eq!(page.next_cursor, None);
        assert!(maps.read_page(slot, &layout, 10_000, &mut out, 0).is_none());
    }

    #[test]
    fn definitions_are_bounded() {
        let maps = store!();
        let big = spec(1, MapKind::Hash, 256, 512, 100_000);
        assert_eq!(maps.define(big, 1), Err(DefineError::NoMemory));
        assert_eq!(maps.used_bytes(), 0);
        let small = spec(2, MapKind::Hash, 8, 8, 4);
        maps.define(small, 1).unwrap();
        assert_eq!(maps.define(small, 1), Err(DefineError::Exists));
        let hist = MapKind::Aggregate(AggregateKind::LinearHist {
            min: 0,
            max: 1024,
            step: 1,
        });
        assert_eq!(
            maps.define(spec(3, hist, 8, 1026 * 8, 4), 8),
            Err(DefineError::EntryTooLarge)
        );
    }

    #[test]
    fn aggregations_fold_per_cpu() {
        let maps = store!();
        let stats = MapKind::Aggregate(AggregateKind::Stats);
        maps.define(spec(4, stats, 8, 32, 8), 2).unwrap();
        let (slot, layout) = maps.find(MapId(4)).unwrap();
        maps.aggregate(slot, &layout, &[1; 8], 5, 0).unwrap();
        maps.aggregate(slot, &layout, &[1; 8], -3, 0).unwrap();
        maps.aggregate(slot, &layout, &[2; 8], 7, 1).unwrap();
        let mut out = [0u8; 256];
        let page = maps.read_page(slot, &layout, 0, &mut out, 0).unwrap();
        assert_eq!(page.count, 2);
        let words: Vec<u64> = out[..page.len]
            .chunks(8)
            .map(|chunk| u64::from_le_bytes(chunk.try_into().unwrap()))
            .collect();
        // Each entry: key word, then 4 words for CPU 0 and 4 for CPU 1.
        let key1 = u64::from_le_bytes([1; 8]);
        let entry = words.chunks(9).find(|entry| entry[0] == key1).unwrap();
        assert_eq!(entry[1..5], [2, 2, -3i64 as u64, 5]);
        assert_eq!(entry[5..9], [0, 0, i64::MAX as u64, i64::MIN as u64]);
    }
}
