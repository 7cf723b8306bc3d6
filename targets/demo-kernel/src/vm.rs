//! Simulated address spaces and the page-fault path that fills them.
//!
//! # Design
//!
//! The kernel runs everything in one identity-mapped address space, but a traced
//! kernel should have a page-fault path, so each workload client owns a [`VmMap`]: a
//! region of simulated virtual addresses (`base .. base + pages * 4 KiB`) described
//! by a two-level table — a directory of [`DIRECTORY_ENTRIES`] pointers to page tables
//! of [`TABLE_ENTRIES`] entries, allocated on demand from the kernel heap. An entry
//! holds a frame address and x86-like flag bits (present, writable, accessed, dirty).
//!
//! - [`access`] is the MMU: it walks the table and, when the entry is absent or does
//!   not allow the access, calls [`fault`], then performs the load or store on the
//!   frame (real kernel memory, taken from the heap).
//! - [`fault`] checks the region and its protection, walks (and grows) the table, and
//!   resolves the fault: a **major** fault allocates and zeroes a frame on the first
//!   touch of a page; a **minor** fault finds the frame still resident (the entry only
//!   lost its present bit) and maps it again.
//! - [`age`] is the page-out scan: it clears every present bit and keeps the frames,
//!   so the next touch of each page is a minor fault.
//!
//! Frames and tables go back to the heap when the map is dropped. Everything here is
//! plain code and runs in host unit tests.
//!
//! # Invariants
//!
//! - An entry with a frame keeps it until the map is dropped; only the present,
//!   accessed and dirty bits change.
//! - `fault` is a real call with a stable signature (`#[inline(never)]`), so a probe can
//!   name it and DWARF describes its parameters.

use alloc::alloc::{alloc_zeroed, dealloc};
use alloc::boxed::Box;
use core::alloc::Layout;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::marker::trace_marker;

/// Size of a page.
pub(crate) const PAGE_SIZE: u64 = 4096;
/// Entries in one page table.
pub(crate) const TABLE_ENTRIES: usize = 8;
/// Page tables one map can have.
pub(crate) const DIRECTORY_ENTRIES: usize = 8;
/// The most pages a map can describe.
pub(crate) const MAX_PAGES: u32 = (TABLE_ENTRIES * DIRECTORY_ENTRIES) as u32;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const FRAME_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Minor faults resolved by every map since boot.
pub(crate) static MINOR_FAULTS: AtomicU64 = AtomicU64::new(0);
/// Major faults resolved by every map since boot.
pub(crate) static MAJOR_FAULTS: AtomicU64 = AtomicU64::new(0);

/// The kind of memory access.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read = 0,
    Write = 1,
}

impl Access {
    /// The access with this number (the syscall-like interface passes numbers).
    pub(crate) fn from_number(number: u64) -> Option<Access> {
        match number {
            0 => Some(Access::Read),
            1 => Some(Access::Write),
            _ => None,
        }
    }
}

/// Why a fault could not be resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum FaultError {
    /// The address is outside the map's region.
    Unmapped { address: u64 },
    /// The region does not allow this access (a write to a read-only region).
    Protection { address: u64 },
    /// The heap could not provide a frame or a page table.
    OutOfMemory,
}

impl fmt::Display for FaultError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultError::Unmapped { address } => write!(formatter, "{address:#x} is not mapped"),
            FaultError::Protection { address } => {
                write!(formatter, "{address:#x}: access not allowed")
            }
            FaultError::OutOfMemory => formatter.write_str("out of memory for a page"),
        }
    }
}

/// A page frame: the address of 4 KiB of kernel memory (identity-mapped, so this is
/// its physical address too).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageFrame(pub(crate) u64);

/// One level-2 table.
#[repr(C, align(64))]
struct PageTable {
    entries: [u64; TABLE_ENTRIES],
}

/// A simulated address space (see the module docs).
#[repr(C)]
pub(crate) struct VmMap {
    /// First address of the region.
    pub(crate) base: u64,
    /// Length of the region in pages.
    pub(crate) pages: u32,
    /// Whether the region may be written.
    pub(crate) writable: bool,
    /// Thread id of the owner (for reports).
    pub(crate) owner: u32,
    /// Minor faults resolved in this map.
    pub(crate) minor_faults: u64,
    /// Major faults resolved in this map.
    pub(crate) major_faults: u64,
    /// Pages with a frame.
    pub(crate) resident_pages: u32,
    directory: [Option<Box<PageTable>>; DIRECTORY_ENTRIES],
}

fn frame_layout() -> Layout {
    Layout::from_size_align(PAGE_SIZE as usize, PAGE_SIZE as usize).expect("a page is a layout")
}

impl VmMap {
    /// An empty map of `pages` pages at `base` (page-aligned, at most [`MAX_PAGES`]).
    pub(crate) fn new(base: u64, pages: u32, writable: bool, owner: u32) -> VmMap {
        assert!(
            base.is_multiple_of(PAGE_SIZE),
            "region base not page-aligned"
        );
        assert!(pages <= MAX_PAGES, "region larger than a map can describe");
        VmMap {
            base,
            pages,
            writable,
            owner,
            minor_faults: 0,
            major_faults: 0,
            resident_pages: 0,
            directory: [const { None }; DIRECTORY_ENTRIES],
        }
    }

    /// The page index of `address` inside the region.
    fn page_index(&self, address: u64) -> Option<usize> {
        let offset = address.checked_sub(self.base)?;
        let page = offset / PAGE_SIZE;
        (page < u64::from(self.pages)).then_some(page as usize)
    }

    /// The entry of page `page`, if its table exists.
    fn entry(&self, page: usize) -> Option<u64> {
        let table = self.directory[page / TABLE_ENTRIES].as_ref()?;
        Some(table.entries[page % TABLE_ENTRIES])
    }

    /// The entry of page `page`, creating its table.
    fn entry_mut(&mut self, page: usize) -> Result<&mut u64, FaultError> {
        let slot = &mut self.directory[page / TABLE_ENTRIES];
        if slot.is_none() {
            // A table is 64 bytes; running out of heap for one is a kernel bug worth
            // a panic (the allocation error handler), unlike running out of frames.
            *slot = Some(Box::new(PageTable {
                entries: [0; TABLE_ENTRIES],
            }));
        }
        let table = slot.as_mut().expect("created above");
        Ok(&mut table.entries[page % TABLE_ENTRIES])
    }
}

impl Drop for VmMap {
    fn drop(&mut self) {
        for table in self.directory.iter().flatten() {
            for &entry in &table.entries {
                let frame = entry & FRAME_MASK;
                if frame != 0 {
                    // SAFETY: every frame in an entry was allocated by `fault` with
                    // `frame_layout()` and is freed once, here, with the map.
                    unsafe { dealloc(frame as *mut u8, frame_layout()) };
                }
            }
        }
    }
}

/// Whether an entry lets `access` through without a fault.
fn allows(entry: u64, access: Access) -> bool {
    entry & PRESENT != 0 && (access == Access::Read || entry & WRITABLE != 0)
}

/// Resolves a fault on `address` in `map` for `access`: maps the page, allocating a
/// zeroed frame on the first touch (major) or re-mapping the resident frame (minor).
#[inline(never)]
pub(crate) fn fault(
    map: &mut VmMap,
    address: u64,
    access: Access,
) -> Result<PageFrame, FaultError> {
    let page = map
        .page_index(address)
        .ok_or(FaultError::Unmapped { address })?;
    if access == Access::Write && !map.writable {
        return Err(FaultError::Protection { address });
    }
    let writable = if map.writable { WRITABLE } else { 0 };
    let entry = map.entry_mut(page)?;
    let resident = *entry & FRAME_MASK;
    let major = resident == 0;
    let frame = if major {
        // SAFETY: the layout has a non-zero size.
        let frame = unsafe { alloc_zeroed(frame_layout()) } as u64;
        if frame == 0 {
            return Err(FaultError::OutOfMemory);
        }
        frame
    } else {
        resident
    };
    let dirty = if access == Access::Write { DIRTY } else { 0 };
    *entry = frame | PRESENT | ACCESSED | writable | dirty | (*entry & DIRTY);
    if major {
        map.major_faults += 1;
        map.resident_pages += 1;
        MAJOR_FAULTS.fetch_add(1, Ordering::Relaxed);
    } else {
        map.minor_faults += 1;
        MINOR_FAULTS.fetch_add(1, Ordering::Relaxed);
    }
    trace_marker!(
        "vm:fault",
        address: U64 = address,
        write: Bool = access == Access::Write,
        major: Bool = major
    );
    Ok(PageFrame(frame))
}

/// The MMU: performs `access` at `address` (a store of `value`, or a load), faulting
/// the page in when needed. Returns the value stored or loaded. Addresses are used
/// 8-byte aligned (the low three bits are ignored).
#[inline(never)]
pub(crate) fn access(
    map: &mut VmMap,
    address: u64,
    access: Access,
    value: u64,
) -> Result<u64, FaultError> {
    let page = map
        .page_index(address)
        .ok_or(FaultError::Unmapped { address })?;
    let frame = match map.entry(page) {
        Some(entry) if allows(entry, access) => {
            let touched = ACCESSED | if access == Access::Write { DIRTY } else { 0 };
            *map.entry_mut(page)? |= touched;
            entry & FRAME_MASK
        }
        _ => fault(map, address, access)?.0,
    };
    let word = (frame + (address % PAGE_SIZE)) & !7;
    // SAFETY: `word` is an aligned u64 inside a 4 KiB frame this map owns (allocated
    // by `fault`, freed only when the map drops); nothing else refers to the frame.
    unsafe {
        match access {
            Access::Write => {
                (word as *mut u64).write(value);
                Ok(value)
            }
            Access::Read => Ok((word as *const u64).read()),
        }
    }
}

/// The page-out scan: clears the present bit of every entry, keeping the frames.
/// Returns how many pages were unmapped. Never inlined: a probe point (the
/// language's docs and tests use it).
#[inline(never)]
pub(crate) fn age(map: &mut VmMap) -> u32 {
    let mut unmapped = 0;
    for table in map.directory.iter_mut().flatten() {
        for entry in &mut table.entries {
            if *entry & PRESENT != 0 {
                *entry &= !(PRESENT | ACCESSED);
                unmapped += 1;
            }
        }
    }
    unmapped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload_plan::{self, PAGES_PER_CLIENT};

    const BASE: u64 = 0x4000_0000;

    #[test]
    fn first_touch_is_major_and_a_touch_after_aging_is_minor() {
        let mut map = VmMap::new(BASE, 4, true, 7);
        assert_eq!(access(&mut map, BASE + 8, Access::Write, 42), Ok(42));
        assert_eq!((map.major_faults, map.minor_faults), (1, 0));
        // Present and writable now: no fault, and the value is there.
        assert_eq!(access(&mut map, BASE + 8, Access::Read, 0), Ok(42));
        assert_eq!((map.major_faults, map.minor_faults), (1, 0));
        assert_eq!(age(&mut map), 1);
        // The frame stayed resident: a minor fault, and the data survived.
        assert_eq!(access(&mut map, BASE + 8, Access::Read, 0), Ok(42));
        assert_eq!((map.major_faults, map.minor_faults), (1, 1));
        assert_eq!(map.resident_pages, 1);
    }

    #[test]
    fn new_frames_are_zeroed_and_pages_are_distinct() {
        let mut map = VmMap::new(BASE, MAX_PAGES, true, 7);
        for page in 0..u64::from(MAX_PAGES) {
            assert_eq!(
                access(&mut map, BASE + page * PAGE_SIZE + 16, Access::Read, 0),
                Ok(0)
            );
            access(&mut map, BASE + page * PAGE_SIZE + 16, Access::Write, page).unwrap();
        }
        for page in 0..u64::from(MAX_PAGES) {
            assert_eq!(
                access(&mut map, BASE + page * PAGE_SIZE + 16, Access::Read, 0),
                Ok(page)
            );
        }
        assert_eq!(map.major_faults, u64::from(MAX_PAGES));
        assert_eq!(map.resident_pages, MAX_PAGES);
    }

    #[test]
    fn errors_for_unmapped_addresses_and_read_only_regions() {
        let mut map = VmMap::new(BASE, 2, false, 7);
        assert_eq!(
            fault(&mut map, BASE - 1, Access::Read),
            Err(FaultError::Unmapped { address: BASE - 1 })
        );
        assert_eq!(
            access(&mut map, BASE + 2 * PAGE_SIZE, Access::Read, 0),
            Err(FaultError::Unmapped {
                address: BASE + 2 * PAGE_SIZE
            })
        );
        assert_eq!(
            access(&mut map, BASE, Access::Write, 1),
            Err(FaultError::Protection { address: BASE })
        );
        // Reading a read-only region works (and faults the page in).
        assert_eq!(access(&mut map, BASE, Access::Read, 0), Ok(0));
        assert_eq!(map.major_faults, 1);
    }

    /// Runs one client's touch pattern exactly as the workload does.
    fn client_pattern(rounds: u32) -> (u64, u64) {
        let mut map = VmMap::new(workload_plan::CLIENT_VM_BASE, PAGES_PER_CLIENT, true, 1);
        for round in 0..rounds {
            let address = workload_plan::touch_address(round);
            access(&mut map, address, Access::Write, u64::from(round)).unwrap();
            if workload_plan::ages_after(round) {
                age(&mut map);
            }
        }
        (map.minor_faults, map.major_faults)
    }

    #[test]
    fn the_workload_pattern_matches_the_plan_formula() {
        for rounds in [1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 49, 64, 100, 1000] {
            let (minor, major) = client_pattern(rounds);
            let expected = workload_plan::expected_faults_per_client(rounds);
            assert_eq!(
                (minor, major),
                (expected.minor, expected.major),
                "{rounds} rounds"
            );
        }
    }
}
