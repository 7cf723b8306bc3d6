//! Per-CPU GDT and TSS.
//!
//! # Design
//!
//! Each CPU loads its own five-entry GDT: null, 64-bit kernel code (`0x08`), kernel
//! data (`0x10`) and a 16-byte TSS descriptor (`0x18`). The selectors match the boot
//! GDT, so nothing changes for code already running. The TSS exists for its interrupt
//! stack table, three per-CPU stacks the CPU switches to on entry whatever stack was in
//! use: IST 1 for double faults (a #DF taken on an overflowed stack still has a stack
//! to print on), IST 2 for #BP and IST 3 for #DB (the trap frame of a probe hit must not
//! live on the interrupted stack, which the stub writes to: see `traps.rs`). The kernel
//! never leaves ring 0, so `rsp0` is unused.
//!
//! # Invariants
//!
//! - A TSS descriptor can be loaded by one CPU only (`ltr` marks it busy): each CPU
//!   has its own GDT and TSS in its per-CPU block.

use core::arch::asm;
use core::mem::size_of;

use crate::percpu::{PerCpu, TrapStacks};

/// Selector of the 64-bit kernel code segment.
pub(crate) const KERNEL_CODE_SELECTOR: u16 = 0x08;
/// Selector of the kernel data segment.
const KERNEL_DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS.
const TSS_SELECTOR: u16 = 0x18;

/// IST slot (1-based, as in the IDT) of the double-fault stack.
pub(crate) const DOUBLE_FAULT_IST: u8 = 1;
/// IST slot of the breakpoint (#BP, `int3`) stack.
pub(crate) const BREAKPOINT_IST: u8 = 2;
/// IST slot of the debug-exception (#DB) stack.
pub(crate) const DEBUG_IST: u8 = 3;

/// The 64-bit task-state segment (Intel SDM vol. 3, "64-bit TSS").
#[repr(C, packed(4))]
pub(crate) struct TaskStateSegment {
    reserved0: u32,
    privilege_stacks: [u64; 3],
    reserved1: u64,
    interrupt_stacks: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    io_map_base: u16,
}

const _: () = assert!(size_of::<TaskStateSegment>() == 104);

/// Offset of interrupt-stack-table entry `ist` (1-based) inside the TSS.
pub(crate) const fn interrupt_stack_offset(ist: u8) -> usize {
    core::mem::offset_of!(TaskStateSegment, interrupt_stacks) + 8 * (ist as usize - 1)
}

impl TaskStateSegment {
    pub(crate) const fn new() -> Self {
        Self {
            reserved0: 0,
            privilege_stacks: [0; 3],
            reserved1: 0,
            interrupt_stacks: [0; 7],
            reserved2: 0,
            reserved3: 0,
            // No I/O permission bitmap: the map base points past the segment.
            io_map_base: size_of::<TaskStateSegment>() as u16,
        }
    }
}

/// A CPU's GDT.
#[repr(C, align(16))]
pub(crate) struct Gdt {
    entries: [u64; 5],
}

impl Gdt {
    pub(crate) const fn new() -> Self {
        Self { entries: [0; 5] }
    }
}

/// The pseudo-descriptor `lgdt` and `lidt` take.
#[repr(C, packed)]
pub(crate) struct DescriptorTablePointer {
    pub(crate) limit: u16,
    pub(crate) base: u64,
}

/// Fills this CPU's GDT and TSS and loads them: reloads every segment register and
/// the task register.
pub(crate) fn load(block: &'static PerCpu, stacks: TrapStacks) {
    let tss_pointer = block.tss.get();
    // SAFETY: only this CPU writes its TSS, before loading it (percpu invariant). The
    // TSS is packed, so the stores go through the place, not through a reference.
    unsafe {
        (*tss_pointer).interrupt_stacks[usize::from(DOUBLE_FAULT_IST) - 1] = stacks.double_fault;
        (*tss_pointer).interrupt_stacks[usize::from(BREAKPOINT_IST) - 1] = stacks.breakpoint;
        (*tss_pointer).interrupt_stacks[usize::from(DEBUG_IST) - 1] = stacks.debug;
    }
    block.breakpoint_stack_floor.store(
        stacks.breakpoint_floor,
        core::sync::atomic::Ordering::Relaxed,
    );

    let tss_base = tss_pointer as u64;
    let tss_limit = (size_of::<TaskStateSegment>() - 1) as u64;
    let tss_low = (tss_limit & 0xffff)
        | ((tss_base & 0xff_ffff) << 16)
        | (0x9 << 40) // available 64-bit TSS
        | (1 << 47) // present
        | (((tss_limit >> 16) & 0xf) << 48)
        | (((tss_base >> 24) & 0xff) << 56);
    let tss_high = tss_base >> 32;

    let gdt_pointer = block.gdt.get();
    // SAFETY: only this CPU writes its GDT, before loading it (percpu invariant).
    unsafe {
        (*gdt_pointer).entries = [
            0,
            0x00af_9b00_0000_ffff, // 64-bit code, DPL 0, accessed
            0x00cf_9300_0000_ffff, // data, accessed
            tss_low,
            tss_high,
        ];
    }

    let pointer = DescriptorTablePointer {
        limit: (size_of::<Gdt>() - 1) as u16,
        base: gdt_pointer as u64,
    };
    // SAFETY: the GDT is a static with the same code and data selectors the CPU uses
    // now; the far return reloads CS with the code selector, then the data segments
    // and the task register are reloaded from the new table.
    unsafe {
        asm!(
            "lgdt [{pointer}]",
            "push {code}",
            "lea {scratch}, [rip + 2f]",
            "push {scratch}",
            "retfq",
            "2:",
            "mov ds, {data:e}",
            "mov es, {data:e}",
            "mov ss, {data:e}",
            "ltr {tss:x}",
            pointer = in(reg) &pointer,
            code = in(reg) u64::from(KERNEL_CODE_SELECTOR),
            data = in(reg) u32::from(KERNEL_DATA_SELECTOR),
            tss = in(reg) TSS_SELECTOR,
            scratch = out(reg) _,
        );
    }
}
