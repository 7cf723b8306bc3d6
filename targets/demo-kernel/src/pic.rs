//! The legacy 8259 PICs: remapped away from the exception vectors and masked.
//!
//! # Design
//!
//! The firmware leaves the PICs delivering IRQ 0-7 on vectors 8-15, which collide with
//! CPU exceptions (IRQ 0 would look like a double fault). The kernel uses the local
//! APIC only, so it moves the PICs to vectors `0x20..0x30` and masks every line. A
//! masked PIC can still raise a spurious IRQ 7 or 15; the dispatcher ignores those.

use crate::cpu;
use crate::traps::PIC_VECTOR_BASE;

const PRIMARY_COMMAND: u16 = 0x20;
const PRIMARY_DATA: u16 = 0x21;
const SECONDARY_COMMAND: u16 = 0xa0;
const SECONDARY_DATA: u16 = 0xa1;

/// Remaps both PICs to `PIC_VECTOR_BASE..PIC_VECTOR_BASE + 16` and masks all lines.
pub(crate) fn remap_and_mask() {
    // SAFETY: the PIC ports belong to the legacy PICs, which only this module drives;
    // the sequence is the standard initialisation (ICW1-ICW4) followed by masking.
    unsafe {
        cpu::outb(PRIMARY_COMMAND, 0x11); // ICW1: initialise, ICW4 follows
        cpu::outb(SECONDARY_COMMAND, 0x11);
        cpu::outb(PRIMARY_DATA, PIC_VECTOR_BASE); // ICW2: vector offset
        cpu::outb(SECONDARY_DATA, PIC_VECTOR_BASE + 8);
        cpu::outb(PRIMARY_DATA, 0x04); // ICW3: secondary on IRQ 2
        cpu::outb(SECONDARY_DATA, 0x02); // ICW3: cascade identity
        cpu::outb(PRIMARY_DATA, 0x01); // ICW4: 8086 mode
        cpu::outb(SECONDARY_DATA, 0x01);
        cpu::outb(PRIMARY_DATA, 0xff); // mask everything
        cpu::outb(SECONDARY_DATA, 0xff);
    }
}
