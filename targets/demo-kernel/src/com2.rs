//! COM2, the wire of the probe port: owned by the relay thread, read on interrupt.
//!
//! # Design
//!
//! COM2's receive interrupt (ISA IRQ 3) is routed through the I/O APIC to the relay's
//! CPU (`ioapic.rs`, set up at boot). The interrupt handler only rings a
//! [`Doorbell`]; the relay thread, blocked on it, wakes and drains the UART's FIFO
//! with plain polled reads. The UART keeps its line raised until the FIFO is empty, so
//! one interrupt per burst is enough. If the interrupt never comes (no I/O APIC route)
//! the relay still polls every [`POLL_TICKS`] ticks, so input is only slower, never
//! lost.
//!
//! # Invariants
//!
//! - At most one [`Com2`] exists (it owns the UART).
//! - Never used from probe context: reading blocks.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::sched::Doorbell;
use crate::serial::{COM2_BASE, Uart};

/// Longest wait between two polls when no interrupt comes (100 ms).
pub(crate) const POLL_TICKS: u64 = 10;

static OPENED: AtomicBool = AtomicBool::new(false);
static DOORBELL: Doorbell = Doorbell::new();

/// COM2 interrupts taken since boot.
pub(crate) static INTERRUPTS: AtomicU64 = AtomicU64::new(0);

/// The COM2 UART, owned.
pub(crate) struct Com2 {
    uart: Uart,
}

impl Com2 {
    /// Programs COM2, enables its receive interrupt and takes ownership of it; `None`
    /// if it was already taken.
    pub(crate) fn open() -> Option<Com2> {
        if OPENED.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: COM2 is the probe-port UART and the flag above guarantees this is
        // its only driver.
        let mut uart = unsafe { Uart::new(COM2_BASE) };
        uart.init();
        uart.enable_receive_interrupt();
        Some(Com2 { uart })
    }

    /// Sends bytes.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        self.uart.write_bytes(bytes);
    }

    /// Blocks until at least one byte arrived, then returns what the FIFO holds (up to
    /// `buffer.len()` bytes).
    pub(crate) fn read_available<'b>(&mut self, buffer: &'b mut [u8]) -> &'b [u8] {
        loop {
            let mut length = 0;
            while length < buffer.len() {
                let Some(byte) = self.uart.try_read_byte() else {
                    break;
                };
                buffer[length] = byte;
                length += 1;
            }
            if length > 0 {
                return &buffer[..length];
            }
            // A byte that arrived after the poll above rang the doorbell already.
            DOORBELL.wait_timeout(POLL_TICKS);
        }
    }
}

/// COM2's interrupt (interrupt context): wake the reader.
pub(crate) fn on_interrupt() {
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    DOORBELL.ring();
}
