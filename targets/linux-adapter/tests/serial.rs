//! The daemon serving the port on a serial line (`--serial`), here the slave side
//! of a pseudo-terminal with the test as the client on the master side: the same
//! frames as on the socket, sessions one after another on the same line.

mod common;

use std::fs::File;
use std::os::fd::FromRawFd;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::message::{ReplyBody, RequestBody};
use userland_client::port::Port;
use userland_client::target::SerialStream;

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

fn hello(port: &mut Port<SerialStream>) {
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
    let mut port = Port::new(SerialStream::new(master));
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
