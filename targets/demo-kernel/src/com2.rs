//! COM2, the wire of the probe port: owned by the relay thread, read on interrupt.
//!
//! # Design
//!
//! COM2's receive interrupt (ISA IRQ 3) is routed through the I/O APIC to the relay's
//! CPU (`ioapic.rs`, set up at boot). The interrupt handler only rings a
//! [`Doorbell`]; the relay thread, blocked on it (at most a tick at a time:
//! [`Com2::read_within`]), wakes and reads the UART with plain polled reads. If the
//! interrupt never comes (no I/O APIC route) the relay still polls every tick, so
//! input is only slower, never lost. The UART runs without FIFOs (`serial.rs`):
//! enabling them would clear whatever a client sent before the relay opened the
//! port, and without them QEMU hands over the next byte only once the last one was
//! read.
//!
//! # Invariants
//!
//! - At most one [`Com2`] exists (it owns the UART).
//! - Never used from probe context: reading blocks.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::sched::Doorbell;
use crate::serial::{COM2_BASE, Uart};

/// Longest wait of one [`Com2::read_within`] (100 ms).
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
        uart.init_without_fifos();
        Some(Com2 { uart })
    }

    /// Sends bytes.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        self.uart.write_bytes(bytes);
    }

    /// Returns what the FIFO holds (up to `buffer.len()` bytes), waiting up to
    /// `timeout_ticks` timer ticks for a first byte; empty if none came.
    pub(crate) fn read_within<'b>(&mut self, buffer: &'b mut [u8], timeout_ticks: u64) -> &'b [u8] {
        let mut waited = false;
        loop {
            let mut length = 0;
            while length < buffer.len() {
                let Some(byte) = self.uart.try_read_byte() else {
                    break;
                };
                buffer[length] = byte;
                length += 1;
            }
            if length > 0 || waited || timeout_ticks == 0 {
                return &buffer[..length];
            }
            // A byte that arrived after the poll above rang the doorbell already.
            DOORBELL.wait_timeout(timeout_ticks.min(POLL_TICKS));
            waited = true;
        }
    }
}

/// COM2's interrupt (interrupt context): wake the reader.
pub(crate) fn on_interrupt() {
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    DOORBELL.ring();
}
