//! Polling driver for 16550-compatible UARTs (COM1 console, COM2 probe port).
//!
//! # Design
//!
//! The driver polls: transmit waits for the holding register to empty, receive
//! checks the data-ready bit, so it works from any context, including a CPU with
//! interrupts off. The console never enables UART interrupts. COM2 does
//! ([`Uart::init_without_fifos`]): the interrupt only says "data waits", and the
//! relay thread still reads with [`Uart::try_read_byte`] (see `com2.rs`). No byte
//! is lost while nobody reads: QEMU stops reading its backend while the UART's
//! receive side is full, and the sender just waits.
//!
//! # Invariants
//!
//! - One `Uart` value per port; the console keeps COM1 behind a lock, the probe port
//!   owns COM2.

use crate::cpu;

/// I/O base of COM1, the console.
pub(crate) const COM1_BASE: u16 = 0x3f8;
/// I/O base of COM2, the probe port.
pub(crate) const COM2_BASE: u16 = 0x2f8;

// Register offsets from the base port.
const DATA: u16 = 0; // receive buffer / transmit holding (DLAB = 0), divisor low (DLAB = 1)
const INTERRUPT_ENABLE: u16 = 1; // divisor high when DLAB = 1
const FIFO_CONTROL: u16 = 2;
const LINE_CONTROL: u16 = 3;
const MODEM_CONTROL: u16 = 4;
const LINE_STATUS: u16 = 5;

const LINE_STATUS_DATA_READY: u8 = 1 << 0;
const LINE_STATUS_TRANSMIT_EMPTY: u8 = 1 << 5;

/// A 16550 UART at a fixed I/O base.
pub(crate) struct Uart {
    base: u16,
}

impl Uart {
    /// A driver for the UART at `base`; call [`Uart::init`] before use.
    ///
    /// # Safety
    ///
    /// `base` must be the I/O base of a 16550 UART that nothing else drives.
    pub(crate) const unsafe fn new(base: u16) -> Self {
        Self { base }
    }

    /// 115200 baud, 8 data bits, no parity, one stop bit, FIFOs on, no interrupts.
    pub(crate) fn init(&mut self) {
        // SAFETY: `self.base` is a UART this value owns (see `new`).
        unsafe {
            cpu::outb(self.base + INTERRUPT_ENABLE, 0x00);
            cpu::outb(self.base + LINE_CONTROL, 0x80); // DLAB on: divisor follows
            cpu::outb(self.base + DATA, 0x01); // divisor 1 = 115200 baud
            cpu::outb(self.base + INTERRUPT_ENABLE, 0x00);
            cpu::outb(self.base + LINE_CONTROL, 0x03); // 8N1, DLAB off
            cpu::outb(self.base + FIFO_CONTROL, 0xc7); // enable and clear FIFOs, 14-byte threshold
            cpu::outb(self.base + MODEM_CONTROL, 0x03); // DTR, RTS
        }
    }

    /// 115200 baud, 8N1, FIFOs left off (16450 mode), and the interrupt line raised
    /// while a received byte waits (IER bit 0, with OUT2, which gates the line on
    /// PC hardware). For the probe port: the FIFO control register is never
    /// written, because enabling the FIFOs clears the receive side, and a client
    /// may have sent its first byte before the kernel got here. Without FIFOs the
    /// UART holds one received byte and QEMU's chardev hands over the next only
    /// once that one is read, so no byte is ever lost, however early it was sent.
    pub(crate) fn init_without_fifos(&mut self) {
        // SAFETY: `self.base` is a UART this value owns (see `new`).
        unsafe {
            cpu::outb(self.base + INTERRUPT_ENABLE, 0x00);
            cpu::outb(self.base + LINE_CONTROL, 0x80); // DLAB on: divisor follows
            cpu::outb(self.base + DATA, 0x01); // divisor 1 = 115200 baud
            cpu::outb(self.base + INTERRUPT_ENABLE, 0x00);
            cpu::outb(self.base + LINE_CONTROL, 0x03); // 8N1, DLAB off
            cpu::outb(self.base + MODEM_CONTROL, 0x0b); // DTR, RTS, OUT2
            cpu::outb(self.base + INTERRUPT_ENABLE, 0x01); // received data available
        }
    }

    /// Sends one byte, waiting for the transmitter.
    pub(crate) fn write_byte(&mut self, byte: u8) {
        // SAFETY: `self.base` is a UART this value owns.
        unsafe {
            while cpu::inb(self.base + LINE_STATUS) & LINE_STATUS_TRANSMIT_EMPTY == 0 {
                cpu::spin_hint();
            }
            cpu::outb(self.base + DATA, byte);
        }
    }

    /// Sends bytes in order.
    pub(crate) fn write_bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_byte(byte);
        }
    }

    /// A received byte, if one is waiting.
    pub(crate) fn try_read_byte(&mut self) -> Option<u8> {
        // SAFETY: `self.base` is a UART this value owns.
        unsafe {
            if cpu::inb(self.base + LINE_STATUS) & LINE_STATUS_DATA_READY != 0 {
                Some(cpu::inb(self.base + DATA))
            } else {
                None
            }
        }
    }
}

impl core::fmt::Write for Uart {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        self.write_bytes(text.as_bytes());
        Ok(())
    }
}
