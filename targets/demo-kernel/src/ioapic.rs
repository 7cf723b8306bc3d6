//! The I/O APIC: routing one ISA interrupt (COM2's IRQ 3) to one CPU.
//!
//! # Design
//!
//! The MADT lists the I/O APICs (register address, first global system interrupt) and
//! the ISA interrupts that are wired to another input or with another polarity or
//! trigger mode (interrupt source overrides). [`route_isa_interrupt`] finds the input
//! an ISA IRQ arrives on and programs that input's redirection entry: fixed delivery
//! of one vector to one local APIC (physical destination), unmasked. Every other input
//! keeps its reset state (masked). The registers are reached through the index/data
//! pair at offsets `0x00`/`0x10`; the page is in the identity map's uncached fourth GiB.
//!
//! # Invariants
//!
//! - Only the BSP programs the I/O APIC, during bring-up (no lock needed).

use core::fmt;

use crate::acpi::Madt;

const REGISTER_SELECT: u64 = 0x00;
const REGISTER_WINDOW: u64 = 0x10;
const VERSION_REGISTER: u32 = 0x01;
const REDIRECTION_TABLE: u32 = 0x10;

const ACTIVE_LOW: u32 = 1 << 13;
const LEVEL_TRIGGERED: u32 = 1 << 15;

/// Why an interrupt could not be routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteError {
    /// No I/O APIC of the MADT has this global system interrupt.
    NoInput(u32),
}

impl fmt::Display for RouteError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::NoInput(interrupt) => {
                write!(
                    formatter,
                    "no I/O APIC input for global interrupt {interrupt}"
                )
            }
        }
    }
}

/// What [`route_isa_interrupt`] programmed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route {
    /// The I/O APIC's register address.
    pub(crate) address: u64,
    /// The global system interrupt the ISA IRQ arrives on.
    pub(crate) global_interrupt: u32,
    /// Active low (else high).
    pub(crate) active_low: bool,
    /// Level-triggered (else edge).
    pub(crate) level_triggered: bool,
}

fn read(base: u64, register: u32) -> u32 {
    // SAFETY: `base` is an I/O APIC register block from the MADT, identity-mapped and
    // uncached; selecting a register and reading the window has no other effect.
    unsafe {
        core::ptr::write_volatile((base + REGISTER_SELECT) as *mut u32, register);
        core::ptr::read_volatile((base + REGISTER_WINDOW) as *const u32)
    }
}

fn write(base: u64, register: u32, value: u32) {
    // SAFETY: as in `read`; the callers write redirection entries only.
    unsafe {
        core::ptr::write_volatile((base + REGISTER_SELECT) as *mut u32, register);
        core::ptr::write_volatile((base + REGISTER_WINDOW) as *mut u32, value);
    }
}

/// Routes ISA interrupt `irq` to `vector` on the CPU with local APIC id
/// `destination_apic_id` (see the module docs).
pub(crate) fn route_isa_interrupt(
    madt: &Madt<'_>,
    irq: u8,
    vector: u8,
    destination_apic_id: u32,
) -> Result<Route, RouteError> {
    let (global_interrupt, flags) = madt.isa_interrupt(irq);
    // MPS INTI flags: polarity 0b11 = active low, trigger 0b11 = level; 0 = ISA
    // default (active high, edge).
    let active_low = flags & 0b11 == 0b11;
    let level_triggered = (flags >> 2) & 0b11 == 0b11;
    for io_apic in madt.io_apics() {
        let base = u64::from(io_apic.address);
        let inputs = ((read(base, VERSION_REGISTER) >> 16) & 0xff) + 1;
        let Some(input) = global_interrupt.checked_sub(io_apic.first_interrupt) else {
            continue;
        };
        if input >= inputs {
            continue;
        }
        let mut low = u32::from(vector);
        if active_low {
            low |= ACTIVE_LOW;
        }
        if level_triggered {
            low |= LEVEL_TRIGGERED;
        }
        let register = REDIRECTION_TABLE + 2 * input;
        write(base, register + 1, destination_apic_id << 24);
        write(base, register, low);
        return Ok(Route {
            address: base,
            global_interrupt,
            active_low,
            level_triggered,
        });
    }
    Err(RouteError::NoInput(global_interrupt))
}
