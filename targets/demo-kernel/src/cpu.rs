//! Thin wrappers over the x86_64 instructions the kernel needs: port I/O, MSRs,
//! interrupt flag, halting.
//!
//! # Design
//!
//! Each wrapper is one instruction. Port I/O and MSR access are `unsafe` because the
//! caller decides which device or machine register is touched; the interrupt-flag
//! helpers are safe because the kernel's code is written to be correct with
//! interrupts on or off, and the spin lock saves and restores the flag itself.

use core::arch::asm;

/// Reads a byte from an I/O port.
///
/// # Safety
///
/// The port must belong to a device the caller owns; reading may have side effects.
pub(crate) unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller owns the port; `in` touches no memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a byte to an I/O port.
///
/// # Safety
///
/// The port must belong to a device the caller owns.
pub(crate) unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller owns the port; `out` touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
///
/// The port must belong to a device the caller owns.
pub(crate) unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller owns the port; `out` touches no memory.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a model-specific register.
///
/// # Safety
///
/// The MSR must exist on this CPU (else #GP).
pub(crate) unsafe fn read_msr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; `rdmsr` touches no memory.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    };
    (u64::from(high) << 32) | u64::from(low)
}

/// Writes a model-specific register.
///
/// # Safety
///
/// The MSR must exist and the value must keep the machine in a state the kernel
/// expects (for example the GS base must point at this CPU's per-CPU block).
pub(crate) unsafe fn write_msr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the MSR and the value are valid.
    unsafe {
        asm!(
            "wrmsr",
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags),
        )
    };
}

/// Whether maskable interrupts are enabled (RFLAGS.IF).
pub(crate) fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack; no other effect.
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(preserves_flags)) };
    flags & (1 << 9) != 0
}

/// Disables maskable interrupts.
pub(crate) fn disable_interrupts() {
    // SAFETY: `cli` only clears RFLAGS.IF.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Enables maskable interrupts.
pub(crate) fn enable_interrupts() {
    // SAFETY: `sti` only sets RFLAGS.IF; the IDT is loaded before the first call.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Enables interrupts and halts until the next one, atomically (`sti; hlt`): an
/// interrupt that arrives between the two still wakes the CPU.
pub(crate) fn enable_interrupts_and_halt() {
    // SAFETY: `sti` takes effect after the next instruction, so no wake-up is lost.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
}

/// Stops this CPU for good: interrupts off, halt forever.
pub(crate) fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` stops the CPU; only an NMI or reset wakes it.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Reads CR2, the faulting address of the last page fault.
pub(crate) fn read_cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Reads DR6, the debug status register, and clears it for the next #DB.
pub(crate) fn take_dr6() -> u64 {
    let value: u64;
    // SAFETY: DR6 is only ever read and reset here, in the #DB path.
    unsafe {
        asm!(
            "mov {value}, dr6",
            "mov {zero}, 0xffff0ff0",
            "mov dr6, {zero}",
            value = out(reg) value,
            zero = out(reg) _,
            options(nomem, nostack, preserves_flags),
        )
    };
    value
}

/// A short pause inside spin loops (`pause`).
pub(crate) fn spin_hint() {
    core::hint::spin_loop();
}
