//! The QEMU harness: builds kernel images, boots them under a timeout, wires the
//! probe port and judges the run by its verdict line and exit status.
//!
//! # Design
//!
//! A run is one [`Qemu`] value. [`Qemu::start`] binds a Unix socket for the probe port
//! (COM2) *before* starting QEMU, starts `qemu-system-x86_64` (TCG, never KVM) with the
//! console (COM1) written to a log file, `isa-debug-exit` at `0xf4` and standard input
//! from `/dev/null`, and accepts QEMU's connection, so the caller gets a connected
//! [`std::os::unix::net::UnixStream`] and there is no start-up race. [`Qemu::wait`]
//! waits for QEMU to exit, then reads the console: exactly one `VERDICT: PASS` or
//! `VERDICT: FAIL <reason>` line ([`verdict`]) and the exit status (33 = pass,
//! 35 = fail) decide the result.
//!
//! Each run gets a directory under the system temporary directory holding the console
//! log, QEMU's own output and the socket. It is removed after a passing run and kept
//! otherwise; every error carries its path and the end of the console log.
//!
//! [`build_demo_kernel`] builds `targets/demo-kernel` for `x86_64-unknown-none`
//! (installing the target with rustup if needed) and [`ensure_qemu`] installs QEMU
//! with apt-get when it is missing and the harness runs as root. [`linux`] boots
//! Debian's own kernel with a small initramfs (for kprobes, which the build machines'
//! kernel lacks).
//!
//! # Invariants
//!
//! - No QEMU process outlives its [`Qemu`]: the deadline kills it, `Drop` kills it,
//!   and QEMU gets `SIGKILL` if the thread that started it dies (parent-death signal,
//!   set through util-linux `setpriv` when available).
//! - A run passes only with exactly one `VERDICT: PASS` line *and* exit status 33.

mod error;
mod image;
mod install;
pub mod linux;
mod machine;
pub mod verdict;

pub use error::{ConsoleLog, Error};
pub use image::{
    BARE_METAL_TARGET, DEMO_KERNEL_PACKAGE, KERNEL_PROFILE, build_demo_kernel, workspace_root,
};
pub use install::{QEMU_BINARY, ensure_qemu};
pub use machine::{Config, EXIT_STATUS_FAIL, EXIT_STATUS_PASS, Outcome, Qemu, TcgThreading};
pub use verdict::{Verdict, VerdictProblem};
