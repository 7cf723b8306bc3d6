//! COM2, the wire of the probe port, and its self-check.
//!
//! # Design
//!
//! The probe stub will speak the port protocol over COM2; until it exists the kernel
//! proves the wire works both ways: it sends [`HELLO`] as one line, waits for one line
//! from the host and sends it back prefixed with [`ECHO_PREFIX`]. The receive path is
//! the one a kernel thread will use: poll the UART, and when it is empty halt until
//! the next interrupt (timer tick), so waiting costs nothing and no byte is lost (QEMU
//! holds bytes back while the receive FIFO is full).
//!
//! # Invariants
//!
//! - At most one [`ProbePort`] exists (it owns COM2).
//! - Never used from probe context: reading halts and enables interrupts.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::serial::{COM2_BASE, Uart};
use crate::{cpu, time};

/// The first line the kernel sends on COM2.
pub(crate) const HELLO: &[u8] = b"probeport demo-kernel: COM2 hello";
/// Prefix of the line the kernel sends back.
pub(crate) const ECHO_PREFIX: &[u8] = b"echo: ";

static OPENED: AtomicBool = AtomicBool::new(false);

/// Why a line could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineError {
    /// No complete line within the timeout.
    Timeout { received: usize },
    /// The line does not fit the buffer.
    TooLong { capacity: usize },
}

impl core::fmt::Display for LineError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LineError::Timeout { received } => {
                write!(
                    formatter,
                    "no complete line before the timeout ({received} bytes received)"
                )
            }
            LineError::TooLong { capacity } => {
                write!(formatter, "line longer than {capacity} bytes")
            }
        }
    }
}

/// The COM2 UART, owned.
pub(crate) struct ProbePort {
    uart: Uart,
}

impl ProbePort {
    /// Programs COM2 and takes ownership of it; `None` if it was already taken.
    pub(crate) fn open() -> Option<ProbePort> {
        if OPENED.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: COM2 is the probe-port UART and the flag above guarantees this is
        // its only driver.
        let mut uart = unsafe { Uart::new(COM2_BASE) };
        uart.init();
        Some(ProbePort { uart })
    }

    /// Sends bytes.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        self.uart.write_bytes(bytes);
    }

    /// Receives one line (without its `\n`; a `\r` is dropped) into `buffer`.
    pub(crate) fn read_line<'b>(
        &mut self,
        buffer: &'b mut [u8],
        timeout_millis: u64,
    ) -> Result<&'b [u8], LineError> {
        let deadline = time::deadline_after_millis(timeout_millis);
        let mut length = 0;
        loop {
            while let Some(byte) = self.uart.try_read_byte() {
                match byte {
                    b'\n' => return Ok(&buffer[..length]),
                    b'\r' => {}
                    _ if length == buffer.len() => {
                        return Err(LineError::TooLong {
                            capacity: buffer.len(),
                        });
                    }
                    _ => {
                        buffer[length] = byte;
                        length += 1;
                    }
                }
            }
            if time::ticks() >= deadline {
                return Err(LineError::Timeout { received: length });
            }
            cpu::enable_interrupts_and_halt();
        }
    }
}

/// How long the self-check waits for the host's line.
pub(crate) const SELF_CHECK_TIMEOUT_MILLIS: u64 = 20_000;

/// Sends the hello line, reads one line and echoes it back. Returns the echoed line's
/// length.
pub(crate) fn self_check(port: &mut ProbePort) -> Result<usize, LineError> {
    port.write(HELLO);
    port.write(b"\n");
    let mut buffer = [0u8; 256];
    let line = port.read_line(&mut buffer, SELF_CHECK_TIMEOUT_MILLIS)?;
    port.write(ECHO_PREFIX);
    port.write(line);
    port.write(b"\n");
    Ok(line.len())
}
