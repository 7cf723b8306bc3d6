//! The kernel heap: a first-fit free-list allocator over a static 4 MiB arena.
//!
//! # Design
//!
//! The `alloc` crate has to exist in the kernel because the probe stub's x86 decoder
//! (iced-x86) is built on it; the kernel uses the heap too, for the page tables and
//! page frames of the simulated address spaces (`vm.rs`). Nothing needs more than a
//! simple allocator:
//!
//! - [`FreeList`] keeps the free blocks in a singly linked list sorted by address;
//!   each free block stores its size and the next block in its own first 16 bytes.
//!   Allocation takes the first block that can hold the request at the requested
//!   alignment and gives the unused head and tail back to the list; freeing inserts
//!   the block in address order and merges it with free neighbours, so a heap whose
//!   allocations were all freed is one block again. Sizes and addresses are kept in
//!   multiples of [`UNIT`] (16 bytes), so every split-off piece can hold a block
//!   header and there are no unusable slivers.
//! - [`KernelHeap`] is the `#[global_allocator]`: the list behind the kernel's spin
//!   lock, which disables interrupts while held, so an interrupt handler can never
//!   spin on the heap lock its own CPU holds. It adopts the arena on first use.
//!
//! The list logic is plain code over an address range and is unit-tested on the host.
//!
//! # Invariants
//!
//! - Probe context (the #BP/#DB path, the stub's handlers) never allocates: it must not
//!   take locks its CPU may already hold, and the heap lock is one. The stub allocates
//!   at initialisation and in the session thread only.
//! - Free blocks are sorted by address, never overlap, never touch (touching blocks
//!   are merged), and lie inside the arena.

use core::alloc::Layout;
use core::ptr;

/// Allocation granularity and minimum alignment (also the size of a block header).
pub(crate) const UNIT: usize = 16;

/// Size of the kernel's heap arena.
pub(crate) const ARENA_SIZE: usize = 4 * 1024 * 1024;

/// A free block's header, stored in the block itself.
#[repr(C)]
struct FreeBlock {
    /// Size of the block in bytes, a multiple of [`UNIT`].
    size: usize,
    /// The next free block (higher address), or null.
    next: *mut FreeBlock,
}

const _: () = assert!(core::mem::size_of::<FreeBlock>() <= UNIT);

/// Heap usage figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeapStats {
    /// Bytes the heap manages.
    pub(crate) capacity: usize,
    /// Bytes handed out and not yet freed (rounded up to [`UNIT`]).
    pub(crate) in_use: usize,
    /// The largest `in_use` seen.
    pub(crate) peak: usize,
    /// Successful allocations since the start.
    pub(crate) allocations: u64,
    /// Frees since the start.
    pub(crate) frees: u64,
    /// Allocations refused for lack of a large enough block.
    pub(crate) failures: u64,
}

/// A first-fit free-list allocator over one address range (see the module docs).
pub(crate) struct FreeList {
    head: *mut FreeBlock,
    start: usize,
    end: usize,
    stats: HeapStats,
}

// SAFETY: the list owns its address range exclusively (see `FreeList::init`), so it
// may move to another CPU together with everything it points to.
unsafe impl Send for FreeList {}

fn round_up(value: usize, multiple: usize) -> Option<usize> {
    value
        .checked_add(multiple - 1)
        .map(|sum| sum & !(multiple - 1))
}

impl FreeList {
    /// A list managing nothing; every allocation fails until [`FreeList::init`].
    pub(crate) const fn empty() -> Self {
        Self {
            head: ptr::null_mut(),
            start: 0,
            end: 0,
            stats: HeapStats {
                capacity: 0,
                in_use: 0,
                peak: 0,
                allocations: 0,
                frees: 0,
                failures: 0,
            },
        }
    }

    /// Whether [`FreeList::init`] ran.
    pub(crate) fn is_initialised(&self) -> bool {
        self.end != 0
    }

    /// Hands the range `start..start + size` to the list.
    ///
    /// # Safety
    ///
    /// The range must be valid, writable memory that nothing else uses for as long as
    /// the list (or anything allocated from it) lives; `start` must be a multiple of
    /// [`UNIT`]; the list must not be initialised yet.
    pub(crate) unsafe fn init(&mut self, start: usize, size: usize) {
        assert!(!self.is_initialised(), "heap initialised twice");
        assert!(
            start.is_multiple_of(UNIT) && start != 0,
            "heap arena misaligned or null"
        );
        let size = size & !(UNIT - 1);
        assert!(size >= UNIT, "heap arena too small");
        let block = start as *mut FreeBlock;
        // SAFETY: the caller hands over `start..start + size`, aligned to UNIT.
        unsafe {
            block.write(FreeBlock {
                size,
                next: ptr::null_mut(),
            })
        };
        self.head = block;
        self.start = start;
        self.end = start + size;
        self.stats.capacity = size;
    }

    /// The usage figures.
    pub(crate) fn stats(&self) -> HeapStats {
        self.stats
    }

    /// Allocates `layout`; null when no free block can hold it.
    pub(crate) fn allocate(&mut self, layout: Layout) -> *mut u8 {
        let align = layout.align().max(UNIT);
        let Some(size) = round_up(layout.size().max(1), UNIT) else {
            self.stats.failures += 1;
            return ptr::null_mut();
        };
        let mut link: *mut *mut FreeBlock = &raw mut self.head;
        // SAFETY: every pointer followed is the head or a `next` field of a block in
        // the list, which lies in the arena the list owns (module invariant).
        unsafe {
            while !(*link).is_null() {
                let block = *link;
                let block_start = block as usize;
                let block_end = block_start + (*block).size;
                if let Some(aligned) = round_up(block_start, align)
                    && let Some(allocation_end) = aligned.checked_add(size)
                    && allocation_end <= block_end
                {
                    let front = aligned - block_start;
                    let back = block_end - allocation_end;
                    let mut rest = (*block).next;
                    if back > 0 {
                        let tail = allocation_end as *mut FreeBlock;
                        tail.write(FreeBlock {
                            size: back,
                            next: rest,
                        });
                        rest = tail;
                    }
                    if front > 0 {
                        (*block).size = front;
                        (*block).next = rest;
                    } else {
                        *link = rest;
                    }
                    self.stats.allocations += 1;
                    self.stats.in_use += size;
                    self.stats.peak = self.stats.peak.max(self.stats.in_use);
                    return aligned as *mut u8;
                }
                link = &raw mut (*block).next;
            }
        }
        self.stats.failures += 1;
        ptr::null_mut()
    }

    /// Gives an allocation back, merging it with free neighbours.
    ///
    /// # Safety
    ///
    /// `pointer` must come from [`FreeList::allocate`] on this list with the same
    /// `layout`, and must not be used afterwards.
    pub(crate) unsafe fn deallocate(&mut self, pointer: *mut u8, layout: Layout) {
        let start = pointer as usize;
        let size = round_up(layout.size().max(1), UNIT).expect("size was allocated before");
        assert!(
            start >= self.start && start + size <= self.end && start.is_multiple_of(UNIT),
            "heap: freeing {start:#x} (+{size}), which is not in the arena"
        );
        let mut previous: *mut FreeBlock = ptr::null_mut();
        let mut next = self.head;
        // SAFETY: as in `allocate`, every block followed is in the arena; the freed
        // range belongs to the caller's allocation (contract above), which the checks
        // below keep from overlapping any free block.
        unsafe {
            while !next.is_null() && (next as usize) < start {
                previous = next;
                next = (*next).next;
            }
            assert!(
                previous.is_null() || previous as usize + (*previous).size <= start,
                "heap: freeing {start:#x}, which overlaps a free block (double free?)"
            );
            assert!(
                next.is_null() || start + size <= next as usize,
                "heap: freeing {start:#x} (+{size}), which overlaps a free block (double free?)"
            );
            let block = start as *mut FreeBlock;
            block.write(FreeBlock { size, next });
            if !next.is_null() && start + size == next as usize {
                (*block).size += (*next).size;
                (*block).next = (*next).next;
            }
            if previous.is_null() {
                self.head = block;
            } else if previous as usize + (*previous).size == start {
                (*previous).size += (*block).size;
                (*previous).next = (*block).next;
            } else {
                (*previous).next = block;
            }
        }
        self.stats.frees += 1;
        self.stats.in_use -= size;
    }

    /// The free blocks as `(address, size)`, in list order (for tests and checks).
    #[cfg(test)]
    fn free_blocks(&self) -> Vec<(usize, usize)> {
        let mut blocks = Vec::new();
        let mut block = self.head;
        while !block.is_null() {
            // SAFETY: blocks of the list are in the arena (module invariant).
            unsafe {
                blocks.push((block as usize, (*block).size));
                block = (*block).next;
            }
        }
        blocks
    }
}

#[cfg(target_os = "none")]
pub(crate) use global::stats;

#[cfg(target_os = "none")]
mod global {
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::UnsafeCell;

    use super::{ARENA_SIZE, FreeList, HeapStats};
    use crate::sync::SpinLock;

    /// The arena, a zero-initialised static (it lands in `.bss`).
    #[repr(C, align(4096))]
    struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);

    // SAFETY: the arena is only ever touched through the heap's free list, behind its
    // lock, and through the allocations it hands out (owned by their users).
    unsafe impl Sync for Arena {}

    static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_SIZE]));

    /// The kernel's global allocator (see the module docs).
    pub(crate) struct KernelHeap {
        list: SpinLock<FreeList>,
    }

    impl KernelHeap {
        pub(crate) const fn new() -> Self {
            Self {
                list: SpinLock::new(FreeList::empty()),
            }
        }

        fn with_list<R>(&self, f: impl FnOnce(&mut FreeList) -> R) -> R {
            let mut list = self.list.lock();
            if !list.is_initialised() {
                // SAFETY: the arena is a static used by nothing but this list, which
                // adopts it exactly once (under the lock); it is 4 KiB aligned.
                unsafe { list.init(ARENA.0.get() as usize, ARENA_SIZE) };
            }
            f(&mut list)
        }
    }

    // SAFETY: `FreeList` hands out disjoint, suitably aligned blocks of at least the
    // requested size from memory it owns, and the lock serialises every CPU.
    unsafe impl GlobalAlloc for KernelHeap {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.with_list(|list| list.allocate(layout))
        }

        unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
            // SAFETY: GlobalAlloc's contract: `pointer` came from `alloc` with `layout`.
            self.with_list(|list| unsafe { list.deallocate(pointer, layout) });
        }
    }

    #[global_allocator]
    static HEAP: KernelHeap = KernelHeap::new();

    /// The heap's usage figures.
    pub(crate) fn stats() -> HeapStats {
        HEAP.with_list(|list| list.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list over a fresh, 4 KiB aligned host buffer (leaked: tests are short).
    fn heap(size: usize) -> FreeList {
        let layout = Layout::from_size_align(size, 4096).unwrap();
        // SAFETY: a non-zero size.
        let memory = unsafe { std::alloc::alloc(layout) };
        assert!(!memory.is_null());
        let mut list = FreeList::empty();
        // SAFETY: the buffer is fresh, aligned and owned by the list from here on.
        unsafe { list.init(memory as usize, size) };
        list
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn allocations_are_aligned_disjoint_and_freeing_them_all_restores_one_block() {
        let mut list = heap(64 * 1024);
        let start = list.start;
        let requests = [
            (1, 1),
            (24, 8),
            (4096, 4096),
            (100, 32),
            (16, 16),
            (3000, 64),
        ];
        let mut taken: Vec<(usize, Layout)> = Vec::new();
        for (size, align) in requests {
            let layout = layout(size, align);
            let pointer = list.allocate(layout) as usize;
            assert_ne!(pointer, 0, "allocating {layout:?}");
            assert_eq!(pointer % align.max(UNIT), 0);
            for &(other, other_layout) in &taken {
                let disjoint = pointer + size <= other || other + other_layout.size() <= pointer;
                assert!(disjoint, "{pointer:#x} overlaps {other:#x}");
            }
            taken.push((pointer, layout));
        }
        assert_eq!(list.stats().allocations, requests.len() as u64);
        // Free in an order that exercises merging on both sides.
        for index in [2, 0, 4, 1, 5, 3] {
            let (pointer, layout) = taken[index];
            // SAFETY: allocated above with this layout, freed once.
            unsafe { list.deallocate(pointer as *mut u8, layout) };
        }
        assert_eq!(list.free_blocks(), [(start, 64 * 1024)]);
        assert_eq!(list.stats().in_use, 0);
        assert_eq!(list.stats().frees, requests.len() as u64);
    }

    #[test]
    fn exhaustion_returns_null_and_is_counted() {
        let mut list = heap(8192);
        let first = list.allocate(layout(4096, 16));
        let second = list.allocate(layout(4096, 16));
        assert!(!first.is_null() && !second.is_null());
        assert!(list.allocate(layout(16, 16)).is_null());
        assert_eq!(list.stats().failures, 1);
        assert_eq!(list.stats().peak, 8192);
        // SAFETY: allocated above with this layout.
        unsafe { list.deallocate(first, layout(4096, 16)) };
        assert!(!list.allocate(layout(4000, 16)).is_null());
    }

    #[test]
    fn alignment_padding_stays_usable() {
        let mut list = heap(16 * 1024);
        let small = list.allocate(layout(16, 16)) as usize;
        let page = list.allocate(layout(4096, 4096)) as usize;
        assert_eq!(page % 4096, 0);
        // The gap between `small` and `page` went back to the list and is reused.
        let filler = list.allocate(layout(1024, 16)) as usize;
        assert!(
            filler > small && filler < page,
            "{small:#x} {filler:#x} {page:#x}"
        );
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut list = heap(8192);
        let pointer = list.allocate(layout(64, 16));
        // SAFETY: deliberately wrong (the second free), which the list must refuse.
        unsafe {
            list.deallocate(pointer, layout(64, 16));
            list.deallocate(pointer, layout(64, 16));
        }
    }

    #[test]
    fn random_workload_never_overlaps_and_coalesces_fully() {
        let size = 256 * 1024;
        let mut list = heap(size);
        let start = list.start;
        let mut live: Vec<(usize, Layout)> = Vec::new();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5000 {
            if live.len() < 64 && next() % 3 != 0 {
                let layout = layout(1 + (next() % 3000) as usize, 1 << (next() % 13));
                let pointer = list.allocate(layout) as usize;
                if pointer == 0 {
                    continue;
                }
                assert_eq!(pointer % layout.align(), 0);
                assert!(
                    live.iter()
                        .all(|&(other, other_layout)| pointer + layout.size() <= other
                            || other + other_layout.size() <= pointer)
                );
                live.push((pointer, layout));
            } else if !live.is_empty() {
                let (pointer, layout) = live.swap_remove((next() % live.len() as u64) as usize);
                // SAFETY: allocated by this list with this layout, freed once.
                unsafe { list.deallocate(pointer as *mut u8, layout) };
            }
            let blocks = list.free_blocks();
            assert!(
                blocks
                    .windows(2)
                    .all(|pair| pair[0].0 + pair[0].1 < pair[1].0)
            );
        }
        for (pointer, layout) in live.drain(..) {
            // SAFETY: as above.
            unsafe { list.deallocate(pointer as *mut u8, layout) };
        }
        assert_eq!(list.free_blocks(), [(start, size)]);
    }
}
