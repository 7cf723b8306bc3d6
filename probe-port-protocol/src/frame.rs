//! Framing for byte streams: COBS-stuffed payloads with a CRC-32 trailer and a zero delimiter.
//!
//! A serial line (or any other byte pipe) carries no message boundaries, and it may drop,
//! duplicate or corrupt bytes. This module turns a payload (usually a postcard-serialized
//! message) into a self-delimiting, checksummed frame, and turns an incoming byte stream back
//! into payloads, reporting every discarded frame.
//!
//! # Design
//!
//! A frame on the wire is
//!
//! ```text
//! COBS(payload ‖ CRC-32(payload) as 4 bytes little-endian) ‖ 0x00
//! ```
//!
//! - The CRC is the IEEE one (also known as ISO-HDLC, as used by Ethernet and zlib): reflected
//!   polynomial `0xEDB88320`, initial value `0xFFFFFFFF`, final xor `0xFFFFFFFF`. Its check
//!   value over the ASCII bytes `123456789` is `0xCBF43926`. See [`crc32`].
//! - COBS (Consistent Overhead Byte Stuffing) removes every zero from the stuffed bytes, so the
//!   single `0x00` after each frame is an unambiguous boundary. A code byte `n` in `1..=0xFF`
//!   announces `n - 1` data bytes; each block except a `0xFF` one is followed by an implied
//!   zero, and the implied zero after the last block is dropped.
//! - The encoder writes the shortest encoding: a `0xFF` block that ends the input is not
//!   followed by an empty `0x01` block. The decoder accepts both forms.
//! - The encoder writes no leading `0x00`. A sender MAY send extra `0x00` bytes at any time
//!   (for example once after a reset, so that whatever a receiver half-received before is cut
//!   off cleanly); a receiver treats the resulting empty frames as idle fill and reports
//!   nothing for them.
//! - The receiving side, [`FrameDecoder`], undoes the stuffing byte by byte as bytes arrive
//!   into a fixed buffer of `N` bytes, so it needs neither an allocator nor a second buffer
//!   for the encoded form. Only the CRC is computed once the delimiter arrives, because the
//!   decoder cannot know before then which four bytes are the trailer.
//! - A receiver that joins a stream in the middle of a frame loses exactly that frame: the
//!   bytes up to the next delimiter are reported as one [`Dropped`] frame, and decoding is in
//!   step again from the following byte on. Garbage that is not followed by a delimiter merges
//!   with the next frame and takes it down with it; COBS cannot resynchronise within a frame.
//!
//! # Invariants
//!
//! - Every byte pushed into a [`FrameDecoder`] is accounted for exactly once: it is part of a
//!   valid frame's wire form (delimiter included), part of a [`Dropped`] report's `bytes`
//!   (delimiter included), an idle `0x00`, or part of the frame still in progress.
//! - Results appear only when a `0x00` arrives; any other byte yields nothing.
//! - A `TooLong` frame is reported once, at its delimiter, however long it was.
//! - Nothing here panics, allocates (outside the `alloc`-gated helpers) or uses `unsafe`.
//! - [`max_encoded_len`] bounds the output of [`encode_frame`] for every payload of that
//!   length.

use core::fmt;

/// The largest payload (the serialized message, before the CRC) a frame may carry.
pub const MAX_PAYLOAD: usize = 40 * 1024;

/// The length of the CRC-32 trailer that follows the payload inside the stuffed bytes.
pub const CRC_LEN: usize = 4;

/// The largest number of data bytes a COBS block can carry (announced by code byte `0xFF`).
const MAX_BLOCK_DATA: usize = 0xFE;

/// The byte that ends every frame and never appears inside one.
const DELIMITER: u8 = 0x00;

/// The worst-case number of wire bytes [`encode_frame`] produces for a payload of
/// `payload_len` bytes, including the trailing delimiter.
///
/// The stuffed bytes are the payload plus the [`CRC_LEN`]-byte CRC; COBS adds at most one code
/// byte per started run of 254 bytes (and at least one); then comes one delimiter. The count
/// does not include the optional leading `0x00` a sender may emit on its own (the encoder
/// never writes one), so a sender that does so needs one more byte. The result saturates at
/// `usize::MAX` rather than overflowing.
pub const fn max_encoded_len(payload_len: usize) -> usize {
    let stuffed_len = payload_len.saturating_add(CRC_LEN);
    let code_bytes = stuffed_len.div_ceil(MAX_BLOCK_DATA);
    stuffed_len.saturating_add(code_bytes).saturating_add(1)
}

/// The worst-case wire length of a frame carrying [`MAX_PAYLOAD`] bytes, delimiter included:
/// a buffer of this size holds any frame [`encode_frame`] accepts.
pub const MAX_FRAME_WIRE_LEN: usize = max_encoded_len(MAX_PAYLOAD);

/// A frame decoder sized for the largest payload the protocol allows.
pub type DefaultFrameDecoder = FrameDecoder<{ MAX_PAYLOAD + CRC_LEN }>;

// ---------------------------------------------------------------------------------------------
// CRC-32
// ---------------------------------------------------------------------------------------------

/// The reflected form of the IEEE 802.3 CRC-32 polynomial `0x04C11DB7`.
const CRC_POLYNOMIAL_REFLECTED: u32 = 0xEDB8_8320;

/// Computes, at compile time, the CRC of every single byte value, so that the run-time loop
/// processes a byte with one table look-up instead of eight shift-and-xor steps.
const fn crc_table() -> [u32; 256] {
    let mut table = [0_u32; 256];
    let mut byte_value = 0;
    while byte_value < table.len() {
        let mut remainder = byte_value as u32;
        let mut bit = 0;
        while bit < 8 {
            remainder = if remainder & 1 == 1 {
                (remainder >> 1) ^ CRC_POLYNOMIAL_REFLECTED
            } else {
                remainder >> 1
            };
            bit += 1;
        }
        table[byte_value] = remainder;
        byte_value += 1;
    }
    table
}

/// The CRC of every byte value, indexed by that value.
static CRC_TABLE: [u32; 256] = crc_table();

/// Computes the IEEE CRC-32 (ISO-HDLC: reflected, initial value and final xor `0xFFFFFFFF`)
/// of `bytes`.
///
/// ```
/// use probe_port_protocol::frame::crc32;
/// assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
/// assert_eq!(crc32(b""), 0);
/// ```
pub fn crc32(bytes: &[u8]) -> u32 {
    let remainder = bytes.iter().fold(u32::MAX, |remainder, &byte| {
        let table_index = (remainder ^ u32::from(byte)) & 0xFF;
        CRC_TABLE[table_index as usize] ^ (remainder >> 8)
    });
    !remainder
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Why a payload or message could not be framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The payload is longer than [`MAX_PAYLOAD`].
    PayloadTooLarge {
        /// The length of the rejected payload in bytes.
        length: usize,
    },
    /// The output buffer cannot hold the frame. Nothing useful was written.
    OutputTooSmall {
        /// The exact number of bytes this frame needs.
        needed: usize,
        /// The length of the buffer that was offered.
        available: usize,
    },
    /// The scratch buffer cannot hold the serialized message.
    ScratchTooSmall,
    /// The message could not be serialized for a reason other than buffer space (for
    /// example a sequence without a known length).
    Serialize,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::PayloadTooLarge { length } => write!(
                formatter,
                "payload of {length} bytes exceeds the maximum of {MAX_PAYLOAD} bytes"
            ),
            Self::OutputTooSmall { needed, available } => write!(
                formatter,
                "frame needs {needed} bytes but the output buffer holds {available}"
            ),
            Self::ScratchTooSmall => {
                formatter.write_str("serialized message does not fit in the scratch buffer")
            }
            Self::Serialize => formatter.write_str("message could not be serialized"),
        }
    }
}

impl core::error::Error for EncodeError {}

/// Writes the COBS encoding of a byte sequence into a buffer, remembering how long the
/// encoding is even when it does not fit, so that the caller can report the exact size needed.
struct CobsEncoder<'out> {
    /// The destination; writes past its end are skipped but still counted.
    out: &'out mut [u8],
    /// The number of encoded bytes produced so far, including the current block's code byte.
    length: usize,
    /// Where the current block's code byte goes, or `None` after a full `0xFF` block, when the
    /// next block is opened only if more input follows.
    code_index: Option<usize>,
    /// One more than the number of data bytes in the current block.
    code: u8,
}

impl<'out> CobsEncoder<'out> {
    fn new(out: &'out mut [u8]) -> Self {
        // Even empty input encodes to one code byte, so the first block is opened right away.
        Self {
            out,
            length: 1,
            code_index: Some(0),
            code: 1,
        }
    }

    fn write_at(&mut self, index: usize, byte: u8) {
        if let Some(slot) = self.out.get_mut(index) {
            *slot = byte;
        }
    }

    fn close_block(&mut self) {
        if let Some(code_index) = self.code_index.take() {
            self.write_at(code_index, self.code);
        }
    }

    fn open_block_if_needed(&mut self) {
        if self.code_index.is_none() {
            self.code_index = Some(self.length);
            self.length += 1;
            self.code = 1;
        }
    }

    fn push(&mut self, byte: u8) {
        self.open_block_if_needed();
        if byte == 0 {
            // The zero becomes the implied zero at the end of this block.
            self.close_block();
            self.code_index = Some(self.length);
            self.length += 1;
            self.code = 1;
        } else {
            self.write_at(self.length, byte);
            self.length += 1;
            self.code += 1;
            if self.code == 0xFF {
                self.close_block();
            }
        }
    }

    fn push_all(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.push(byte);
        }
    }

    /// Closes the last block and returns the total encoded length, which exceeds the length
    /// of the output buffer if the encoding did not fit.
    fn finish(mut self) -> usize {
        self.close_block();
        self.length
    }
}

/// Frames `payload` into `out` and returns the number of bytes written, delimiter included.
///
/// The output is `COBS(payload ‖ CRC-32 little-endian) ‖ 0x00`, never longer than
/// [`max_encoded_len`]`(payload.len())`. Nothing is allocated.
///
/// # Errors
///
/// [`EncodeError::PayloadTooLarge`] if `payload` is longer than [`MAX_PAYLOAD`], and
/// [`EncodeError::OutputTooSmall`] (with the exact size needed) if `out` cannot hold the frame;
/// in that case the contents of `out` are unspecified.
pub fn encode_frame(payload: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(EncodeError::PayloadTooLarge {
            length: payload.len(),
        });
    }
    let crc_bytes = crc32(payload).to_le_bytes();
    let mut encoder = CobsEncoder::new(out);
    encoder.push_all(payload);
    encoder.push_all(&crc_bytes);
    let stuffed_length = encoder.finish();
    let frame_length = stuffed_length + 1;
    match out.get_mut(stuffed_length) {
        Some(delimiter_slot) => {
            *delimiter_slot = DELIMITER;
            Ok(frame_length)
        }
        None => Err(EncodeError::OutputTooSmall {
            needed: frame_length,
            available: out.len(),
        }),
    }
}

/// Serializes `message` with postcard into `scratch`, then frames the result into `out`, and
/// returns the number of bytes of `out` written, delimiter included.
///
/// # Errors
///
/// [`EncodeError::ScratchTooSmall`] or [`EncodeError::Serialize`] if serialization fails, and
/// otherwise the errors of [`encode_frame`].
pub fn encode_message<T: serde::Serialize + ?Sized>(
    message: &T,
    scratch: &mut [u8],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let payload = postcard::to_slice(message, scratch).map_err(serialize_error)?;
    encode_frame(payload, out)
}

/// [`encode_message`] for the stub's own messages: one copy of their serialiser,
/// compiled in this crate (which kernel profiles build for size, as cold code)
/// rather than in each embedding's generic code.
///
/// # Errors
///
/// Those of [`encode_message`].
#[inline(never)]
pub fn encode_stub_message(
    message: &crate::message::StubMessage<'_>,
    scratch: &mut [u8],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    encode_message(message, scratch, out)
}

/// [`encode_message`] for requests, compiled once here like
/// [`encode_stub_message`] (for kernels that send requests themselves, as the demo
/// kernel's intruder does).
///
/// # Errors
///
/// Those of [`encode_message`].
#[inline(never)]
pub fn encode_request(
    request: &crate::message::Request<'_>,
    scratch: &mut [u8],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    encode_message(request, scratch, out)
}

/// Translates a postcard error into the framing layer's own error.
fn serialize_error(error: postcard::Error) -> EncodeError {
    match error {
        postcard::Error::SerializeBufferFull => EncodeError::ScratchTooSmall,
        _ => EncodeError::Serialize,
    }
}

/// Frames `payload` into a freshly allocated vector, delimiter included.
///
/// # Errors
///
/// [`EncodeError::PayloadTooLarge`] if `payload` is longer than [`MAX_PAYLOAD`].
#[cfg(feature = "alloc")]
pub fn encode_frame_vec(payload: &[u8]) -> Result<alloc::vec::Vec<u8>, EncodeError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(EncodeError::PayloadTooLarge {
            length: payload.len(),
        });
    }
    let mut frame = alloc::vec![0; max_encoded_len(payload.len())];
    let frame_length = encode_frame(payload, &mut frame)?;
    frame.truncate(frame_length);
    Ok(frame)
}

/// Serializes `message` with postcard and frames it into a freshly allocated vector,
/// delimiter included.
///
/// # Errors
///
/// [`EncodeError::Serialize`] if serialization fails and [`EncodeError::PayloadTooLarge`] if
/// the serialized message is longer than [`MAX_PAYLOAD`].
#[cfg(feature = "alloc")]
pub fn encode_message_vec<T: serde::Serialize + ?Sized>(
    message: &T,
) -> Result<alloc::vec::Vec<u8>, EncodeError> {
    let payload = postcard::to_allocvec(message).map_err(serialize_error)?;
    encode_frame_vec(&payload)
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Why [`FrameDecoder`] discarded a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The frame decoded to more bytes than the decoder's buffer holds. The decoder discarded
    /// everything up to the next delimiter and reports the frame once, there.
    TooLong,
    /// The delimiter arrived inside a COBS block: a code byte announced more bytes than came.
    Truncated,
    /// The frame decoded to fewer than [`CRC_LEN`] bytes, so it cannot even hold a CRC.
    TooShort,
    /// The CRC trailer does not match the payload.
    BadCrc {
        /// The CRC computed over the received payload.
        expected: u32,
        /// The CRC carried by the frame's last four bytes.
        found: u32,
    },
}

impl fmt::Display for DropReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooLong => formatter.write_str("frame longer than the receive buffer"),
            Self::Truncated => formatter.write_str("frame ended inside a COBS block"),
            Self::TooShort => formatter.write_str("frame too short to hold a CRC"),
            Self::BadCrc { expected, found } => write!(
                formatter,
                "CRC mismatch: payload has CRC {expected:#010x} but frame carries {found:#010x}"
            ),
        }
    }
}

impl core::error::Error for DropReason {}

/// A frame that [`FrameDecoder`] discarded, and how many wire bytes went with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dropped {
    /// Why the frame was discarded.
    pub reason: DropReason,
    /// The number of wire bytes discarded, including the delimiter that ended the frame. It
    /// saturates at `usize::MAX`.
    pub bytes: usize,
}

impl fmt::Display for Dropped {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "dropped a frame of {} wire bytes: {}",
            self.bytes, self.reason
        )
    }
}

impl core::error::Error for Dropped {}

/// The incremental state of COBS decoding within one frame.
///
/// Every non-zero wire byte decodes to at most one byte: a data byte decodes to itself, and a
/// code byte decodes to the zero implied at the end of the previous block, if there was one.
/// Emitting that zero only when the next block starts is what drops the final implied zero.
#[derive(Clone, Copy, Debug, Default)]
struct CobsDecoder {
    /// The number of data bytes still to come in the current block; when zero, the next byte
    /// is a code byte.
    block_remaining: u8,
    /// Whether the previous block ended with an implied zero (its code byte was not `0xFF`).
    zero_pending: bool,
}

impl CobsDecoder {
    /// Decodes one wire byte, which must not be the delimiter.
    fn step(&mut self, byte: u8) -> Option<u8> {
        if self.block_remaining == 0 {
            let implied_zero = self.zero_pending;
            self.block_remaining = byte.saturating_sub(1);
            self.zero_pending = byte != 0xFF;
            implied_zero.then_some(0)
        } else {
            self.block_remaining -= 1;
            Some(byte)
        }
    }

    /// Whether the bytes so far end on a block boundary, so a delimiter here is legitimate.
    fn at_block_boundary(&self) -> bool {
        self.block_remaining == 0
    }
}

/// A streaming frame decoder that accepts frames whose payload plus CRC fits in `N` bytes.
///
/// Push wire bytes one at a time with [`push`](Self::push), or a slice at a time with
/// [`feed`](Self::feed). Each returns the payload of a valid frame (borrowed from the decoder
/// until the next call), a [`Dropped`] report for a discarded frame, or nothing. Empty frames
/// (consecutive `0x00` bytes) are idle fill and produce nothing.
///
/// The decoder holds an `[u8; N]` buffer inline; [`DefaultFrameDecoder`] is about 40 KiB, so
/// on a small stack place it in a `static` or a heap allocation.
///
/// ```
/// use probe_port_protocol::frame::{encode_frame, FrameDecoder, max_encoded_len};
///
/// let mut wire = [0; max_encoded_len(5)];
/// let wire_length = encode_frame(b"hello", &mut wire).unwrap();
///
/// let mut decoder = FrameDecoder::<64>::new();
/// let mut input = &wire[..wire_length];
/// assert_eq!(decoder.feed(&mut input), Some(Ok(&b"hello"[..])));
/// assert!(input.is_empty());
/// ```
pub struct FrameDecoder<const N: usize> {
    /// The decoded bytes of the frame in progress: payload, then CRC.
    buffer: [u8; N],
    /// How many bytes of `buffer` the frame in progress has filled.
    decoded_length: usize,
    /// How many wire bytes of the frame in progress have arrived, not counting a delimiter.
    wire_length: usize,
    /// Whether the frame in progress outgrew `buffer` and is being skipped.
    overflowed: bool,
    /// Where the COBS decoding of the frame in progress stands.
    cobs: CobsDecoder,
    /// Statistics since the decoder was created; see the methods of the same names.
    frames_ok: u64,
    frames_dropped: u64,
    bytes_dropped: u64,
}

impl<const N: usize> FrameDecoder<N> {
    /// Rejects, at compile time, decoders too small to hold even an empty payload's CRC.
    const BUFFER_HOLDS_CRC: () = assert!(N >= CRC_LEN, "a FrameDecoder needs N >= CRC_LEN");

    /// Creates a decoder waiting for the start of a frame, with all statistics at zero.
    pub const fn new() -> Self {
        let () = Self::BUFFER_HOLDS_CRC;
        Self {
            buffer: [0; N],
            decoded_length: 0,
            wire_length: 0,
            overflowed: false,
            cobs: CobsDecoder {
                block_remaining: 0,
                zero_pending: false,
            },
            frames_ok: 0,
            frames_dropped: 0,
            bytes_dropped: 0,
        }
    }

    /// Processes one wire byte.
    ///
    /// Returns `Some(Ok(payload))` when this byte is the delimiter of a valid frame (the
    /// payload excludes the CRC), `Some(Err(dropped))` when it is the delimiter of a discarded
    /// frame, and `None` otherwise, including for idle `0x00` bytes between frames.
    pub fn push(&mut self, byte: u8) -> Option<Result<&[u8], Dropped>> {
        let outcome = self.step(byte)?;
        Some(outcome.map(|payload_length| self.payload(payload_length)))
    }

    /// Processes bytes from the front of `input` until one of them completes or discards a
    /// frame, advancing `input` past the bytes consumed (up to and including that delimiter).
    ///
    /// Returns what [`push`](Self::push) returned for the last byte consumed, or `None` with
    /// `input` empty if no byte produced a result. Call it in a loop until `input` is empty to
    /// see every frame in a chunk of received bytes.
    pub fn feed(&mut self, input: &mut &[u8]) -> Option<Result<&[u8], Dropped>> {
        while let Some((&byte, rest)) = input.split_first() {
            *input = rest;
            if let Some(outcome) = self.step(byte) {
                return Some(outcome.map(|payload_length| self.payload(payload_length)));
            }
        }
        None
    }

    /// Forgets the frame in progress without reporting it, for example after the link was
    /// re-established. Statistics are kept.
    pub fn reset(&mut self) {
        self.start_next_frame();
    }

    /// The number of valid frames decoded so far.
    pub fn frames_ok(&self) -> u64 {
        self.frames_ok
    }

    /// The number of frames discarded so far (each reported once as [`Dropped`]).
    pub fn frames_dropped(&self) -> u64 {
        self.frames_dropped
    }

    /// The total of the `bytes` of every [`Dropped`] report so far.
    pub fn bytes_dropped(&self) -> u64 {
        self.bytes_dropped
    }

    /// The largest payload this decoder accepts: `N` minus the CRC.
    pub const fn max_payload(&self) -> usize {
        N - CRC_LEN
    }

    /// The payload of the frame just accepted. `step` only reports lengths of at most
    /// `decoded_length`, which never exceeds `N`, so the slice is always in bounds.
    fn payload(&self, payload_length: usize) -> &[u8] {
        &self.buffer[..payload_length]
    }

    /// Processes one byte, and on a frame boundary returns the payload length of a valid frame
    /// (the payload stays in `buffer`) or the report of a discarded one.
    ///
    /// It returns a length rather than a slice so that [`feed`](Self::feed) can call it in a
    /// loop and only borrow the buffer once it is done.
    fn step(&mut self, byte: u8) -> Option<Result<usize, Dropped>> {
        if byte == DELIMITER {
            return self.end_frame();
        }
        self.wire_length = self.wire_length.saturating_add(1);
        if self.overflowed {
            return None;
        }
        if let Some(decoded_byte) = self.cobs.step(byte) {
            match self.buffer.get_mut(self.decoded_length) {
                Some(slot) => {
                    *slot = decoded_byte;
                    self.decoded_length += 1;
                }
                None => self.overflowed = true,
            }
        }
        None
    }

    /// Judges the frame that a delimiter just ended and gets ready for the next one.
    fn end_frame(&mut self) -> Option<Result<usize, Dropped>> {
        if self.wire_length == 0 {
            // Consecutive delimiters: idle fill, not a frame.
            return None;
        }
        let verdict = self.verdict();
        let bytes = self.wire_length.saturating_add(1);
        self.start_next_frame();
        match verdict {
            Ok(payload_length) => {
                self.frames_ok = self.frames_ok.saturating_add(1);
                Some(Ok(payload_length))
            }
            Err(reason) => {
                self.frames_dropped = self.frames_dropped.saturating_add(1);
                self.bytes_dropped = self.bytes_dropped.saturating_add(bytes as u64);
                Some(Err(Dropped { reason, bytes }))
            }
        }
    }

    /// Decides whether the frame in progress, now complete, is valid; if so, returns its
    /// payload length.
    fn verdict(&self) -> Result<usize, DropReason> {
        if self.overflowed {
            return Err(DropReason::TooLong);
        }
        if !self.cobs.at_block_boundary() {
            return Err(DropReason::Truncated);
        }
        let decoded = &self.buffer[..self.decoded_length];
        let Some(payload_length) = decoded.len().checked_sub(CRC_LEN) else {
            return Err(DropReason::TooShort);
        };
        let (payload, crc_bytes) = decoded.split_at(payload_length);
        let mut trailer = [0; CRC_LEN];
        trailer.copy_from_slice(crc_bytes);
        let found = u32::from_le_bytes(trailer);
        let expected = crc32(payload);
        if expected == found {
            Ok(payload_length)
        } else {
            Err(DropReason::BadCrc { expected, found })
        }
    }

    fn start_next_frame(&mut self) {
        self.decoded_length = 0;
        self.wire_length = 0;
        self.overflowed = false;
        self.cobs = CobsDecoder::default();
    }
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Debug for FrameDecoder<N> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The buffer is left out: it is large and mostly stale.
        formatter
            .debug_struct("FrameDecoder")
            .field("capacity", &N)
            .field("decoded_length", &self.decoded_length)
            .field("wire_length", &self.wire_length)
            .field("overflowed", &self.overflowed)
            .field("frames_ok", &self.frames_ok)
            .field("frames_dropped", &self.frames_dropped)
            .field("bytes_dropped", &self.bytes_dropped)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// COBS-encodes `data` (no CRC, no delimiter) with the frame encoder's machinery.
    fn cobs_encode(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0; data.len() + data.len() / MAX_BLOCK_DATA + 1];
        let length = {
            let mut encoder = CobsEncoder::new(&mut out);
            encoder.push_all(data);
            encoder.finish()
        };
        assert!(
            length <= out.len(),
            "COBS overhead bound violated for {} bytes",
            data.len()
        );
        out.truncate(length);
        out
    }

    /// COBS-decodes `encoded` (no delimiter) with the frame decoder's machinery, or returns
    /// `None` if it ends inside a block.
    fn cobs_decode(encoded: &[u8]) -> Option<Vec<u8>> {
        let mut decoder = CobsDecoder::default();
        let decoded = encoded
            .iter()
            .filter_map(|&byte| decoder.step(byte))
            .collect();
        decoder.at_block_boundary().then_some(decoded)
    }

    /// Frames `payload` into a vector sized by `max_encoded_len`.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0xAA; max_encoded_len(payload.len())];
        let length = encode_frame(payload, &mut out).expect("payload within limits");
        out.truncate(length);
        out
    }

    /// A payload of `length` bytes mixing zeros, runs of non-zero bytes and every byte value.
    fn test_payload(length: usize) -> Vec<u8> {
        (0..length)
            .map(|index| {
                if index % 300 < 7 {
                    0
                } else {
                    (index * 7 % 256) as u8
                }
            })
            .collect()
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn crc_of_empty_input_and_other_known_values() {
        assert_eq!(crc32(b""), 0);
        // Values cross-checked against zlib's crc32.
        assert_eq!(crc32(b"hello"), 0x3610_A686);
        assert_eq!(crc32(&[0]), 0xD202_EF8D);
    }

    #[test]
    fn crc_table_matches_bitwise_computation() {
        assert_eq!(CRC_TABLE[0], 0);
        assert_eq!(CRC_TABLE[1], 0x7707_3096);
        assert_eq!(CRC_TABLE[255], 0x2D02_EF8D);
    }

    /// Known COBS vectors, worked out by hand from the definition: a code byte `n` announces
    /// `n - 1` data bytes and, unless `n == 0xFF`, an implied zero; the final implied zero is
    /// dropped.
    #[test]
    fn cobs_known_vectors() {
        let non_zero_254: Vec<u8> = (1..=254).collect();
        let non_zero_255: Vec<u8> = (1..=255).collect();

        // Empty input: one empty block whose implied zero is the dropped final one.
        let mut cases: Vec<(Vec<u8>, Vec<u8>)> = vec![(vec![], vec![0x01])];
        // A single zero: an empty block ending in that zero, then the empty final block.
        cases.push((vec![0x00], vec![0x01, 0x01]));
        // 254 non-zero bytes fill one 0xFF block exactly; the shortest encoding stops there.
        let mut expected = vec![0xFF];
        expected.extend_from_slice(&non_zero_254);
        cases.push((non_zero_254.clone(), expected));
        // 255 non-zero bytes: a full 0xFF block, then a block of one byte (code 0x02).
        let mut expected = vec![0xFF];
        expected.extend_from_slice(&non_zero_254);
        expected.extend_from_slice(&[0x02, 0xFF]);
        cases.push((non_zero_255, expected));
        // All zeros: every zero ends an empty block, plus the empty final block.
        cases.push((vec![0x00; 4], vec![0x01; 5]));
        // Zeros around data, as in the classic examples.
        cases.push((
            vec![0x11, 0x22, 0x00, 0x33],
            vec![0x03, 0x11, 0x22, 0x02, 0x33],
        ));
        cases.push((
            vec![0x11, 0x00, 0x00, 0x00],
            vec![0x02, 0x11, 0x01, 0x01, 0x01],
        ));
        // A zero right after a full block needs its own empty block.
        let mut data = non_zero_254.clone();
        data.push(0);
        let mut expected = vec![0xFF];
        expected.extend_from_slice(&non_zero_254);
        expected.extend_from_slice(&[0x01, 0x01]);
        cases.push((data, expected));

        for (data, encoded) in &cases {
            assert_eq!(&cobs_encode(data), encoded, "encoding {data:02x?}");
            assert_eq!(
                cobs_decode(encoded).as_ref(),
                Some(data),
                "decoding {encoded:02x?}"
            );
            assert!(
                !encoded.contains(&0),
                "encoding of {data:02x?} contains a zero"
            );
        }
    }

    #[test]
    fn cobs_decoder_accepts_the_trailing_empty_block_after_a_full_block() {
        let mut encoded = vec![0xFF];
        encoded.extend(1..=254);
        encoded.push(0x01);
        assert_eq!(cobs_decode(&encoded), Some((1..=254).collect()));
    }

    #[test]
    fn cobs_decoder_notices_a_block_cut_short() {
        assert_eq!(cobs_decode(&[0x03, 0x11]), None);
        assert_eq!(cobs_decode(&[0xFF, 0x11]), None);
    }

    /// Pins the wire format: these bytes were worked out by hand from the format description
    /// (the CRC values come from zlib), so any change to byte order or stuffing shows up here.
    #[test]
    fn wire_format_golden_frames() {
        // The empty payload's CRC is 0x00000000, four zeros that COBS turns into five 0x01.
        assert_eq!(frame(b""), [0x01, 0x01, 0x01, 0x01, 0x01, 0x00]);
        // "hello" has CRC 0x3610A686, sent little-endian; nine non-zero bytes make one block.
        assert_eq!(
            frame(b"hello"),
            [
                0x0A, b'h', b'e', b'l', b'l', b'o', 0x86, 0xA6, 0x10, 0x36, 0x00
            ]
        );
    }

    #[test]
    fn round_trip_of_boundary_lengths() {
        for length in [0, 1, 253, 254, 255, 508, MAX_PAYLOAD] {
            for payload in [test_payload(length), vec![0xFF; length], vec![0; length]] {
                let wire = frame(&payload);
                assert!(wire.len() <= max_encoded_len(length));
                assert_eq!(
                    wire.iter().position(|&byte| byte == 0),
                    Some(wire.len() - 1)
                );

                let mut decoder = DefaultFrameDecoder::new();
                let mut input = &wire[..];
                let result = decoder.feed(&mut input);
                assert_eq!(result, Some(Ok(&payload[..])), "length {length}");
                assert!(input.is_empty());
                assert_eq!(decoder.frames_ok(), 1);
            }
        }
    }

    #[test]
    fn max_encoded_len_is_reached_by_non_zero_payloads() {
        for length in [0, 1, 249, 250, 251, 252, 253, 254, 255, 504, 505, 506, 1000] {
            // A payload whose CRC also has no zero byte hits the worst case exactly.
            let payload: Vec<u8> = vec![0x5A; length];
            let wire = frame(&payload);
            if !crc32(&payload).to_le_bytes().contains(&0) {
                assert_eq!(wire.len(), max_encoded_len(length), "length {length}");
            }
            assert!(wire.len() <= max_encoded_len(length), "length {length}");
        }
        assert_eq!(max_encoded_len(0), 6);
        assert_eq!(max_encoded_len(250), 256);
        assert_eq!(max_encoded_len(251), 258);
        assert_eq!(max_encoded_len(usize::MAX), usize::MAX);
    }

    #[test]
    fn encode_rejects_oversized_payloads_and_small_buffers() {
        let payload = vec![1; MAX_PAYLOAD + 1];
        let mut out = vec![0; max_encoded_len(payload.len())];
        assert_eq!(
            encode_frame(&payload, &mut out),
            Err(EncodeError::PayloadTooLarge {
                length: MAX_PAYLOAD + 1
            })
        );

        let exact = frame(b"hello").len();
        let mut small = [0; 8];
        assert_eq!(
            encode_frame(b"hello", &mut small),
            Err(EncodeError::OutputTooSmall {
                needed: exact,
                available: 8
            })
        );
        let mut just_right = vec![0; exact];
        assert_eq!(encode_frame(b"hello", &mut just_right), Ok(exact));
        let mut one_short = vec![0; exact - 1];
        assert_eq!(
            encode_frame(b"hello", &mut one_short),
            Err(EncodeError::OutputTooSmall {
                needed: exact,
                available: exact - 1
            })
        );
        assert_eq!(
            encode_frame(b"", &mut []),
            Err(EncodeError::OutputTooSmall {
                needed: 6,
                available: 0
            })
        );
    }

    #[test]
    fn encode_message_frames_the_postcard_bytes() {
        let message = (7_u32, -3_i16, true);
        let mut scratch = [0; 16];
        let mut out = [0; 32];
        let length = encode_message(&message, &mut scratch, &mut out).unwrap();
        let serialized = postcard::to_slice(&message, &mut [0; 16]).unwrap().to_vec();
        assert_eq!(&out[..length], &frame(&serialized)[..]);

        let mut tiny_scratch = [0; 2];
        assert_eq!(
            encode_message(&message, &mut tiny_scratch, &mut out),
            Err(EncodeError::ScratchTooSmall)
        );
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn vector_encoders_match_the_slice_encoders() {
        assert_eq!(encode_frame_vec(b"hello").unwrap(), frame(b"hello"));
        assert_eq!(
            encode_frame_vec(&vec![0; MAX_PAYLOAD + 1]),
            Err(EncodeError::PayloadTooLarge {
                length: MAX_PAYLOAD + 1
            })
        );
        let message = [1_u8, 2, 3];
        let serialized = postcard::to_allocvec(&message).unwrap();
        assert_eq!(encode_message_vec(&message).unwrap(), frame(&serialized));
    }

    #[test]
    fn decoder_reports_each_kind_of_drop() {
        let mut decoder = FrameDecoder::<16>::new();

        // A block announcing two data bytes, cut off after one.
        let mut input: &[u8] = &[0x03, 0x11, 0x00];
        let expected = Dropped {
            reason: DropReason::Truncated,
            bytes: 3,
        };
        assert_eq!(decoder.feed(&mut input), Some(Err(expected)));

        let mut input: &[u8] = &[0x04, 0x11, 0x22, 0x33, 0x00];
        let expected = Dropped {
            reason: DropReason::TooShort,
            bytes: 5,
        };
        assert_eq!(decoder.feed(&mut input), Some(Err(expected)));

        let mut wire = frame(b"hello");
        wire[1] ^= 0x20;
        let mut input = &wire[..];
        let expected = Dropped {
            reason: DropReason::BadCrc {
                expected: crc32(b"Hello"),
                found: 0x3610_A686,
            },
            bytes: wire.len(),
        };
        assert_eq!(decoder.feed(&mut input), Some(Err(expected)));

        // Twelve payload bytes plus the CRC fill the sixteen-byte buffer exactly; thirteen do not.
        let fits = frame(&[0x42; 12]);
        let mut input = &fits[..];
        assert_eq!(decoder.feed(&mut input), Some(Ok(&[0x42; 12][..])));
        let too_long = frame(&[0x42; 13]);
        let mut input = &too_long[..];
        let expected = Dropped {
            reason: DropReason::TooLong,
            bytes: too_long.len(),
        };
        assert_eq!(decoder.feed(&mut input), Some(Err(expected)));

        assert_eq!(decoder.frames_ok(), 1);
        assert_eq!(decoder.frames_dropped(), 4);
        assert_eq!(
            decoder.bytes_dropped(),
            (3 + 5 + wire.len() + too_long.len()) as u64
        );
    }

    #[test]
    fn decoder_ignores_idle_fill_and_reset_forgets_a_partial_frame() {
        let mut decoder = FrameDecoder::<16>::new();
        for _ in 0..10 {
            assert_eq!(decoder.push(0), None);
        }
        let wire = frame(b"abc");
        for &byte in &wire[..3] {
            assert_eq!(decoder.push(byte), None);
        }
        decoder.reset();
        let mut input = &wire[..];
        assert_eq!(decoder.feed(&mut input), Some(Ok(&b"abc"[..])));
        assert_eq!(decoder.frames_dropped(), 0);
        assert_eq!(decoder.max_payload(), 12);
    }

    #[test]
    fn displays_are_single_sentences() {
        let dropped = Dropped {
            reason: DropReason::BadCrc {
                expected: 1,
                found: 0xABCD,
            },
            bytes: 9,
        };
        assert_eq!(
            format!("{dropped}"),
            "dropped a frame of 9 wire bytes: CRC mismatch: payload has CRC 0x00000001 but \
             frame carries 0x0000abcd"
        );
        assert_eq!(
            format!(
                "{}",
                EncodeError::OutputTooSmall {
                    needed: 10,
                    available: 4
                }
            ),
            "frame needs 10 bytes but the output buffer holds 4"
        );
    }
}
