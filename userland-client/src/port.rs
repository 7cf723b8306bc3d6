//! A session on a probe port over a byte stream: requests, replies, events.
//!
//! # Design
//!
//! [`Port`] owns a byte stream (a Unix socket to QEMU's COM2, a serial device, a
//! socket to the Linux adapter) and speaks PROTOCOL.md over it: each request gets a
//! fresh sequence number and [`Port::request`] waits for the one reply with that
//! number. Events and lost-event reports that arrive meanwhile are kept, in arrival
//! order, for [`Port::take_unsolicited`]; frames the decoder had to drop are counted, never
//! ignored silently.
//!
//! Replies borrow from the receive buffer on the wire side; here they are copied into
//! owned forms ([`Reply`], [`OwnedEvent`]) so callers keep them as long as they like.
//!
//! # Invariants
//!
//! - A reply is matched to its request by sequence number; a reply for another
//!   number (or `UNATTRIBUTED_SEQ`) is an error, not something to skip.
//! - Every event and every lost range that arrives is handed out exactly once.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use probe_port_protocol::frame::{DefaultFrameDecoder, Dropped, encode_message_vec};
use probe_port_protocol::message::{
    ErrorReply, Event, LostEvents, PROTOCOL_VERSION, ReplyBody, Request, RequestBody, StubMessage,
    UNATTRIBUTED_SEQ, decode_stub_message,
};

/// What can go wrong on a port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The byte stream failed.
    /// (The cause is in the message, not a `source`, so that it is shown once.)
    #[error("probe port I/O: {0}")]
    Io(io::Error),
    /// No reply arrived in time.
    #[error("no reply to request {seq} within {timeout:?}")]
    Timeout {
        /// The request's sequence number.
        seq: u32,
        /// How long we waited.
        timeout: Duration,
    },
    /// The stream ended.
    #[error("the probe port closed")]
    Closed,
    /// A frame decoded but its message did not.
    #[error("undecodable message from the stub: {0}")]
    Undecodable(postcard::Error),
    /// A reply arrived for a request we did not send (or could not be attributed).
    #[error("reply with sequence number {got} while waiting for {expected}")]
    UnexpectedReply {
        /// The sequence number we waited for.
        expected: u32,
        /// The one that came.
        got: u32,
    },
    /// The stub refused the request.
    #[error("request refused: {0}")]
    Refused(String),
}

impl From<io::Error> for PortError {
    fn from(error: io::Error) -> Self {
        PortError::Io(error)
    }
}

/// An event, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedEvent {
    /// CPU it was emitted on.
    pub cpu: u16,
    /// Its per-CPU sequence number.
    pub seq: u64,
    /// The probe that emitted it.
    pub probe: u32,
    /// Monotonic nanoseconds at emission.
    pub time_ns: u64,
    /// The record.
    pub data: Vec<u8>,
}

impl From<&Event<'_>> for OwnedEvent {
    fn from(event: &Event<'_>) -> Self {
        Self {
            cpu: event.cpu,
            seq: event.seq,
            probe: event.probe.0,
            time_ns: event.time_ns,
            data: event.data.to_vec(),
        }
    }
}

/// Something unsolicited the stub sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unsolicited {
    /// A record a handler emitted.
    Event(OwnedEvent),
    /// Records lost on a CPU.
    Lost(LostEvents),
}

/// A reply, owned: the message's bytes, decoded again on demand.
#[derive(Clone, Debug)]
pub struct Reply {
    payload: Vec<u8>,
}

impl Reply {
    /// The reply as the stub sent it.
    pub fn get(&self) -> Result<ReplyBody<'_>, ErrorReply<'_>> {
        match decode_stub_message(&self.payload) {
            Ok(StubMessage::Reply { reply, .. }) => reply,
            _ => unreachable!("a Reply is only built from a decoded reply"),
        }
    }

    /// The successful body, or the refusal as an error.
    pub fn ok(&self) -> Result<ReplyBody<'_>, PortError> {
        self.get()
            .map_err(|error| PortError::Refused(error.to_string()))
    }
}

/// A session on a probe port over a byte stream.
pub struct Port<S> {
    stream: S,
    decoder: Box<DefaultFrameDecoder>,
    pending: Vec<u8>,
    next_seq: u32,
    unsolicited: VecDeque<Unsolicited>,
    dropped: Vec<Dropped>,
    timeout: Duration,
}

impl<S> std::fmt::Debug for Port<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("next_seq", &self.next_seq)
            .field("unsolicited", &self.unsolicited.len())
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

/// A byte stream whose reads can wait for a bounded time.
pub trait TimedRead: Read + Write {
    /// Sets how long a read may block (`None`: forever).
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;

    /// Whether the stream will carry nothing more unless the client sends a request:
    /// a recorded session played back to its end. Live streams never are.
    fn exhausted(&self) -> bool {
        false
    }
}

impl<T: TimedRead + ?Sized> TimedRead for Box<T> {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_read_timeout(timeout)
    }

    fn exhausted(&self) -> bool {
        (**self).exhausted()
    }
}

impl TimedRead for std::os::unix::net::UnixStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }
}

impl<S: TimedRead> Port<S> {
    /// A session on `stream`; no handshake yet (see [`Port::hello`]).
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            decoder: Box::new(DefaultFrameDecoder::new()),
            pending: Vec::new(),
            next_seq: 1,
            unsolicited: VecDeque::new(),
            dropped: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    /// How long [`Port::request`] waits for a reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The handshake: protocol version 1 only, for now.
    pub fn hello(&mut self, client: &str) -> Result<Reply, PortError> {
        self.request(RequestBody::Hello(probe_port_protocol::message::Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client,
        }))
    }

    /// Sends raw bytes (for tests of the stub's handling of bad input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), PortError> {
        self.stream.write_all(bytes)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Sends one request and waits for its reply. Events arriving meanwhile are kept.
    pub fn request(&mut self, body: RequestBody<'_>) -> Result<Reply, PortError> {
        let seq = self.next_seq;
        self.next_seq = match self.next_seq.wrapping_add(1) {
            UNATTRIBUTED_SEQ => 0,
            next => next,
        };
        let frame = encode_message_vec(&Request { seq, body })
            .expect("a request within protocol bounds always encodes");
        self.send_raw(&frame)?;
        self.wait_reply(seq)
    }

    /// Waits for the reply with sequence number `seq`.
    pub fn wait_reply(&mut self, seq: u32) -> Result<Reply, PortError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            while let Some(payload) = self.next_payload() {
                if let Some(got) = self.keep_unsolicited(&payload)? {
                    if got != seq {
                        return Err(PortError::UnexpectedReply { expected: seq, got });
                    }
                    return Ok(Reply { payload });
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PortError::Timeout {
                    seq,
                    timeout: self.timeout,
                });
            }
            self.fill(deadline - now)?;
        }
    }

    /// Reads whatever arrives within `within` and keeps the events.
    pub fn poll(&mut self, within: Duration) -> Result<(), PortError> {
        self.fill(within)?;
        while let Some(payload) = self.next_payload() {
            if let Some(got) = self.keep_unsolicited(&payload)? {
                return Err(PortError::UnexpectedReply { expected: 0, got });
            }
        }
        Ok(())
    }

    /// Keeps an event or loss report; for a reply, returns its sequence number.
    fn keep_unsolicited(&mut self, payload: &[u8]) -> Result<Option<u32>, PortError> {
        match decode_stub_message(payload).map_err(PortError::Undecodable)? {
            StubMessage::Reply { seq, .. } => return Ok(Some(seq)),
            StubMessage::Event(event) => {
                self.unsolicited
                    .push_back(Unsolicited::Event(OwnedEvent::from(&event)));
            }
            StubMessage::Lost(lost) => self.unsolicited.push_back(Unsolicited::Lost(lost)),
        }
        Ok(None)
    }

    /// Hands out every event and lost report received so far, in arrival order.
    pub fn take_unsolicited(&mut self) -> Vec<Unsolicited> {
        self.unsolicited.drain(..).collect()
    }

    /// Frames the decoder dropped so far (garbage, corruption).
    pub fn dropped_frames(&self) -> &[Dropped] {
        &self.dropped
    }

    /// The underlying stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The underlying stream, mutably.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Decodes the next complete frame from bytes already read.
    fn next_payload(&mut self) -> Option<Vec<u8>> {
        let mut input = &self.pending[..];
        let mut result = None;
        while !input.is_empty() {
            match self.decoder.feed(&mut input) {
                Some(Ok(payload)) => {
                    result = Some(payload.to_vec());
                    break;
                }
                Some(Err(dropped)) => self.dropped.push(dropped),
                None => {}
            }
        }
        let consumed = self.pending.len() - input.len();
        self.pending.drain(..consumed);
        result
    }

    /// Reads once from the stream, waiting at most `within`.
    fn fill(&mut self, within: Duration) -> Result<(), PortError> {
        self.stream
            .set_read_timeout(Some(within.max(Duration::from_millis(1))))?;
        let mut buffer = [0u8; 4096];
        match self.stream.read(&mut buffer) {
            Ok(0) => Err(PortError::Closed),
            Ok(read) => {
                self.pending.extend_from_slice(&buffer[..read]);
                Ok(())
            }
            Err(error)
                if matches!(
                    error.kind(),
                    // A signal (Ctrl-C) interrupting the wait is not a failure:
                    // the caller checks its stop flag and polls again.
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }
}
