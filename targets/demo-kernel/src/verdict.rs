//! The verdict protocol: exactly one `VERDICT: PASS` or `VERDICT: FAIL <reason>` line
//! on the console, then QEMU exits through `isa-debug-exit`.
//!
//! # Design
//!
//! QEMU's `isa-debug-exit` device (here at I/O port `0xf4`) terminates QEMU when the
//! guest writes a value `v` to it, with host exit status `(v << 1) | 1`. The kernel
//! writes [`EXIT_PASS`] (status 33) or [`EXIT_FAIL`] (status 35). The harness checks
//! both the line and the status, so a kernel that dies without a verdict, prints two,
//! or exits some other way is caught.
//!
//! # Invariants
//!
//! - At most one verdict line is ever printed: whichever CPU gets here first prints;
//!   any later caller (a panic on another CPU, a panic inside the verdict path) only
//!   exits with the failure code.
//! - The reason never contains a line break ([`OneLine`]).

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::console::{self, OneLine};
use crate::cpu;

/// I/O port of QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4`).
const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Written on success: QEMU exits with status `(0x10 << 1) | 1 = 33`.
const EXIT_PASS: u32 = 0x10;
/// Written on failure: QEMU exits with status `(0x11 << 1) | 1 = 35`.
const EXIT_FAIL: u32 = 0x11;

static VERDICT_PRINTED: AtomicBool = AtomicBool::new(false);

/// Prints `VERDICT: PASS` and exits QEMU with status 33.
pub(crate) fn pass() -> ! {
    if !VERDICT_PRINTED.swap(true, Ordering::AcqRel) {
        console::println!("VERDICT: PASS");
        exit_qemu(EXIT_PASS);
    }
    exit_qemu(EXIT_FAIL)
}

/// Prints `VERDICT: FAIL <reason>` (on one line) and exits QEMU with status 35.
/// Safe to call from fatal paths: it never waits on the console lock for long.
pub(crate) fn fail(reason: fmt::Arguments<'_>) -> ! {
    if !VERDICT_PRINTED.swap(true, Ordering::AcqRel) {
        console::emergency_write(format_args!("VERDICT: FAIL {}\n", OneLine(reason)));
    }
    exit_qemu(EXIT_FAIL)
}

/// Writes `code` to `isa-debug-exit`; if the device is absent, halts for good.
fn exit_qemu(code: u32) -> ! {
    // SAFETY: port 0xf4 is QEMU's isa-debug-exit device in every configuration the
    // harness starts; on a machine without it the write is ignored.
    unsafe { cpu::outl(DEBUG_EXIT_PORT, code) };
    cpu::halt_forever()
}
