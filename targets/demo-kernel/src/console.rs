//! The COM1 console: `println!` for every CPU, and an emergency writer.
//!
//! # Design
//!
//! One lock around the COM1 UART; `println!` formats the whole line while holding it,
//! so lines from different CPUs never interleave. Lines end in a bare `\n` (the
//! console is a log file on the host, read by the harness).
//!
//! # Invariants
//!
//! - Probe context never prints (it would take the lock); only normal kernel code,
//!   CPU bring-up and fatal paths do.
//! - Fatal paths use [`emergency_write`], which gives up on the lock after a bounded
//!   wait instead of dead-locking on a CPU that died holding it.

use core::fmt::{self, Write};

use crate::serial::{COM1_BASE, Uart};
use crate::sync::SpinLock;

// SAFETY: COM1 is the console UART and this is its only driver.
static CONSOLE: SpinLock<Uart> = SpinLock::new(unsafe { Uart::new(COM1_BASE) });

/// Programs COM1. Printing before this works under QEMU too (the UART model needs no
/// setup), but real hardware would want it.
pub(crate) fn init() {
    CONSOLE.lock().init();
}

/// Writes formatted text to the console under the lock (used by the macros).
pub(crate) fn write_fmt(args: fmt::Arguments<'_>) {
    let mut uart = CONSOLE.lock();
    // `Uart::write_str` never fails.
    let _ = uart.write_fmt(args);
}

/// Writes formatted text from a fatal path: takes the lock if it frees up soon,
/// otherwise writes without it.
pub(crate) fn emergency_write(args: fmt::Arguments<'_>) {
    match CONSOLE.try_lock_for(1_000_000) {
        Some(mut uart) => {
            let _ = uart.write_fmt(args);
        }
        None => {
            // SAFETY: fatal path that never returns; interleaving with another CPU's
            // output is acceptable there.
            let uart = unsafe { CONSOLE.force_get() };
            let _ = uart.write_fmt(args);
        }
    }
}

/// Prints a line to the console; the line is written under one lock acquisition.
macro_rules! println {
    () => {
        $crate::console::write_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::console::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use println;

/// Displays formatted text with every line break turned into a space, so a message
/// becomes exactly one console line (used for the verdict line).
pub(crate) struct OneLine<'a>(pub(crate) fmt::Arguments<'a>);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        FlattenLines(formatter).write_fmt(self.0)
    }
}

/// A `fmt::Write` adapter that replaces `\n` and `\r` by spaces.
struct FlattenLines<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl Write for FlattenLines<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for piece in text.split_inclusive(['\n', '\r']) {
            match piece.strip_suffix(['\n', '\r']) {
                Some(head) => {
                    self.0.write_str(head)?;
                    self.0.write_str(" ")?;
                }
                None => self.0.write_str(piece)?,
            }
        }
        Ok(())
    }
}
