//! The probe port on a serial device (`probeport-linuxd --serial /dev/ttyS1`).
//!
//! # Design
//!
//! The device is opened read-write without becoming the controlling terminal and
//! put in raw mode: no echo, no line discipline, no character translation, 8 data
//! bits, no parity, one stop bit, the receiver on and modem lines ignored
//! (`CLOCAL`), reads returning as soon as one byte is there. The bytes are the
//! same frames as on the Unix socket. There is one client at a time by
//! construction (one line); whoever can open the device holds the right to the
//! port, so no credentials are checked. A session ends as on the socket: on
//! `Goodbye`, on lease expiry, or when the line reports end of file; then a fresh
//! session waits on the same line for the next `Hello`. Bytes that do not form a
//! frame are skipped by the decoder, as on the socket.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::server::{Config, serve_stream};
use crate::sys::UprobePmu;

/// Opens `path` and puts the line in raw 8N1 mode at 115200 baud.
pub fn open(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let fd = file.as_raw_fd();
    // SAFETY: `termios` is plain data that `tcgetattr` fills.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a pointer to a `termios`.
    if unsafe { libc::tcgetattr(fd, &mut tio) } != 0 {
        return Err(io::Error::last_os_error());
    }
    raw_8n1(&mut tio);
    // SAFETY: a valid `termios`; the speed constant is one the C library knows.
    unsafe {
        libc::cfsetispeed(&mut tio, libc::B115200);
        libc::cfsetospeed(&mut tio, libc::B115200);
    }
    // SAFETY: a valid descriptor and `termios`.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &tio) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Whatever arrived before the daemon was listening is not a request to it.
    // SAFETY: a valid descriptor.
    unsafe { libc::tcflush(fd, libc::TCIOFLUSH) };
    Ok(file)
}

/// Raw mode: every input and output translation off, no echo, no signals, no
/// canonical line editing; 8 data bits, no parity, one stop bit; one byte
/// satisfies a read.
fn raw_8n1(tio: &mut libc::termios) {
    tio.c_iflag &= !(libc::IGNBRK
        | libc::BRKINT
        | libc::PARMRK
        | libc::ISTRIP
        | libc::INLCR
        | libc::IGNCR
        | libc::ICRNL
        | libc::IXON
        | libc::IXOFF
        | libc::IXANY
        | libc::INPCK);
    tio.c_oflag &= !libc::OPOST;
    tio.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
    tio.c_cflag &= !(libc::CSIZE | libc::PARENB | libc::CSTOPB | libc::CRTSCTS);
    tio.c_cflag |= libc::CS8 | libc::CREAD | libc::CLOCAL;
    tio.c_cc[libc::VMIN] = 1;
    tio.c_cc[libc::VTIME] = 0;
}

/// Serves sessions on the line at `path` forever, one after the other.
pub fn serve(path: &Path, pmu: UprobePmu, config: &Config) -> io::Result<()> {
    let line = open(path)?;
    // Only now: bytes sent before this point were flushed.
    eprintln!("probeport-linuxd: serving {}", path.display());
    loop {
        let began = Instant::now();
        // Said for every session, so whoever shares the machine with the line (a
        // test's guest, say) can tell when the client is done with the port.
        match serve_stream(&line, true, pmu, config) {
            Ok(()) => eprintln!("probeport-linuxd: session ended"),
            Err(cause) => eprintln!("probeport-linuxd: session ended: {cause}"),
        }
        // A line that reports end of file at once (a hang-up) is not spun on.
        if began.elapsed() < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_mode_clears_translation_and_sets_8n1() {
        // SAFETY: `termios` is plain data.
        let mut tio: libc::termios = unsafe { std::mem::zeroed() };
        tio.c_iflag = libc::ICRNL | libc::IXON;
        tio.c_oflag = libc::OPOST | libc::ONLCR;
        tio.c_lflag = libc::ECHO | libc::ICANON | libc::ISIG;
        tio.c_cflag = libc::PARENB | libc::CSTOPB | libc::CS7;
        raw_8n1(&mut tio);
        assert_eq!(tio.c_iflag & (libc::ICRNL | libc::IXON), 0);
        assert_eq!(tio.c_oflag & libc::OPOST, 0);
        assert_eq!(tio.c_lflag & (libc::ECHO | libc::ICANON | libc::ISIG), 0);
        assert_eq!(tio.c_cflag & libc::CSIZE, libc::CS8);
        assert_eq!(tio.c_cflag & (libc::PARENB | libc::CSTOPB), 0);
        assert_ne!(tio.c_cflag & libc::CLOCAL, 0);
        assert_eq!(tio.c_cc[libc::VMIN], 1);
    }

    #[test]
    fn a_pseudo_terminal_line_opens_in_raw_mode() {
        // SAFETY: plain libc calls; the descriptor is closed below.
        let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
        assert!(master >= 0);
        // SAFETY: a pseudo-terminal master.
        assert_eq!(unsafe { libc::grantpt(master) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::unlockpt(master) }, 0);
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: a buffer of the size given.
        let named = unsafe { libc::ptsname_r(master, name.as_mut_ptr(), name.len()) };
        assert_eq!(named, 0);
        // SAFETY: `ptsname_r` wrote a NUL-terminated name.
        let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        let line = open(Path::new(name.to_str().unwrap())).expect("open the slave");
        // SAFETY: `termios` is plain data that `tcgetattr` fills.
        let mut tio: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor.
        assert_eq!(unsafe { libc::tcgetattr(line.as_raw_fd(), &mut tio) }, 0);
        assert_eq!(tio.c_lflag & (libc::ECHO | libc::ICANON), 0);
        assert_eq!(tio.c_cflag & libc::CSIZE, libc::CS8);
        drop(line);
        // SAFETY: our descriptor.
        unsafe { libc::close(master) };
    }
}
