//! Per-CPU state: the block each CPU reaches through its GS base, and the stacks.
//!
//! # Design
//!
//! Every CPU gets a fixed slot `0..MAX_CPUS` (CPU 0 is the bootstrap processor). The
//! slot holds the CPU's GDT and TSS, its local APIC id, its online flag, its timer
//! tick counter, the id of the thread it runs (`sched.rs`), the lowest value its #BP
//! interrupt-stack pointer may be moved down to (`traps.rs`) and the last text-patch
//! generation it serialised for (`probe_platform.rs`). `IA32_GS_BASE` points at the
//! slot and the slot's first word points at itself, so `mov rax, gs:[0]` yields the
//! current CPU's block in one instruction without a lock; probe context reads its
//! fields through GS directly ([`fast_index`], [`fast_thread_id`]), so nothing it
//! calls can be probed.
//!
//! # Invariants
//!
//! - A CPU calls [`install`] before anything that uses [`current`] (the first thing
//!   `kernel_main` and `ap_main` do).
//! - Only the owning CPU writes its GDT and TSS, once, before loading them; the other
//!   fields are atomics readable from any CPU.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::cpu;
use crate::gdt::{Gdt, TaskStateSegment};

/// How many CPUs the kernel can run; further CPUs in the MADT are left halted.
pub(crate) const MAX_CPUS: usize = 16;

/// Size of each AP's kernel stack (the BSP keeps the boot stack, same size).
pub(crate) const KERNEL_STACK_SIZE: usize = 64 * 1024;

/// Size of each CPU's double-fault and #DB interrupt-stack-table stacks.
const TRAP_STACK_SIZE: usize = 16 * 1024;

/// Size of each CPU's #BP stack: room for a probe hit, a re-entered hit inside its
/// handler and one more level (see `traps.rs`), [`BREAKPOINT_NESTING_SHIFT`] each,
/// plus [`BREAKPOINT_FATAL_ROOM`] for the report of a deeper nesting.
const BREAKPOINT_STACK_SIZE: usize = 64 * 1024;

/// How far each #BP entry moves the CPU's #BP interrupt-stack pointer down while
/// its handler runs, so that a nested #BP gets a fresh stack below (`traps.rs`).
pub(crate) const BREAKPOINT_NESTING_SHIFT: usize = 16 * 1024;

/// Stack kept at the bottom of the #BP stack for the fatal report of a too-deep
/// nesting.
const BREAKPOINT_FATAL_ROOM: usize = 8 * 1024;

const _: () = assert!(
    3 * BREAKPOINT_NESTING_SHIFT + BREAKPOINT_FATAL_ROOM <= BREAKPOINT_STACK_SIZE,
    "three levels of #BP nesting fit"
);

const IA32_GS_BASE: u32 = 0xc000_0101;

/// One CPU's block.
#[repr(C, align(64))]
pub(crate) struct PerCpu {
    /// Address of this block (read through `gs:[0]`).
    self_address: AtomicU64,
    /// Slot number, 0 for the BSP.
    index: AtomicU32,
    /// Local APIC id, from the MADT (APs) or the LAPIC ID register (BSP).
    pub(crate) apic_id: AtomicU32,
    /// Set by the CPU once it runs its timer and takes interrupts.
    pub(crate) online: AtomicBool,
    /// Local APIC timer interrupts taken by this CPU.
    pub(crate) timer_ticks: AtomicU64,
    /// Id of the thread running on this CPU; 0 until the scheduler runs here.
    pub(crate) current_thread: AtomicU32,
    /// The lowest value the #BP entry path may move this CPU's #BP stack pointer
    /// (TSS IST 2) down to; a deeper nesting is fatal (`traps.rs`).
    pub(crate) breakpoint_stack_floor: AtomicU64,
    /// The last text-patch generation this CPU serialised for (`probe_platform.rs`).
    pub(crate) serialized_generation: AtomicU64,
    pub(crate) gdt: UnsafeCell<Gdt>,
    pub(crate) tss: UnsafeCell<TaskStateSegment>,
}

// SAFETY: the atomics are shared freely; `gdt` and `tss` are written only by the
// owning CPU before it loads them (module invariant) and afterwards only read by the
// CPU itself.
unsafe impl Sync for PerCpu {}

impl PerCpu {
    const fn new() -> Self {
        Self {
            self_address: AtomicU64::new(0),
            index: AtomicU32::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            timer_ticks: AtomicU64::new(0),
            current_thread: AtomicU32::new(0),
            breakpoint_stack_floor: AtomicU64::new(0),
            serialized_generation: AtomicU64::new(0),
            gdt: UnsafeCell::new(Gdt::new()),
            tss: UnsafeCell::new(TaskStateSegment::new()),
        }
    }

    /// The slot number, 0 for the BSP.
    pub(crate) fn index(&self) -> usize {
        self.index.load(Ordering::Relaxed) as usize
    }
}

/// Tops of one CPU's interrupt-stack-table stacks (see `gdt.rs` and `traps.rs`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrapStacks {
    pub(crate) double_fault: u64,
    pub(crate) breakpoint: u64,
    /// The lowest #BP stack pointer a nested #BP may start at.
    pub(crate) breakpoint_floor: u64,
    pub(crate) debug: u64,
}

/// A stack as a zero-initialised static (it lands in `.bss`).
#[repr(C, align(16))]
struct Stack<const SIZE: usize>(UnsafeCell<[u8; SIZE]>);

// SAFETY: each stack is used by exactly one CPU (its slot), never shared.
unsafe impl<const SIZE: usize> Sync for Stack<SIZE> {}

impl<const SIZE: usize> Stack<SIZE> {
    const fn new() -> Self {
        Self(UnsafeCell::new([0; SIZE]))
    }

    fn top(&self) -> u64 {
        self.0.get() as u64 + SIZE as u64
    }
}

static PER_CPU: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];
static KERNEL_STACKS: [Stack<KERNEL_STACK_SIZE>; MAX_CPUS] = [const { Stack::new() }; MAX_CPUS];
static DOUBLE_FAULT_STACKS: [Stack<TRAP_STACK_SIZE>; MAX_CPUS] = [const { Stack::new() }; MAX_CPUS];
static BREAKPOINT_STACKS: [Stack<BREAKPOINT_STACK_SIZE>; MAX_CPUS] =
    [const { Stack::new() }; MAX_CPUS];
static DEBUG_STACKS: [Stack<TRAP_STACK_SIZE>; MAX_CPUS] = [const { Stack::new() }; MAX_CPUS];

/// The block of slot `index`.
pub(crate) fn slot(index: usize) -> &'static PerCpu {
    &PER_CPU[index]
}

/// Top of slot `index`'s kernel stack (used by APs; the BSP keeps the boot stack).
pub(crate) fn kernel_stack_top(index: usize) -> u64 {
    KERNEL_STACKS[index].top()
}

/// Tops of slot `index`'s double-fault, #BP and #DB stacks.
pub(crate) fn trap_stacks(index: usize) -> TrapStacks {
    let breakpoint = BREAKPOINT_STACKS[index].top();
    TrapStacks {
        double_fault: DOUBLE_FAULT_STACKS[index].top(),
        breakpoint,
        breakpoint_floor: breakpoint - BREAKPOINT_STACK_SIZE as u64 + BREAKPOINT_FATAL_ROOM as u64,
        debug: DEBUG_STACKS[index].top(),
    }
}

/// The address range of slot `index`'s #BP stack (the self-test checks that the trap
/// frame of an int3 lies there).
pub(crate) fn breakpoint_stack(index: usize) -> core::ops::Range<u64> {
    let top = BREAKPOINT_STACKS[index].top();
    top - BREAKPOINT_STACK_SIZE as u64..top
}

/// Makes slot `index` this CPU's block: fills in its identity and points GS at it.
pub(crate) fn install(index: usize, apic_id: u32) -> &'static PerCpu {
    let block = &PER_CPU[index];
    block
        .self_address
        .store(block as *const PerCpu as u64, Ordering::Relaxed);
    block.index.store(index as u32, Ordering::Relaxed);
    block.apic_id.store(apic_id, Ordering::Relaxed);
    // SAFETY: IA32_GS_BASE exists on every x86_64 CPU, and the block is a static that
    // outlives the kernel, so `gs:[0]` stays valid.
    unsafe { cpu::write_msr(IA32_GS_BASE, block as *const PerCpu as u64) };
    block
}

/// This CPU's block.
pub(crate) fn current() -> &'static PerCpu {
    let address: u64;
    // SAFETY: `install` ran on this CPU (module invariant), so `gs:[0]` holds the
    // address of this CPU's block.
    unsafe {
        asm!("mov {}, gs:[0]", out(reg) address, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: the address is that of a `PerCpu` in the static array.
    unsafe { &*(address as *const PerCpu) }
}

/// This CPU's slot number if [`install`] already ran on it (for fatal paths, which
/// may run before that).
pub(crate) fn current_index_if_installed() -> Option<usize> {
    // SAFETY: IA32_GS_BASE exists on every x86_64 CPU; reading it has no effect.
    let base = unsafe { cpu::read_msr(IA32_GS_BASE) };
    PER_CPU
        .iter()
        .position(|block| block as *const PerCpu as u64 == base)
}

/// Offset of [`PerCpu::breakpoint_stack_floor`] from the GS base (for `traps.rs`).
pub(crate) const BREAKPOINT_FLOOR_OFFSET: usize =
    core::mem::offset_of!(PerCpu, breakpoint_stack_floor);

/// Offset of the #BP interrupt-stack pointer (TSS IST 2) from the GS base.
pub(crate) const BREAKPOINT_IST_OFFSET: usize = core::mem::offset_of!(PerCpu, tss)
    + crate::gdt::interrupt_stack_offset(crate::gdt::BREAKPOINT_IST);

/// This CPU's slot number, read through GS in one instruction: safe in probe
/// context (nothing here can be probed, it is inlined into its caller).
#[inline(always)]
pub(crate) fn fast_index() -> usize {
    let index: u32;
    // SAFETY: `install` ran on this CPU (module invariant), so GS points at this
    // CPU's block, whose `index` field lies at the offset given.
    unsafe {
        asm!(
            "mov {index:e}, gs:[{offset}]",
            index = out(reg) index,
            offset = const core::mem::offset_of!(PerCpu, index),
            options(nostack, readonly, preserves_flags)
        )
    };
    index as usize
}

/// The id of the thread running on this CPU (0 before the scheduler runs here),
/// read through GS in one instruction: safe in probe context.
#[inline(always)]
pub(crate) fn fast_thread_id() -> u32 {
    let id: u32;
    // SAFETY: as in `fast_index`, for the `current_thread` field.
    unsafe {
        asm!(
            "mov {id:e}, gs:[{offset}]",
            id = out(reg) id,
            offset = const core::mem::offset_of!(PerCpu, current_thread),
            options(nostack, readonly, preserves_flags)
        )
    };
    id
}
