//! Arbitrary byte streams through the frame decoder: never a panic, every wire byte accounted
//! for, chunked feeding equal to byte-by-byte pushing, and every accepted payload re-encoding
//! to a frame that decodes to the same payload.
//!
//! The first input byte chooses the chunk size (1 to 256 bytes) in which the rest of the input
//! is fed; the rest goes through a small `FrameDecoder<64>`, which meets `TooLong` often, and
//! through the default decoder sized for the largest protocol payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use probe_port_protocol::frame::{
    CRC_LEN, DefaultFrameDecoder, DropReason, Dropped, FrameDecoder, MAX_PAYLOAD, encode_frame_vec,
};

/// The buffer size of the small decoder.
const SMALL: usize = 64;

/// The buffer size of [`DefaultFrameDecoder`].
const LARGE: usize = MAX_PAYLOAD + CRC_LEN;

/// What a decoder reported at one frame boundary.
#[derive(Debug, PartialEq, Eq)]
enum Output {
    Frame(Vec<u8>),
    Dropped(Dropped),
}

fn to_output(result: Result<&[u8], Dropped>) -> Output {
    match result {
        Ok(payload) => Output::Frame(payload.to_vec()),
        Err(report) => Output::Dropped(report),
    }
}

/// Pushes `stream` byte by byte and checks the accounting: results appear only at delimiters,
/// a delimiter with nothing before it is idle fill, every report counts exactly the wire bytes
/// since the previous boundary, and the counters add up.
fn decode_by_push<const N: usize>(stream: &[u8]) -> Vec<Output> {
    let mut decoder = FrameDecoder::<N>::new();
    let mut outputs = Vec::new();
    let mut frame_start = 0;
    let mut valid_wire_bytes = 0;
    let mut idle_zeros = 0;
    for (index, &byte) in stream.iter().enumerate() {
        let result = decoder.push(byte).map(to_output);
        if byte != 0x00 {
            assert_eq!(result, None, "a result before the delimiter at {index}");
            continue;
        }
        let frame_wire_bytes = index + 1 - frame_start;
        frame_start = index + 1;
        match &result {
            None => {
                assert_eq!(frame_wire_bytes, 1, "a non-empty frame vanished at {index}");
                idle_zeros += 1;
            }
            Some(Output::Frame(payload)) => {
                assert!(payload.len() + CRC_LEN <= N);
                valid_wire_bytes += frame_wire_bytes;
            }
            Some(Output::Dropped(report)) => {
                assert_eq!(
                    report.bytes, frame_wire_bytes,
                    "wrong byte count at {index}"
                );
            }
        }
        outputs.extend(result);
    }
    let frames_ok = outputs
        .iter()
        .filter(|output| matches!(output, Output::Frame(_)))
        .count();
    assert_eq!(decoder.frames_ok(), frames_ok as u64);
    assert_eq!(decoder.frames_dropped(), (outputs.len() - frames_ok) as u64);
    let dropped_bytes = decoder.bytes_dropped() as usize;
    let unfinished_bytes = stream.len() - frame_start;
    assert_eq!(
        stream.len(),
        valid_wire_bytes + dropped_bytes + idle_zeros + unfinished_bytes
    );
    outputs
}

/// Feeds `stream` in chunks of `chunk_size` bytes with `feed`.
fn decode_by_feed<const N: usize>(
    decoder: &mut FrameDecoder<N>,
    stream: &[u8],
    chunk_size: usize,
) -> Vec<Output> {
    let mut outputs = Vec::new();
    for chunk in stream.chunks(chunk_size) {
        let mut input = chunk;
        while !input.is_empty() {
            let length_before = input.len();
            let result = decoder.feed(&mut input);
            assert!(input.len() < length_before, "feed consumed nothing");
            match result {
                Some(result) => outputs.push(to_output(result)),
                None => assert!(input.is_empty(), "feed stopped early without a result"),
            }
        }
    }
    outputs
}

/// Re-encodes an accepted payload and checks that the new frame decodes to it again.
fn check_round_trip<const N: usize>(payload: &[u8]) {
    let wire = encode_frame_vec(payload).expect("an accepted payload is within MAX_PAYLOAD");
    assert_eq!(
        wire.iter().position(|&byte| byte == 0x00),
        Some(wire.len() - 1)
    );
    let mut decoder = FrameDecoder::<N>::new();
    let mut input = wire.as_slice();
    assert_eq!(decoder.feed(&mut input), Some(Ok(payload)));
    assert!(input.is_empty());
}

/// Runs one decoder size both ways and checks they agree; returns the outputs.
fn check_decoder<const N: usize>(stream: &[u8], chunk_size: usize) -> Vec<Output> {
    let by_push = decode_by_push::<N>(stream);
    let mut decoder = FrameDecoder::<N>::new();
    let by_feed = decode_by_feed(&mut decoder, stream, chunk_size);
    assert_eq!(
        by_push, by_feed,
        "feed in chunks of {chunk_size} disagrees with push"
    );
    for output in &by_push {
        if let Output::Frame(payload) = output {
            check_round_trip::<N>(payload);
        }
    }
    by_push
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_selector, stream)) = data.split_first() else {
        return;
    };
    let chunk_size = usize::from(chunk_selector) + 1;

    // This assignment only compiles while `LARGE` is the default decoder's size.
    let _: fn() -> DefaultFrameDecoder = FrameDecoder::<LARGE>::new;

    let small_outputs = check_decoder::<SMALL>(stream, chunk_size);
    let large_outputs = check_decoder::<LARGE>(stream, chunk_size);

    // Both decoders see the same frame boundaries; they differ only where the small one ran
    // out of room, and a frame too long for the small one cannot be too short for the other.
    assert_eq!(small_outputs.len(), large_outputs.len());
    for (small, large) in small_outputs.iter().zip(&large_outputs) {
        match small {
            Output::Dropped(Dropped {
                reason: DropReason::TooLong,
                bytes,
            }) => {
                if let Output::Dropped(report) = large {
                    assert_eq!(report.bytes, *bytes);
                    assert_ne!(report.reason, DropReason::TooShort);
                }
            }
            _ => assert_eq!(small, large),
        }
    }
});
