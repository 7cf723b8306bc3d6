//! The probe port: the kernel port object through which the relay reaches the stub.
//!
//! # Design
//!
//! The probe port is an ordinary port of the port table (`ipc.rs`) with two special
//! rules:
//!
//! - its **receive right belongs to the stub side** (the kernel itself): requests are
//!   not queued for a thread but handed to the stub synchronously by [`submit`];
//! - its **send right is granted once, to the relay thread** ([`grant_relay_right`]),
//!   which bridges COM2. Nobody else can get one, so the port — arming probes,
//!   reading kernel memory through handlers — is reachable only through the relay.
//!
//! [`submit`] is the only way in. It resolves the caller's right in the caller's own
//! right table: anything but a send right *to the probe port* (no such name, a
//! receive right, a send right to another port) is refused with [`NotPrivileged`],
//! and the kernel prints `probe-port: refused unprivileged thread <tid> (<name>):
//! <reason>`. The caller still gets an answer on the wire: every request frame it
//! sent is answered `NOT_PRIVILEGED` by the stub (`Stub::refuse_unprivileged`),
//! which touches nothing else. An accepted submit goes to the stub's byte-level
//! server, `Stub::serve_bytes(input, write)`: request frames in, reply, event and
//! loss frames out through the callback, so the relay writes them straight to COM2.
//!
//! # Invariants
//!
//! - Exactly one send right to the probe port exists, in the relay's table.
//! - A refused submit reaches nothing of the stub.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use probe_port_protocol::frame::{FrameDecoder, encode_stub_message};

use crate::console::println;
use crate::ipc::{self, IpcError, PortId, RightKind, RightName};
use crate::probe_platform::STUB;
use crate::sched::{self, Thread};

/// Largest request frame payload a refused caller gets an answer to (refusals are
/// decoded on the caller's stack).
const REFUSED_PAYLOAD: usize = 256;

/// The probe port's id, `u32::MAX` until [`create`].
static PORT: AtomicU32 = AtomicU32::new(u32::MAX);
static RELAY_RIGHT_GRANTED: AtomicBool = AtomicBool::new(false);

/// Requests the rights check accepted.
pub(crate) static ACCEPTED: AtomicU64 = AtomicU64::new(0);
/// Requests the rights check refused.
pub(crate) static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Why a submit was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The name is not a send right of the caller.
    NoSendRight(IpcError),
    /// The name is a send right, but to another port.
    OtherPort(PortId),
    /// The probe port does not exist (yet).
    NoProbePort,
}

/// A submit from a thread that does not hold the probe port's send right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NotPrivileged {
    /// The caller.
    pub(crate) tid: u32,
    pub(crate) reason: Refusal,
}

impl fmt::Display for NotPrivileged {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "thread {} may not use the probe port: ",
            self.tid
        )?;
        match self.reason {
            Refusal::NoSendRight(error) => write!(formatter, "{error}"),
            Refusal::OtherPort(port) => write!(
                formatter,
                "its right names port {} ({}), not the probe port",
                port.0,
                ipc::label(port)
            ),
            Refusal::NoProbePort => formatter.write_str("there is no probe port"),
        }
    }
}

/// The probe port, if created.
pub(crate) fn port() -> Option<PortId> {
    match PORT.load(Ordering::Acquire) {
        u32::MAX => None,
        id => Some(PortId(id)),
    }
}

/// Creates the probe port and gives its receive right to the stub side.
pub(crate) fn create() -> Result<PortId, IpcError> {
    let port = ipc::create_port("probe", 1)?;
    ipc::attach_kernel_receiver(port)?;
    PORT.store(port.0, Ordering::Release);
    Ok(port)
}

/// Grants the probe port's one send right to `relay`. Panics on a second call: the
/// right exists once.
pub(crate) fn grant_relay_right(relay: &Thread) -> Result<RightName, IpcError> {
    assert!(
        !RELAY_RIGHT_GRANTED.swap(true, Ordering::AcqRel),
        "the probe port's send right is granted once"
    );
    let port = port().expect("the probe port exists before the relay");
    ipc::grant(relay, port, RightKind::Send)
}

/// Hands `request` (bytes of the wire: frames, possibly partial) to the stub on
/// behalf of the calling thread, which names its send right to the probe port with
/// `right`; the stub's bytes (replies, then pending events and loss reports) go to
/// `reply`. Returns how many bytes were written. Refuses (and reports on the
/// console) a caller without that right, whose request frames are each answered
/// `NOT_PRIVILEGED` through `reply`.
#[inline(never)]
pub(crate) fn submit(
    right: RightName,
    request: &[u8],
    reply: &mut dyn FnMut(&[u8]),
) -> Result<usize, NotPrivileged> {
    let caller = sched::current();
    let reason = match (port(), ipc::resolve(right, RightKind::Send)) {
        (None, _) => Some(Refusal::NoProbePort),
        (_, Err(error)) => Some(Refusal::NoSendRight(error)),
        (Some(probe), Ok(port)) if port != probe => Some(Refusal::OtherPort(port)),
        (Some(_), Ok(_)) => None,
    };
    if let Some(reason) = reason {
        REFUSED.fetch_add(1, Ordering::Relaxed);
        let refusal = NotPrivileged {
            tid: caller.id,
            reason,
        };
        println!(
            "probe-port: refused unprivileged thread {} ({}): {refusal}",
            caller.id,
            caller.name()
        );
        refuse_frames(request, reply);
        return Err(refusal);
    }
    ACCEPTED.fetch_add(1, Ordering::Relaxed);
    let mut written = 0;
    STUB.serve_bytes(request, &mut |bytes| {
        written += bytes.len();
        reply(bytes);
    });
    Ok(written)
}

/// Answers every request frame in `request` with `NOT_PRIVILEGED`.
fn refuse_frames(request: &[u8], reply: &mut dyn FnMut(&[u8])) {
    let mut decoder = FrameDecoder::<{ REFUSED_PAYLOAD + 4 }>::new();
    let mut input = request;
    while !input.is_empty() {
        let Some(Ok(payload)) = decoder.feed(&mut input) else {
            continue;
        };
        STUB.refuse_unprivileged(payload, &mut |message| {
            let mut scratch = [0u8; 64];
            let mut frame = [0u8; 80];
            if let Ok(length) = encode_stub_message(message, &mut scratch, &mut frame) {
                reply(&frame[..length]);
            }
        });
    }
}
