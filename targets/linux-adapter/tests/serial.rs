//! The daemon serving the port on a serial line (`--serial`), here the slave side
//! of a pseudo-terminal with the test as the client on the master side: the same
//! frames as on the socket, sessions one after another on the same line.

mod common;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::message::{ReplyBody, RequestBody};
use userland_client::port::{Port, TimedRead};

/// The master side of a pseudo-terminal, with read timeouts through `poll`.
struct Master {
    file: File,
    timeout: Option<Duration>,
}

impl Read for Master {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if let Some(timeout) = self.timeout {
            let mut descriptor = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd.
            match unsafe { libc::poll(&mut descriptor, 1, millis) } {
                0 => return Err(io::ErrorKind::WouldBlock.into()),
                n if n < 0 => return Err(io::Error::last_os_error()),
                _ => {}
            }
        }
        self.file.read(buffer)
    }
}

impl Write for Master {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.file.write(bytes)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl TimedRead for Master {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.timeout = timeout;
        Ok(())
    }
}

/// A pseudo-terminal: its master and the slave's path.
fn pseudo_terminal() -> (File, String) {
    // SAFETY: plain libc calls on the descriptor they return.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(master >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let name = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        // The master stays raw too: the slave's settings govern the line.
        (File::from_raw_fd(master), name)
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hello(port: &mut Port<Master>) {
    let reply = port.hello("serial test").expect("hello answered");
    match reply.ok().expect("hello accepted") {
        ReplyBody::Hello(hello) => {
            assert!(hello.kernel.name.starts_with("Linux "), "{hello:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn sessions_follow_one_another_on_a_serial_line_and_garbage_is_skipped() {
    common::require_root();
    let (master, slave) = pseudo_terminal();
    let daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_probeport-linuxd"))
            .args(["--serial", &slave, "--lease-ms", "1500"])
            .stdin(Stdio::null())
            .spawn()
            .expect("the daemon starts"),
    );
    // The daemon flushes the line when it opens it: wait until it has.
    std::thread::sleep(Duration::from_millis(500));
    let mut port = Port::new(Master {
        file: master,
        timeout: None,
    });
    port.set_timeout(Duration::from_secs(10));

    // A first session, ended by Goodbye.
    hello(&mut port);
    port.request(RequestBody::KeepAlive)
        .expect("keep-alive answered")
        .ok()
        .expect("keep-alive accepted");
    port.request(RequestBody::Goodbye)
        .expect("goodbye answered")
        .ok()
        .expect("goodbye accepted");

    // Line noise between sessions is skipped; the next Hello opens a new session.
    port.send_raw(b"\x00\xffnoise on the line\r\n\x7e\x00")
        .expect("noise written");
    hello(&mut port);
    // A second Hello in an open session is refused as on the socket.
    let again = port.hello("again").expect("answered");
    let error = again.get().expect_err("second hello refused");
    assert_eq!(error.code, ErrorCode::BAD_STATE);

    // Silence past the lease ends that session; the line then serves a new one.
    std::thread::sleep(Duration::from_millis(2500));
    let after = port
        .request(RequestBody::KeepAlive)
        .expect("answered after the lease");
    assert_eq!(
        after.get().expect_err("the expired session is gone").code,
        ErrorCode::NO_HANDSHAKE
    );
    hello(&mut port);
    port.request(RequestBody::Goodbye)
        .expect("goodbye answered")
        .ok()
        .expect("goodbye accepted");
    drop(daemon);
}
