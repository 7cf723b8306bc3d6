//! The harness's error type.
//!
//! # Design
//!
//! One enum for the whole crate (std only, so `Display` and `Error` are written by
//! hand). Every error about a run carries the [`ConsoleLog`]: where the log was kept
//! and what it says, and its `Display` ends with the log's last lines, so a failing
//! test shows why without anyone opening a file.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::verdict::VerdictProblem;

/// How many console lines an error message shows.
const CONSOLE_TAIL_LINES: usize = 40;

/// The console log of a run that went wrong.
#[derive(Clone, Debug)]
pub struct ConsoleLog {
    /// Where the log is kept (the run directory is not removed after a failure).
    pub path: PathBuf,
    /// The whole log (lossily decoded as UTF-8).
    pub contents: String,
    /// QEMU's own standard output and error.
    pub qemu_output: String,
}

impl fmt::Display for ConsoleLog {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<&str> = self.contents.lines().collect();
        let shown = &lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..];
        write!(formatter, "console log kept at {}", self.path.display())?;
        if shown.len() < lines.len() {
            write!(
                formatter,
                " (last {} of {} lines)",
                shown.len(),
                lines.len()
            )?;
        }
        formatter.write_str(":\n")?;
        for line in shown {
            writeln!(formatter, "    | {}", line.trim_end_matches('\r'))?;
        }
        if !self.qemu_output.trim().is_empty() {
            writeln!(formatter, "QEMU said:")?;
            for line in self.qemu_output.lines() {
                writeln!(formatter, "    | {line}")?;
            }
        }
        Ok(())
    }
}

/// Everything that can go wrong in the harness.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation of the harness itself failed.
    Io {
        /// What the harness was doing.
        context: String,
        source: io::Error,
    },
    /// Building a kernel image failed.
    Build {
        /// The command line that failed.
        command: String,
        /// Its standard error.
        stderr: String,
    },
    /// The Rust target for the kernel is missing and could not be installed.
    TargetMissing {
        /// What was tried and what it said.
        detail: String,
    },
    /// `qemu-system-x86_64` is missing and could not be installed.
    QemuMissing {
        /// What was tried and what it said.
        detail: String,
    },
    /// A Linux guest's kernel or initramfs could not be fetched or built.
    GuestImage {
        /// What was tried and what it said.
        detail: String,
    },
    /// QEMU exited before connecting the probe-port socket.
    NoPortConnection { console: ConsoleLog },
    /// The probe port failed (read or write error, or the deadline passed) while the
    /// caller used it; QEMU was killed.
    Port { detail: String, console: ConsoleLog },
    /// The run did not end within its timeout; QEMU was killed.
    Timeout {
        timeout: Duration,
        console: ConsoleLog,
    },
    /// The console has no usable verdict line.
    Verdict {
        problem: VerdictProblem,
        exit_status: Option<i32>,
        console: ConsoleLog,
    },
    /// The guest printed `VERDICT: FAIL <reason>`.
    GuestFailed {
        reason: String,
        exit_status: Option<i32>,
        console: ConsoleLog,
    },
    /// The guest printed `VERDICT: PASS` but QEMU's exit status is not 33.
    ExitStatus {
        exit_status: Option<i32>,
        console: ConsoleLog,
    },
}

impl Error {
    /// The console log, for the errors that concern a run.
    pub fn console(&self) -> Option<&ConsoleLog> {
        match self {
            Error::NoPortConnection { console }
            | Error::Port { console, .. }
            | Error::Timeout { console, .. }
            | Error::Verdict { console, .. }
            | Error::GuestFailed { console, .. }
            | Error::ExitStatus { console, .. } => Some(console),
            Error::Io { .. }
            | Error::Build { .. }
            | Error::TargetMissing { .. }
            | Error::QemuMissing { .. }
            | Error::GuestImage { .. } => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Displays an exit status: a number, or "killed by a signal".
struct Status(Option<i32>);

impl fmt::Display for Status {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(code) => write!(formatter, "exit status {code}"),
            None => formatter.write_str("no exit status (killed by a signal)"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(formatter, "{context}: {source}"),
            Error::Build { command, stderr } => write!(
                formatter,
                "building the kernel failed: `{command}`:\n{stderr}"
            ),
            Error::TargetMissing { detail } => write!(
                formatter,
                "the Rust target for the kernel is missing: {detail}"
            ),
            Error::QemuMissing { detail } => {
                write!(formatter, "qemu-system-x86_64 is not available: {detail}")
            }
            Error::GuestImage { detail } => {
                write!(
                    formatter,
                    "the Linux guest image is not available: {detail}"
                )
            }
            Error::NoPortConnection { console } => {
                write!(
                    formatter,
                    "QEMU exited without connecting the probe-port socket; {console}"
                )
            }
            Error::Port { detail, console } => {
                write!(formatter, "probe port: {detail}; QEMU killed; {console}")
            }
            Error::Timeout { timeout, console } => {
                write!(
                    formatter,
                    "the run did not finish within {timeout:?}; QEMU killed; {console}"
                )
            }
            Error::Verdict {
                problem,
                exit_status,
                console,
            } => {
                let hint = if *exit_status == Some(0) && *problem == VerdictProblem::Missing {
                    " (with -no-reboot, QEMU exits 0 when the guest triple-faults or resets)"
                } else {
                    ""
                };
                write!(
                    formatter,
                    "{problem} ({}){hint}; {console}",
                    Status(*exit_status)
                )
            }
            Error::GuestFailed {
                reason,
                exit_status,
                console,
            } => {
                write!(
                    formatter,
                    "the guest failed: {reason} ({}); {console}",
                    Status(*exit_status)
                )
            }
            Error::ExitStatus {
                exit_status,
                console,
            } => {
                write!(
                    formatter,
                    "the guest passed but QEMU ended with {}, not 33; {console}",
                    Status(*exit_status)
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
