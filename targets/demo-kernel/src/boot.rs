//! PVH entry, the 32-bit to 64-bit trampoline and the AP real-mode trampoline.
//!
//! # Design
//!
//! QEMU's `-kernel` loader finds the PVH note (ELF note type 18,
//! `XEN_ELFNOTE_PHYS32_ENTRY`) and enters `pvh_start32` in 32-bit protected mode with
//! paging off, flat segments, interrupts off and `ebx` holding the physical address of
//! the `hvm_start_info` block. The boot code then:
//!
//! 1. loads the boot GDT (null, 64-bit code `0x08`, data `0x10`, 32-bit code `0x18`),
//! 2. zeroes `.bss` (it holds the page tables and the boot stack),
//! 3. identity-maps the first 4 GiB with 2 MiB pages, except the first 2 MiB, which
//!    get 4 KiB pages so that page 0 can be unmapped once the loader's start info
//!    (whose memory map QEMU puts there) has been read ([`unmap_page_zero`]): from
//!    then on a NULL dereference faults; the fourth GiB, where the IOAPIC
//!    (`0xfec0_0000`) and the local APIC (`0xfee0_0000`) live, is mapped uncached,
//! 4. enables PAE, long mode and paging, far-jumps to 64-bit code and calls
//!    `kernel_main(start_info_physical_address)` on the boot stack.
//!
//! Application processors start in real mode at [`AP_TRAMPOLINE_ADDRESS`] (the SIPI
//! vector is that address divided by 4 KiB). The real-mode trampoline only loads the
//! boot GDT (through a pseudo-descriptor the BSP writes at
//! [`AP_TRAMPOLINE_GDTR_OFFSET`] inside the trampoline page), enters protected mode
//! and jumps to `ap_start32` inside the kernel image, which shares the long-mode
//! switch with the BSP and calls `ap_main(cpu_index)` on the stack the BSP published
//! in [`AP_BOOT_STACK_TOP`].
//!
//! # Invariants
//!
//! - The real-mode trampoline is position independent apart from absolute addresses
//!   of kernel symbols: it is copied to [`AP_TRAMPOLINE_ADDRESS`] and runs there.
//! - Only one AP is started at a time: [`AP_BOOT_STACK_TOP`] and [`AP_BOOT_CPU_INDEX`]
//!   describe the AP being started and the BSP waits for it before reusing them.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64};

/// Physical address the AP real-mode trampoline is copied to (a page below 1 MiB).
pub(crate) const AP_TRAMPOLINE_ADDRESS: usize = 0x8000;

/// Offset, inside the trampoline page, of the GDT pseudo-descriptor the BSP writes.
pub(crate) const AP_TRAMPOLINE_GDTR_OFFSET: usize = 0xff0;

/// Top of the stack the next AP switches to in 64-bit mode (written by the BSP).
pub(crate) static AP_BOOT_STACK_TOP: AtomicU64 = AtomicU64::new(0);

/// CPU index handed to `ap_main` for the AP being started (written by the BSP).
pub(crate) static AP_BOOT_CPU_INDEX: AtomicU32 = AtomicU32::new(0);

/// Size of the boot stack, which stays the BSP's kernel stack.
const BOOT_STACK_SIZE: usize = 64 * 1024;

unsafe extern "C" {
    /// The page table of the first 2 MiB (512 entries of 4 KiB pages).
    static mut boot_page_table_low: [u64; 512];
    /// First byte of the AP real-mode trampoline (inside `.text`).
    static ap_trampoline_start: u8;
    /// One past the last byte of the AP real-mode trampoline.
    static ap_trampoline_end: u8;
    /// The boot GDT (four descriptors), shared by every CPU until it loads its own.
    static boot_gdt: u8;
}

/// Unmaps page 0, so that a NULL pointer dereference faults (the probe stub's
/// handlers rely on it: a NULL read is a counted fault, not a read of the
/// real-mode IVT). Called once on the BSP, after the start info was read and before
/// the other CPUs start (they share these page tables).
pub(crate) fn unmap_page_zero() {
    // SAFETY: the BSP alone runs; nothing uses page 0 any more (the start info was
    // copied out); the entry is written through its place, then the stale
    // translation is dropped.
    unsafe {
        (&raw mut boot_page_table_low)
            .cast::<u64>()
            .write_volatile(0);
        core::arch::asm!("invlpg [{}]", in(reg) 0u64, options(nostack, preserves_flags));
    }
}

/// The AP trampoline's bytes, to be copied to [`AP_TRAMPOLINE_ADDRESS`].
pub(crate) fn ap_trampoline_bytes() -> &'static [u8] {
    let start = &raw const ap_trampoline_start;
    let end = &raw const ap_trampoline_end;
    // SAFETY: both symbols delimit the trampoline inside the kernel image's `.text`,
    // which is mapped, never written, and lives as long as the kernel.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// Physical address and limit of the boot GDT, for the AP pseudo-descriptor.
pub(crate) fn boot_gdt_address_and_limit() -> (u32, u16) {
    (&raw const boot_gdt as usize as u32, 4 * 8 - 1)
}

global_asm!(
    r#"
    /* ---- PVH note: XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen", 8-byte descriptor. */
    .pushsection .note.pvh, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4
    .popsection

    /* ---- Boot GDT and its 32-bit pseudo-descriptor. The accessed bits are preset so
       the CPU never writes to the table. */
    .pushsection .data.boot_gdt, "aw"
    .balign 16
    .global boot_gdt
boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff        /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf93000000ffff        /* 0x10: flat data */
    .quad 0x00cf9b000000ffff        /* 0x18: flat 32-bit code (AP trampoline) */
boot_gdt_end:
    .balign 8
boot_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
    .popsection

    /* ---- Page tables and the boot stack, zeroed by the boot code. */
    .pushsection .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_page_directories:
    .skip 4 * 4096
    .global boot_page_table_low
boot_page_table_low:
    .skip 4096
    .balign 16
boot_stack_bottom:
    .skip {boot_stack_size}
boot_stack_top:
    .popsection

    /* Shared tail of the BSP and AP paths: PAE, long mode, paging, far jump to
       64-bit code at \target. Clobbers eax, ecx, edx. */
    .macro enter_long_mode target
    movl %cr4, %eax
    orl $0x20, %eax                 /* CR4.PAE */
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx          /* IA32_EFER */
    rdmsr
    orl $0x100, %eax                /* EFER.LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax           /* CR0.PG | CR0.PE */
    movl %eax, %cr0
    ljmp $0x08, $\target
    .endm

    .pushsection .text.boot, "ax"

    /* ---- BSP entry from the PVH loader. ebx = hvm_start_info physical address. */
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %ebp                 /* keep start_info across the setup */
    lgdt boot_gdtr
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs

    /* Zero .bss: page tables, stacks, the heap arena, every zero-initialised static.
       Four bytes at a time (the linker script aligns both ends to 8). */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl
    movl $boot_stack_top, %esp

    /* PML4[0] -> PDPT; PDPT[0..4] -> four page directories. */
    movl $boot_pdpt, %eax
    orl $0x3, %eax                  /* present, writable */
    movl %eax, boot_pml4
    movl $boot_page_directories, %eax
    orl $0x3, %eax
    movl %eax, boot_pdpt
    addl $0x1000, %eax
    movl %eax, boot_pdpt + 8
    addl $0x1000, %eax
    movl %eax, boot_pdpt + 16
    addl $0x1000, %eax
    movl %eax, boot_pdpt + 24

    /* 2048 entries of 2 MiB: physical = virtual for the first 4 GiB. */
    xorl %ecx, %ecx
1:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax                 /* present, writable, 2 MiB page */
    cmpl $1536, %ecx
    jb 2f
    orl $0x18, %eax                 /* fourth GiB: MMIO, write-through + cache-disable */
2:
    movl %eax, boot_page_directories(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne 1b

    /* The first 2 MiB again with 4 KiB pages, so that page 0 alone can be
       unmapped later (unmap_page_zero). */
    xorl %ecx, %ecx
5:
    movl %ecx, %eax
    shll $12, %eax
    orl $0x3, %eax                  /* present, writable */
    movl %eax, boot_page_table_low(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jne 5b
    movl $boot_page_table_low, %eax
    orl $0x3, %eax
    movl %eax, boot_page_directories

    enter_long_mode pvh_start64

    .code64
pvh_start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    leaq boot_stack_top(%rip), %rsp
    movl %ebp, %edi                 /* start_info physical address, zero-extended */
    xorl %ebp, %ebp                 /* end of the frame-pointer chain */
    call {kernel_main}
3:
    cli
    hlt
    jmp 3b

    /* ---- AP real-mode trampoline, copied to {trampoline_address} and entered by
       SIPI with CS = {trampoline_address} >> 4, IP = 0. */
    .code16
    .global ap_trampoline_start
ap_trampoline_start:
    cli
    cld
    lgdtl %cs:{gdtr_offset}
    movl %cr0, %eax
    orl $1, %eax                    /* CR0.PE */
    movl %eax, %cr0
    ljmpl $0x18, $ap_start32
    .global ap_trampoline_end
ap_trampoline_end:

    /* ---- AP protected-mode entry (inside the kernel image). */
    .code32
ap_start32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    enter_long_mode ap_start64

    .code64
ap_start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movq {ap_stack_top}(%rip), %rsp
    movl {ap_cpu_index}(%rip), %edi
    xorl %ebp, %ebp
    call {ap_main}
4:
    cli
    hlt
    jmp 4b

    .popsection
    "#,
    boot_stack_size = const BOOT_STACK_SIZE,
    trampoline_address = const AP_TRAMPOLINE_ADDRESS,
    gdtr_offset = const AP_TRAMPOLINE_GDTR_OFFSET,
    kernel_main = sym crate::kernel_main,
    ap_main = sym crate::smp::ap_main,
    ap_stack_top = sym AP_BOOT_STACK_TOP,
    ap_cpu_index = sym AP_BOOT_CPU_INDEX,
    options(att_syntax),
);
