//! Recorded sessions: every message of a live session written to a file
//! (`probeport run --record FILE`), and played back as a stream (`--replay FILE`),
//! so that the whole client runs in tests without a kernel.
//!
//! # Format
//!
//! ```text
//! file    = magic { entry }
//! magic   = "probeport-recording 1\n"                      (22 bytes)
//! entry   = direction:u8  time_ns:u64le  length:u32le  payload
//! ```
//!
//! `direction` is 0 for a request the client sent and 1 for a message the stub sent;
//! `time_ns` counts from the start of the recording; `payload` is the message's
//! postcard bytes (PROTOCOL.md §4), without framing. Frames the decoder dropped are
//! not recorded.
//!
//! # Playing back
//!
//! [`Replay`] answers each request the client writes with the recorded reply to the
//! recorded request at the same place, its sequence number rewritten to the new
//! request's, and hands out the recorded events and loss reports in between, in
//! order, as fast as they are read. `KeepAlive`s depend on wall-clock time, so they
//! are not matched: a live one gets a fresh `Done`, a recorded one is skipped with
//! its reply. Every other request must be the recorded one byte for byte (apart
//! from its sequence number): a different script or kernel is refused at the first
//! request that differs, naming it. When nothing is left but replies to requests
//! not yet sent, the stream is [`exhausted`](TimedRead::exhausted): the recorded
//! session stopped tracing there.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use probe_port_protocol::frame::{DefaultFrameDecoder, encode_frame_vec, encode_message_vec};
use probe_port_protocol::message::{
    ReplyBody, RequestBody, StubMessage, decode_request, decode_stub_message,
};

use crate::port::TimedRead;

/// The first bytes of every recording.
pub const MAGIC: &[u8; 22] = b"probeport-recording 1\n";

/// Which way a recorded message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A request, client to stub.
    Request,
    /// A reply, event or loss report, stub to client.
    Stub,
}

/// One recorded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Which way it went.
    pub direction: Direction,
    /// Nanoseconds since the recording started.
    pub time_ns: u64,
    /// The message's bytes (unframed).
    pub payload: Vec<u8>,
}

/// Reads a recording.
pub fn read_recording(path: &Path) -> io::Result<Vec<Entry>> {
    let bytes = std::fs::read(path)?;
    parse_recording(&bytes).map_err(|message| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {message}", path.display()),
        )
    })
}

/// Parses a recording's bytes.
pub fn parse_recording(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let mut rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a probeport recording (bad magic)")?;
    let mut entries = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 13 {
            return Err(format!("truncated entry {}", entries.len()));
        }
        let direction = match rest[0] {
            0 => Direction::Request,
            1 => Direction::Stub,
            other => return Err(format!("entry {}: bad direction {other}", entries.len())),
        };
        let time_ns = u64::from_le_bytes(rest[1..9].try_into().expect("8 bytes"));
        let length = u32::from_le_bytes(rest[9..13].try_into().expect("4 bytes")) as usize;
        let payload = rest
            .get(13..13 + length)
            .ok_or_else(|| format!("truncated entry {}", entries.len()))?;
        entries.push(Entry {
            direction,
            time_ns,
            payload: payload.to_vec(),
        });
        rest = &rest[13 + length..];
    }
    Ok(entries)
}

/// A stream that writes every message passing through it to a recording.
pub struct Recorder<S> {
    inner: S,
    file: BufWriter<File>,
    start: Instant,
    requests: Box<DefaultFrameDecoder>,
    replies: Box<DefaultFrameDecoder>,
}

impl<S> std::fmt::Debug for Recorder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl<S> Recorder<S> {
    /// Records `inner`'s traffic into a new file at `path`.
    pub fn create(inner: S, path: &Path) -> io::Result<Self> {
        let mut file = BufWriter::new(File::create(path)?);
        file.write_all(MAGIC)?;
        Ok(Self {
            inner,
            file,
            start: Instant::now(),
            requests: Box::new(DefaultFrameDecoder::new()),
            replies: Box::new(DefaultFrameDecoder::new()),
        })
    }

    fn record(&mut self, direction: Direction, mut bytes: &[u8]) -> io::Result<()> {
        let time_ns = self.start.elapsed().as_nanos() as u64;
        let decoder = match direction {
            Direction::Request => &mut self.requests,
            Direction::Stub => &mut self.replies,
        };
        while !bytes.is_empty() {
            if let Some(Ok(payload)) = decoder.feed(&mut bytes) {
                self.file.write_all(&[direction as u8])?;
                self.file.write_all(&time_ns.to_le_bytes())?;
                self.file.write_all(&(payload.len() as u32).to_le_bytes())?;
                self.file.write_all(payload)?;
            }
        }
        self.file.flush()
    }
}

impl<S: Read> Read for Recorder<S> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.record(Direction::Stub, &buffer[..read])?;
        Ok(read)
    }
}

impl<S: Write> Write for Recorder<S> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.record(Direction::Request, &bytes[..written])?;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<S: TimedRead> TimedRead for Recorder<S> {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_read_timeout(timeout)
    }

    fn exhausted(&self) -> bool {
        self.inner.exhausted()
    }
}

/// A recorded session played back as a stream (module docs: the rules).
pub struct Replay {
    entries: Vec<Entry>,
    /// The next entry not yet handed out or matched.
    cursor: usize,
    /// Framed bytes ready to be read.
    ready: VecDeque<u8>,
    requests: Box<DefaultFrameDecoder>,
    /// Requests matched so far (for messages).
    matched: usize,
    /// The first divergence, reported on every later read or write.
    diverged: Option<String>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("entries", &self.entries.len())
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

fn is_reply(payload: &[u8]) -> bool {
    matches!(decode_stub_message(payload), Ok(StubMessage::Reply { .. }))
}

fn is_keep_alive(payload: &[u8]) -> bool {
    matches!(
        decode_request(payload),
        Ok(probe_port_protocol::message::Request {
            body: RequestBody::KeepAlive,
            ..
        })
    )
}

/// A request's bytes after its sequence number (a varint).
fn without_seq(payload: &[u8]) -> &[u8] {
    let length = payload
        .iter()
        .position(|byte| byte & 0x80 == 0)
        .map_or(payload.len(), |last| last + 1);
    &payload[length..]
}

fn request_name(payload: &[u8]) -> String {
    match decode_request(payload) {
        Ok(request) => {
            let text = format!("{:?}", request.body);
            text.split([' ', '(', '{'])
                .next()
                .unwrap_or_default()
                .to_string()
        }
        Err(_) => "an undecodable request".to_string(),
    }
}

impl Replay {
    /// Plays back the recording at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self::new(read_recording(path)?))
    }

    /// Plays back `entries`.
    pub fn new(entries: Vec<Entry>) -> Self {
        Self {
            entries,
            cursor: 0,
            ready: VecDeque::new(),
            requests: Box::new(DefaultFrameDecoder::new()),
            matched: 0,
            diverged: None,
        }
    }

    fn hand_out(&mut self, payload: &[u8]) {
        let frame = encode_frame_vec(payload).expect("a recorded message fits a frame");
        self.ready.extend(frame);
    }

    /// Hands out the stub messages up to the next recorded request other than a
    /// `KeepAlive` (recorded keep-alives are skipped with their replies).
    fn advance_free(&mut self) {
        let mut skip_reply = false;
        while let Some(entry) = self.entries.get(self.cursor) {
            match entry.direction {
                Direction::Stub if is_reply(&entry.payload) => {
                    if !skip_reply {
                        return;
                    }
                    skip_reply = false;
                }
                Direction::Stub => {
                    let payload = entry.payload.clone();
                    self.hand_out(&payload);
                }
                Direction::Request if is_keep_alive(&entry.payload) => skip_reply = true,
                Direction::Request => return,
            }
            self.cursor += 1;
        }
    }

    fn diverge(&mut self, message: String) -> io::Error {
        self.diverged.get_or_insert(message.clone());
        io::Error::other(message)
    }

    /// Answers one request the client wrote.
    fn answer(&mut self, payload: &[u8]) -> io::Result<()> {
        let request = decode_request(payload).map_err(|error| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad request: {error}"))
        })?;
        let seq = request.seq;
        if matches!(request.body, RequestBody::KeepAlive) {
            let reply = StubMessage::Reply {
                seq,
                reply: Ok(ReplyBody::Done),
            };
            self.ready
                .extend(encode_message_vec(&reply).expect("a reply encodes"));
            return Ok(());
        }
        self.advance_free();
        let Some(recorded) = self.entries.get(self.cursor) else {
            return Err(self.diverge(format!(
                "the recording ends before request {} ({})",
                self.matched + 1,
                request_name(payload)
            )));
        };
        if without_seq(&recorded.payload) != without_seq(payload) {
            let message = format!(
                "this session differs from the recording at request {}: recorded {}, now {} \
                 (replay with the same script, options and kernel image)",
                self.matched + 1,
                request_name(&recorded.payload),
                request_name(payload)
            );
            return Err(self.diverge(message));
        }
        self.matched += 1;
        self.cursor += 1;
        while let Some(entry) = self.entries.get(self.cursor) {
            self.cursor += 1;
            if entry.direction == Direction::Request {
                continue;
            }
            let payload = entry.payload.clone();
            match decode_stub_message(&payload) {
                Ok(StubMessage::Reply { reply, .. }) => {
                    let message = StubMessage::Reply { seq, reply };
                    self.ready
                        .extend(encode_message_vec(&message).expect("a reply encodes"));
                    return Ok(());
                }
                _ => self.hand_out(&payload),
            }
        }
        Err(self.diverge(format!(
            "the recording ends before the reply to request {}",
            self.matched
        )))
    }
}

impl Read for Replay {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if let Some(message) = &self.diverged {
            return Err(io::Error::other(message.clone()));
        }
        if self.ready.is_empty() {
            self.advance_free();
        }
        if self.ready.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let count = buffer.len().min(self.ready.len());
        for (slot, byte) in buffer.iter_mut().zip(self.ready.drain(..count)) {
            *slot = byte;
        }
        Ok(count)
    }
}

impl Write for Replay {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if let Some(message) = &self.diverged {
            return Err(io::Error::other(message.clone()));
        }
        let mut input = bytes;
        while !input.is_empty() {
            if let Some(Ok(payload)) = self.requests.feed(&mut input) {
                let payload = payload.to_vec();
                self.answer(&payload)?;
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TimedRead for Replay {
    fn set_read_timeout(&mut self, _timeout: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    fn exhausted(&self) -> bool {
        if !self.ready.is_empty() {
            return false;
        }
        // Anything but a reply or a non-keep-alive request left before the next
        // request means more is coming unprompted.
        let mut skip_reply = false;
        for entry in &self.entries[self.cursor.min(self.entries.len())..] {
            match entry.direction {
                Direction::Stub if is_reply(&entry.payload) => {
                    if !skip_reply {
                        return true;
                    }
                    skip_reply = false;
                }
                Direction::Stub => return false,
                Direction::Request if is_keep_alive(&entry.payload) => skip_reply = true,
                Direction::Request => return true,
            }
        }
        true
    }
}
