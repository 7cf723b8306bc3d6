//! Where a probe port is: one [`Target`] implementation per kind of kernel
//! connection, each handing the session a byte stream.
//!
//! # Design
//!
//! The session ([`crate::session`]) speaks PROTOCOL.md over any [`TimedRead`]
//! stream and never asks where it comes from. A target only opens that stream: a
//! Unix socket ([`UnixSocket`]: QEMU's COM2 relay, the Linux adapter), a serial
//! device ([`Serial`], raw mode), a recorded session ([`Replayed`], for fast tests
//! without a kernel), or the demo kernel booted here under QEMU ([`DemoKernel`]).
//! Any of them can be recorded by wrapping its stream in a
//! [`Recorder`](crate::record::Recorder).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::port::TimedRead;
use crate::record::Replay;

/// A probe port stream.
pub type Link = Box<dyn TimedRead + Send>;

/// A kind of connection to a kernel's probe port.
pub trait Target {
    /// For messages: what this target is (`unix:/run/probe.sock`).
    fn describe(&self) -> String;

    /// Opens the port. Called once per session.
    fn connect(&mut self) -> io::Result<Link>;
}

/// A Unix socket serving the port (`--port unix:PATH`).
#[derive(Debug)]
pub struct UnixSocket {
    /// The socket's path.
    pub path: PathBuf,
}

impl Target for UnixSocket {
    fn describe(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    fn connect(&mut self) -> io::Result<Link> {
        let stream = UnixStream::connect(&self.path).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot connect to {}: {error}", self.path.display()),
            )
        })?;
        Ok(Box::new(stream))
    }
}

/// A serial device carrying the port (`--port serial:/dev/ttyS1`), set to raw mode.
#[derive(Debug)]
pub struct Serial {
    /// The device's path.
    pub path: PathBuf,
}

impl Target for Serial {
    fn describe(&self) -> String {
        format!("serial:{}", self.path.display())
    }

    fn connect(&mut self) -> io::Result<Link> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot open {}: {error}", self.path.display()),
                )
            })?;
        set_raw(&file)?;
        Ok(Box::new(SerialStream::new(file)))
    }
}

/// Puts a terminal device in raw mode (no echo, no line editing, 8-bit bytes); a
/// file that is not a terminal (a FIFO, a plain file in tests) is left alone.
fn set_raw(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: `termios` is plain data; `tcgetattr` fills it or fails.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the lifetime of `file`; `termios` is a valid pointer.
    if unsafe { libc::tcgetattr(fd, &mut termios) } != 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ENOTTY | libc::EINVAL) => Ok(()),
            _ => Err(error),
        };
    }
    // SAFETY: `termios` was filled by `tcgetattr`.
    unsafe { libc::cfmakeraw(&mut termios) };
    // SAFETY: as above; TCSANOW applies the settings at once.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A serial device (or the master side of a pseudo-terminal) with read timeouts
/// through `poll`.
#[derive(Debug)]
pub struct SerialStream {
    file: File,
    timeout: Option<Duration>,
}

impl SerialStream {
    /// The stream of `file`, an open terminal left as it is set up (`open` puts a
    /// device in raw mode first); reads block until a timeout is set.
    pub fn new(file: File) -> Self {
        SerialStream {
            file,
            timeout: None,
        }
    }
}

impl Read for SerialStream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if let Some(timeout) = self.timeout {
            let mut descriptor = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: one valid `pollfd` for an open descriptor.
            let ready = unsafe { libc::poll(&mut descriptor, 1, millis) };
            match ready {
                0 => return Err(io::ErrorKind::WouldBlock.into()),
                n if n < 0 => return Err(io::Error::last_os_error()),
                _ => {}
            }
        }
        self.file.read(buffer)
    }
}

impl Write for SerialStream {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.file.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl TimedRead for SerialStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.timeout = timeout;
        Ok(())
    }
}

/// A recorded session played back (`--replay FILE`).
#[derive(Debug)]
pub struct Replayed {
    /// The recording.
    pub path: PathBuf,
}

impl Target for Replayed {
    fn describe(&self) -> String {
        format!("the recording {}", self.path.display())
    }

    fn connect(&mut self) -> io::Result<Link> {
        Ok(Box::new(Replay::open(&self.path)?))
    }
}

/// The demo kernel booted under QEMU by the client (`--demo`), with
/// `demo.wait_start` so that its workload waits for the session's `Start`.
pub struct DemoKernel {
    /// The kernel image.
    pub image: PathBuf,
    /// How long QEMU may run in all.
    pub timeout: Duration,
    machine: Option<qemu::Qemu>,
}

impl std::fmt::Debug for DemoKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoKernel")
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

impl DemoKernel {
    /// The demo kernel at `image` (see [`DemoKernel::build`]).
    pub fn new(image: PathBuf, timeout: Duration) -> Self {
        Self {
            image,
            timeout,
            machine: None,
        }
    }

    /// Builds the demo kernel image (release, full DWARF) and returns its path.
    pub fn build() -> io::Result<PathBuf> {
        qemu::build_demo_kernel().map_err(|error| io::Error::other(error.to_string()))
    }

    /// The QEMU console so far (for messages when the session fails).
    pub fn console(&self) -> Option<String> {
        self.machine.as_ref().map(qemu::Qemu::console)
    }

    /// The image path.
    pub fn image(&self) -> &Path {
        &self.image
    }
}

impl Target for DemoKernel {
    fn describe(&self) -> String {
        format!("the demo kernel {} under QEMU", self.image.display())
    }

    fn connect(&mut self) -> io::Result<Link> {
        let config = qemu::Config::new(&self.image)
            .append("demo.wait_start")
            .tcg_threading(qemu::TcgThreading::Single)
            .timeout(self.timeout);
        let mut machine = qemu::Qemu::start(&config)
            .map_err(|error| io::Error::other(format!("cannot boot the demo kernel: {error}")))?;
        let port = machine
            .take_port()
            .ok_or_else(|| io::Error::other("QEMU started without the probe port"))?;
        self.machine = Some(machine);
        Ok(Box::new(port))
    }
}
