//! The probe port on a Unix socket: one privileged client at a time.
//!
//! # Design
//!
//! The socket file is created with mode 0600 (root only) unless told otherwise.
//! Each connection's peer credentials (`SO_PEERCRED`) are checked as well: uid 0,
//! or `CAP_PERFMON` or `CAP_SYS_ADMIN` in the peer's effective set
//! (`/proc/PID/status`, `CapEff`). An unprivileged peer gets `NOT_PRIVILEGED` to
//! its first request and is disconnected; so is a client that comes while another
//! client's session is open (`BAD_STATE`). A privileged client is served until it
//! says goodbye, closes the stream, or lets the lease expire; then its session is
//! dropped, which closes every kernel object it created.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::frame::{DefaultFrameDecoder, encode_message_vec};
use probe_port_protocol::message::{
    ErrorDetail, ErrorReply, StubMessage, UNATTRIBUTED_SEQ, classify_undecodable, decode_request,
};

use crate::session::Session;
use crate::sys::UprobePmu;

/// `CAP_SYS_ADMIN`'s bit in capability sets.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON`'s bit in capability sets.
const CAP_PERFMON: u32 = 38;

/// How the daemon serves.
#[derive(Clone, Debug)]
pub struct Config {
    /// Lease in milliseconds announced in the handshake (0: none).
    pub lease_ms: u32,
    /// Mode of the socket file (0o600 unless testing the credential check).
    pub socket_mode: u32,
    /// Bytes of each session's event ring (a power of two, at least a page).
    pub ring_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lease_ms: 10_000,
            socket_mode: 0o600,
            ring_bytes: crate::session::RING_BYTES,
        }
    }
}

/// Binds the socket at `path` (replacing a stale one) with the configured mode.
pub fn bind(path: &Path, config: &Config) -> io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    // Nobody may connect between bind and chmod.
    // SAFETY: umask has no preconditions.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode))?;
    Ok(listener)
}

/// The peer's process id and user id (`SO_PEERCRED`).
pub fn peer_credentials(stream: &UnixStream) -> io::Result<(i32, u32)> {
    // SAFETY: `ucred` is plain data.
    let mut credentials: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket, a buffer of `len` bytes for the option.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((credentials.pid, credentials.uid))
}

/// Whether a process's effective capabilities (`CapEff` of `/proc/PID/status`)
/// include `CAP_PERFMON` or `CAP_SYS_ADMIN`.
fn has_tracing_capability(status: &str) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|set| set & (1 << CAP_PERFMON | 1 << CAP_SYS_ADMIN) != 0)
}

/// Whether the peer may use the port.
pub fn privileged(stream: &UnixStream) -> bool {
    let Ok((pid, uid)) = peer_credentials(stream) else {
        return false;
    };
    uid == 0
        || std::fs::read_to_string(format!("/proc/{pid}/status"))
            .is_ok_and(|status| has_tracing_capability(&status))
}

fn send(stream: &mut impl Write, message: &StubMessage<'_>) -> io::Result<()> {
    let frame = encode_message_vec(message).map_err(|_| io::Error::other("unencodable message"))?;
    stream.write_all(&frame)
}

/// Serves connections forever, one session at a time: a client that connects
/// while another's session is open gets `BAD_STATE` ("another session is open")
/// to its first request and is disconnected.
pub fn serve(listener: &UnixListener, pmu: UprobePmu, config: &Config) -> io::Result<()> {
    let busy = Arc::new(AtomicBool::new(false));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(cause) => {
                eprintln!("probeport-linuxd: accept: {cause}");
                continue;
            }
        };
        if busy.swap(true, Ordering::AcqRel) {
            std::thread::spawn(move || refuse_busy(stream));
            continue;
        }
        let (busy, config) = (Arc::clone(&busy), config.clone());
        std::thread::spawn(move || {
            if let Err(cause) = serve_one(stream, pmu, &config) {
                eprintln!("probeport-linuxd: session ended: {cause}");
            }
            busy.store(false, Ordering::Release);
        });
    }
    Ok(())
}

/// Answers the first request of a client that came while a session is open.
fn refuse_busy(mut stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut decoder = Box::new(DefaultFrameDecoder::new());
    let mut buffer = [0u8; 4096];
    while let Ok(read) = stream.read(&mut buffer) {
        if read == 0 {
            return;
        }
        let mut input = &buffer[..read];
        if let Some(frame) = decoder.feed(&mut input) {
            let seq = frame
                .ok()
                .and_then(|payload| decode_request(payload).ok())
                .map_or(UNATTRIBUTED_SEQ, |request| request.seq);
            let _ = send(
                &mut stream,
                &StubMessage::Reply {
                    seq,
                    reply: Err(ErrorReply::with(
                        ErrorCode::BAD_STATE,
                        ErrorDetail::Text("another session is open"),
                    )),
                },
            );
            return;
        }
    }
}

/// Serves one connection to its end. Every kernel object of the session is
/// closed when this returns, however it returns.
pub fn serve_one(stream: UnixStream, pmu: UprobePmu, config: &Config) -> io::Result<()> {
    let allowed = privileged(&stream);
    serve_stream(stream, allowed, pmu, config)
}

/// Serves one client on any byte stream (a Unix socket, a serial device) to its
/// end: `Goodbye`, end of stream, or lease expiry. `allowed` says whether the
/// client holds the right to the port; if not, its first request gets
/// `NOT_PRIVILEGED` and the stream is left.
pub fn serve_stream<S: Read + Write + AsFd>(
    mut stream: S,
    allowed: bool,
    pmu: UprobePmu,
    config: &Config,
) -> io::Result<()> {
    let mut session = Session::new(pmu, config.lease_ms, config.ring_bytes)?;
    let mut decoder = Box::new(DefaultFrameDecoder::new());
    let mut buffer = vec![0u8; 64 * 1024];
    let mut last_request = Instant::now();
    let lease = (config.lease_ms > 0).then(|| Duration::from_millis(config.lease_ms.into()));
    loop {
        let mut descriptors = [
            libc::pollfd {
                fd: stream.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: session.ring_fd().unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd structures (a negative fd is ignored).
        let ready = unsafe { libc::poll(descriptors.as_mut_ptr(), 2, 50) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        let mut outgoing: Vec<u8> = Vec::new();
        let mut push = |message: &StubMessage<'_>| {
            if let Ok(frame) = encode_message_vec(message) {
                outgoing.extend_from_slice(&frame);
            }
        };
        if session.is_open() {
            session.drain(&mut push);
        }
        if descriptors[0].revents != 0 {
            let read = match stream.read(&mut buffer) {
                Ok(0) => return Ok(()), // The client left: the session drops.
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => 0,
                Err(error) => return Err(error),
            };
            let mut input = &buffer[..read];
            while let Some(frame) = decoder.feed(&mut input) {
                let Ok(payload) = frame else {
                    continue; // Dropped frames are the client's to notice.
                };
                if !allowed {
                    let seq = decode_request(payload)
                        .map(|request| request.seq)
                        .unwrap_or(UNATTRIBUTED_SEQ);
                    send(
                        &mut stream,
                        &StubMessage::Reply {
                            seq,
                            reply: Err(ErrorReply::new(ErrorCode::NOT_PRIVILEGED)),
                        },
                    )?;
                    return Ok(());
                }
                last_request = Instant::now();
                match decode_request(payload) {
                    Ok(request) => session.handle(&request, &mut push),
                    Err(_) => {
                        let undecodable = classify_undecodable(payload);
                        push(&StubMessage::Reply {
                            seq: undecodable.seq,
                            reply: Err(ErrorReply::new(undecodable.code)),
                        });
                    }
                }
            }
        }
        if !outgoing.is_empty() {
            stream.write_all(&outgoing)?;
        }
        if session.ended() {
            return Ok(());
        }
        if session.is_open()
            && let Some(lease) = lease
            && last_request.elapsed() > lease
        {
            eprintln!("probeport-linuxd: lease expired, ending the session");
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_come_from_the_effective_set() {
        let status = |eff: &str| format!("Name:\tx\nCapInh:\t0\nCapEff:\t{eff}\nCapBnd:\t0\n");
        assert!(has_tracing_capability(&status("0000004000000000")));
        assert!(has_tracing_capability(&status("0000000000200000")));
        assert!(!has_tracing_capability(&status("0000000000000000")));
        assert!(!has_tracing_capability(&status("0000000000000001")));
        assert!(!has_tracing_capability("Name:\tx\n"));
    }
}
