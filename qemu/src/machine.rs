//! One QEMU run: configuration, start-up with the probe port wired, deadline, verdict.
//!
//! # Design
//!
//! The command line is fixed by what the demo kernel and the design need:
//!
//! ```text
//! qemu-system-x86_64 -nodefaults -machine q35 -accel tcg[,thread=single] -smp N -m 128M
//!     -nographic -no-reboot
//!     -chardev file,id=console,path=RUN/console.log -serial chardev:console
//!     -chardev socket,id=probe,path=RUN/probe.sock
//!     -device isa-serial,chardev=probe,iobase=0x2f8,irq=3
//!     -device isa-debug-exit,iobase=0xf4,iosize=0x04
//!     -kernel ELF [-append CMDLINE]
//! ```
//!
//! TCG always (KVM breaks int3 under the nested hypervisor of the build machines);
//! `thread=single` is available for guests that patch code another vCPU may run,
//! which multi-threaded TCG in QEMU 7.2 gets wrong. `-nodefaults` drops the NIC (and
//! its iPXE banner), VGA and monitor. Standard input is `/dev/null`; standard output
//! and error go to `RUN/qemu.log`.
//!
//! The harness listens on the socket first and QEMU connects as a client, so there is
//! no race; [`Qemu::start`] returns once the connection is accepted. Every wait is
//! bounded by the run's deadline, including reads and writes on the port.
//!
//! # Invariants
//!
//! - `Drop` kills and reaps QEMU if it still runs: no orphan, no zombie.
//! - The run directory is removed only after a passing [`Qemu::wait`].

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::install::{ensure_qemu, find_in_path};
use crate::verdict::{self, Verdict};
use crate::{ConsoleLog, Error};

/// QEMU's exit status when the guest writes 0x10 to `isa-debug-exit` (pass).
pub const EXIT_STATUS_PASS: i32 = 33;
/// QEMU's exit status when the guest writes 0x11 to `isa-debug-exit` (fail).
pub const EXIT_STATUS_FAIL: i32 = 35;

/// How often the harness polls QEMU and the socket while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How TCG runs the vCPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcgThreading {
    /// One host thread per vCPU (QEMU's default for x86 on x86).
    #[default]
    Multi,
    /// All vCPUs on one host thread, interleaved (`-accel tcg,thread=single`): needed
    /// when the guest patches code another vCPU may be executing.
    Single,
}

/// What to boot and how.
#[derive(Clone, Debug)]
pub struct Config {
    /// The kernel (an ELF with a PVH entry, or a Linux `bzImage`), passed to `-kernel`.
    pub kernel: PathBuf,
    /// The kernel command line (`-append`), if any.
    pub append: Option<String>,
    /// An initial RAM disk (`-initrd`), for Linux guests.
    pub initrd: Option<PathBuf>,
    /// Number of CPUs (`-smp`).
    pub cpus: u32,
    /// Guest memory in MiB (`-m`).
    pub memory_mib: u32,
    /// The machine type (`-machine`), `q35` by default.
    pub machine: String,
    /// TCG threading mode.
    pub tcg_threading: TcgThreading,
    /// Whether COM2 is wired to a Unix socket the caller gets (else COM2 is absent).
    pub probe_port: bool,
    /// Deadline for the whole run, from start to QEMU's exit.
    pub timeout: Duration,
    /// Extra arguments appended to QEMU's command line.
    pub extra_arguments: Vec<String>,
}

impl Config {
    /// Two CPUs, 128 MiB, q35, multi-threaded TCG, probe port wired, 60 s timeout.
    pub fn new(kernel: impl Into<PathBuf>) -> Config {
        Config {
            kernel: kernel.into(),
            append: None,
            initrd: None,
            cpus: 2,
            memory_mib: 128,
            machine: "q35".to_owned(),
            tcg_threading: TcgThreading::Multi,
            probe_port: true,
            timeout: Duration::from_secs(60),
            extra_arguments: Vec::new(),
        }
    }

    /// Sets the kernel command line.
    pub fn append(mut self, cmdline: impl Into<String>) -> Config {
        self.append = Some(cmdline.into());
        self
    }

    /// Sets the number of CPUs.
    pub fn cpus(mut self, cpus: u32) -> Config {
        self.cpus = cpus;
        self
    }

    /// Sets the TCG threading mode.
    pub fn tcg_threading(mut self, threading: TcgThreading) -> Config {
        self.tcg_threading = threading;
        self
    }

    /// Sets the run's timeout.
    pub fn timeout(mut self, timeout: Duration) -> Config {
        self.timeout = timeout;
        self
    }

    /// Wires COM2 to a socket (`true`, the default) or leaves it out.
    pub fn probe_port(mut self, wired: bool) -> Config {
        self.probe_port = wired;
        self
    }
}

/// A passing run.
#[derive(Debug)]
pub struct Outcome {
    /// QEMU's exit status (always [`EXIT_STATUS_PASS`] here).
    pub exit_status: i32,
    /// The whole console log.
    pub console: String,
    /// Time from starting QEMU to its exit.
    pub elapsed: Duration,
}

/// A running QEMU.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    reaped: Option<ExitStatus>,
    run_directory: PathBuf,
    console_path: PathBuf,
    qemu_output_path: PathBuf,
    port: Option<UnixStream>,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
}

impl Qemu {
    /// Installs QEMU if needed, binds the probe-port socket, starts QEMU and accepts
    /// its connection.
    ///
    /// QEMU is started with a parent-death signal (`SIGKILL`) when util-linux
    /// `setpriv` is available: it dies if the *thread* that started it exits, so keep
    /// the `Qemu` on that thread.
    pub fn start(config: &Config) -> Result<Qemu, Error> {
        let qemu_binary = ensure_qemu()?;
        if !config.kernel.is_file() {
            return Err(Error::io(
                format!("kernel image {}", config.kernel.display()),
                std::io::Error::new(ErrorKind::NotFound, "no such file"),
            ));
        }
        let run_directory = create_run_directory()?;
        let console_path = run_directory.join("console.log");
        let qemu_output_path = run_directory.join("qemu.log");
        let socket_path = run_directory.join("probe.sock");

        let listener = if config.probe_port {
            let listener = UnixListener::bind(&socket_path)
                .map_err(|error| Error::io(format!("binding {}", socket_path.display()), error))?;
            listener
                .set_nonblocking(true)
                .map_err(|error| Error::io("making the listener non-blocking", error))?;
            Some(listener)
        } else {
            None
        };

        let mut arguments: Vec<String> = vec![
            "-nodefaults".into(),
            "-machine".into(),
            config.machine.clone(),
            "-accel".into(),
            match config.tcg_threading {
                TcgThreading::Multi => "tcg".into(),
                TcgThreading::Single => "tcg,thread=single".into(),
            },
            "-smp".into(),
            config.cpus.to_string(),
            "-m".into(),
            format!("{}M", config.memory_mib),
            "-nographic".into(),
            "-no-reboot".into(),
            "-chardev".into(),
            format!(
                "file,id=console,path={}",
                escape_option_value(&console_path)
            ),
            "-serial".into(),
            "chardev:console".into(),
        ];
        if config.probe_port {
            arguments.extend([
                "-chardev".into(),
                format!("socket,id=probe,path={}", escape_option_value(&socket_path)),
                "-device".into(),
                "isa-serial,chardev=probe,iobase=0x2f8,irq=3".into(),
            ]);
        }
        arguments.extend([
            "-device".into(),
            "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
            "-kernel".into(),
            config.kernel.display().to_string(),
        ]);
        if let Some(initrd) = &config.initrd {
            arguments.extend(["-initrd".into(), initrd.display().to_string()]);
        }
        if let Some(cmdline) = &config.append {
            arguments.extend(["-append".into(), cmdline.clone()]);
        }
        arguments.extend(config.extra_arguments.iter().cloned());

        let qemu_output = File::create(&qemu_output_path).map_err(|error| {
            Error::io(format!("creating {}", qemu_output_path.display()), error)
        })?;
        let qemu_errors = qemu_output
            .try_clone()
            .map_err(|error| Error::io("duplicating the QEMU log handle", error))?;
        let mut command = match setpriv_with_pdeathsig() {
            Some(setpriv) => {
                let mut command = Command::new(setpriv);
                command
                    .args(["--pdeathsig", "KILL", "--"])
                    .arg(&qemu_binary);
                command
            }
            None => Command::new(&qemu_binary),
        };
        command
            .args(&arguments)
            .stdin(Stdio::null())
            .stdout(qemu_output)
            .stderr(qemu_errors);
        fs::write(
            run_directory.join("command.txt"),
            format!("{} {}\n", qemu_binary.display(), arguments.join(" ")),
        )
        .map_err(|error| Error::io("writing command.txt", error))?;

        let started = Instant::now();
        let child = command
            .spawn()
            .map_err(|error| Error::io(format!("starting {}", qemu_binary.display()), error))?;
        let mut qemu = Qemu {
            child,
            reaped: None,
            run_directory,
            console_path,
            qemu_output_path,
            port: None,
            started,
            deadline: started + config.timeout,
            timeout: config.timeout,
        };
        if let Some(listener) = listener {
            qemu.port = Some(qemu.accept(&listener)?);
        }
        Ok(qemu)
    }

    /// Waits for QEMU's connection to the probe-port socket, within the deadline.
    fn accept(&mut self, listener: &UnixListener) -> Result<UnixStream, Error> {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream
                        .set_nonblocking(false)
                        .map_err(|error| Error::io("configuring the port socket", error))?;
                    return Ok(stream);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                Err(error) => {
                    return Err(Error::io("accepting QEMU's probe-port connection", error));
                }
            }
            if self.poll_exit()?.is_some() {
                return Err(Error::NoPortConnection {
                    console: self.console_log(),
                });
            }
            if Instant::now() >= self.deadline {
                self.kill();
                return Err(Error::Timeout {
                    timeout: self.timeout,
                    console: self.console_log(),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding this run's console log, QEMU log and socket.
    pub fn run_directory(&self) -> &Path {
        &self.run_directory
    }

    /// Path of the console (COM1) log.
    pub fn console_path(&self) -> &Path {
        &self.console_path
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The connected probe-port stream, if COM2 is wired. Reads and writes on it are
    /// the caller's; prefer [`Qemu::read_port_line`] and [`Qemu::write_port`], which
    /// respect the deadline.
    pub fn port(&mut self) -> Option<&mut UnixStream> {
        self.port.as_mut()
    }

    /// Takes the probe-port stream out of the run (QEMU keeps running).
    pub fn take_port(&mut self) -> Option<UnixStream> {
        self.port.take()
    }

    /// Writes bytes to the probe port within the deadline. On failure QEMU is killed
    /// and the error carries the console.
    pub fn write_port(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let remaining = self.remaining().max(Duration::from_millis(1));
        let result = match self.port.as_mut() {
            None => Err(std::io::Error::new(
                ErrorKind::NotConnected,
                "COM2 is not wired to a socket",
            )),
            Some(port) => port
                .set_write_timeout(Some(remaining))
                .and_then(|()| port.write_all(bytes)),
        };
        result.map_err(|error| self.port_failure(format!("writing {} bytes: {error}", bytes.len())))
    }

    /// Reads one line (without its `\n`) from the probe port within the deadline.
    /// `Ok(None)` means the guest closed the port (QEMU exited) before any byte of a
    /// line. On failure QEMU is killed and the error carries the console.
    pub fn read_port_line(&mut self) -> Result<Option<String>, Error> {
        let mut line = Vec::new();
        loop {
            let remaining = self.remaining();
            let Some(port) = self.port.as_mut() else {
                return Err(self.port_failure("COM2 is not wired to a socket".to_owned()));
            };
            if remaining.is_zero() {
                return Err(self.port_failure(format!(
                    "no complete line before the deadline ({} bytes received)",
                    line.len()
                )));
            }
            let mut byte = [0u8; 1];
            let result = port
                .set_read_timeout(Some(remaining))
                .and_then(|()| port.read(&mut byte));
            match result {
                Ok(0) if line.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(self.port_failure(format!(
                        "the port closed in the middle of a line: {:?}",
                        String::from_utf8_lossy(&line)
                    )));
                }
                Ok(_) if byte[0] == b'\n' => {
                    return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
                }
                Ok(_) => line.push(byte[0]),
                Err(error) if matches!(error.kind(), ErrorKind::Interrupted) => {}
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(error) => return Err(self.port_failure(format!("reading: {error}"))),
            }
        }
    }

    fn port_failure(&mut self, detail: String) -> Error {
        self.kill();
        Error::Port {
            detail,
            console: self.console_log(),
        }
    }

    /// The console log so far.
    pub fn console(&self) -> String {
        read_lossy(&self.console_path)
    }

    /// Waits for QEMU to exit (killing it at the deadline) and judges the run: passes
    /// only with exactly one `VERDICT: PASS` line and exit status 33.
    pub fn wait(mut self) -> Result<Outcome, Error> {
        // Close our end of the port first: a guest blocked writing to a full port must
        // not keep QEMU alive (QEMU drops output for a disconnected socket).
        self.port = None;
        let status = loop {
            if let Some(status) = self.poll_exit()? {
                break status;
            }
            if Instant::now() >= self.deadline {
                self.kill();
                return Err(Error::Timeout {
                    timeout: self.timeout,
                    console: self.console_log(),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        };
        let elapsed = self.started.elapsed();
        let exit_status = status.code();
        let console = self.console_log();
        match verdict::parse(&console.contents) {
            Err(problem) => Err(Error::Verdict {
                problem,
                exit_status,
                console,
            }),
            Ok(Verdict::Fail(reason)) => Err(Error::GuestFailed {
                reason,
                exit_status,
                console,
            }),
            Ok(Verdict::Pass) if exit_status == Some(EXIT_STATUS_PASS) => {
                let outcome = Outcome {
                    exit_status: EXIT_STATUS_PASS,
                    console: console.contents,
                    elapsed,
                };
                // The run passed: nothing to keep.
                let _ = fs::remove_dir_all(&self.run_directory);
                Ok(outcome)
            }
            Ok(Verdict::Pass) => Err(Error::ExitStatus {
                exit_status,
                console,
            }),
        }
    }

    /// Kills QEMU (if it still runs) and reaps it.
    pub fn kill(&mut self) {
        if self.reaped.is_some() {
            return;
        }
        // Errors mean the process already exited; `wait` below reaps it either way.
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.reaped = Some(status);
        }
    }

    /// QEMU's exit status if it has exited (reaping it), `None` while it runs.
    fn poll_exit(&mut self) -> Result<Option<ExitStatus>, Error> {
        if let Some(status) = self.reaped {
            return Ok(Some(status));
        }
        let status = self
            .child
            .try_wait()
            .map_err(|error| Error::io("waiting for QEMU", error))?;
        self.reaped = status;
        Ok(status)
    }

    fn console_log(&self) -> ConsoleLog {
        ConsoleLog {
            path: self.console_path.clone(),
            contents: read_lossy(&self.console_path),
            qemu_output: read_lossy(&self.qemu_output_path),
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.port = None;
        self.kill();
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// A fresh, short directory for one run (socket paths must stay under 108 bytes).
fn create_run_directory() -> Result<PathBuf, Error> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    loop {
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("probeport-qemu-{}-{sequence}", std::process::id()));
        match fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(error) if error.kind() == ErrorKind::AlreadyExists => {
                // Left over by an earlier process with the same pid: remove and retry.
                let _ = fs::remove_dir_all(&path);
            }
            Err(error) => return Err(Error::io(format!("creating {}", path.display()), error)),
        }
    }
}

/// QEMU option values escape a comma by doubling it.
fn escape_option_value(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// `setpriv` if it supports `--pdeathsig` (util-linux 2.33 and later).
fn setpriv_with_pdeathsig() -> Option<PathBuf> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let setpriv = find_in_path("setpriv")?;
            let help = Command::new(&setpriv)
                .arg("--help")
                .stdin(Stdio::null())
                .output()
                .ok()?;
            String::from_utf8_lossy(&help.stdout)
                .contains("--pdeathsig")
                .then_some(setpriv)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_in_paths_are_doubled_for_qemu() {
        assert_eq!(
            escape_option_value(Path::new("/tmp/a,b/console.log")),
            "/tmp/a,,b/console.log"
        );
    }

    #[test]
    fn run_directories_are_distinct_and_short() {
        let first = create_run_directory().unwrap();
        let second = create_run_directory().unwrap();
        assert_ne!(first, second);
        assert!(first.join("probe.sock").as_os_str().len() < 100);
        fs::remove_dir_all(first).unwrap();
        fs::remove_dir_all(second).unwrap();
    }
}
