//! The frame decoder against hostile byte streams: a corpus of malformed inputs with their
//! exact expected reports, and property tests that compare the streaming decoder with a
//! simple whole-frame reference model.
//!
//! Every corpus case is run three ways (byte by byte with `push`, one `feed` over the whole
//! input, and `feed` over chunks of several sizes), and all three must agree with the table.

use probe_port_protocol::frame::{
    CRC_LEN, DefaultFrameDecoder, DropReason, Dropped, FrameDecoder, MAX_PAYLOAD, crc32,
    encode_frame, max_encoded_len,
};
use proptest::prelude::*;

/// The buffer size of the decoder the corpus runs against: payloads of up to 60 bytes fit.
const SMALL: usize = 64;

/// What a decoder reported at one frame boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Output {
    Frame(Vec<u8>),
    Dropped(Dropped),
}

fn dropped(reason: DropReason, bytes: usize) -> Output {
    Output::Dropped(Dropped { reason, bytes })
}

fn valid(payload: &[u8]) -> Output {
    Output::Frame(payload.to_vec())
}

fn to_output(result: Result<&[u8], Dropped>) -> Output {
    match result {
        Ok(payload) => Output::Frame(payload.to_vec()),
        Err(report) => Output::Dropped(report),
    }
}

/// The wire form of `payload`, delimiter included.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut wire = vec![0; max_encoded_len(payload.len())];
    let length = encode_frame(payload, &mut wire).expect("test payloads are within limits");
    wire.truncate(length);
    wire
}

/// Concatenates byte sequences into one stream.
fn stream(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn decode_by_push<const N: usize>(decoder: &mut FrameDecoder<N>, input: &[u8]) -> Vec<Output> {
    input
        .iter()
        .filter_map(|&byte| decoder.push(byte).map(to_output))
        .collect()
}

/// Feeds `input` in chunks of the given sizes, cycling through them.
fn decode_by_feed<const N: usize>(
    decoder: &mut FrameDecoder<N>,
    input: &[u8],
    chunk_sizes: &[usize],
) -> Vec<Output> {
    let mut outputs = Vec::new();
    let mut remaining = input;
    for &chunk_size in chunk_sizes.iter().cycle() {
        if remaining.is_empty() {
            break;
        }
        let (chunk_bytes, rest) = remaining.split_at(chunk_size.clamp(1, remaining.len()));
        remaining = rest;
        let mut chunk = chunk_bytes;
        while !chunk.is_empty() {
            if let Some(result) = decoder.feed(&mut chunk) {
                outputs.push(to_output(result));
            }
        }
    }
    outputs
}

/// Checks that the decoder's counters agree with the reports it returned.
fn assert_statistics<const N: usize>(decoder: &FrameDecoder<N>, outputs: &[Output], name: &str) {
    let frames_ok = outputs
        .iter()
        .filter(|output| matches!(output, Output::Frame(_)))
        .count();
    let reports: Vec<&Dropped> = outputs
        .iter()
        .filter_map(|output| match output {
            Output::Dropped(report) => Some(report),
            Output::Frame(_) => None,
        })
        .collect();
    let bytes_dropped: usize = reports.iter().map(|report| report.bytes).sum();
    assert_eq!(decoder.frames_ok(), frames_ok as u64, "{name}: frames_ok");
    assert_eq!(
        decoder.frames_dropped(),
        reports.len() as u64,
        "{name}: frames_dropped"
    );
    assert_eq!(
        decoder.bytes_dropped(),
        bytes_dropped as u64,
        "{name}: bytes_dropped"
    );
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    expected: Vec<Output>,
}

/// The malformed-input corpus. Byte counts are worked out by hand; the frames of the short
/// ASCII payloads used here contain no zero in their CRC, so each is one COBS block: a code
/// byte, the payload, four CRC bytes and the delimiter (`payload.len() + 6` wire bytes).
fn corpus() -> Vec<Case> {
    let hello = frame(b"hello");
    assert_eq!(hello.len(), 11);

    let fits_exactly = [0x42; SMALL - CRC_LEN];
    let one_byte_over = [0x42; SMALL - CRC_LEN + 1];
    assert_eq!(frame(&one_byte_over).len(), 67);

    let mut corrupted_payload = hello.clone();
    corrupted_payload[1] = b'H';
    let mut corrupted_crc = hello.clone();
    corrupted_crc[6] ^= 0x01;
    let mut corrupted_code = hello.clone();
    corrupted_code[0] = 0x05;
    let mut zero_inside = hello.clone();
    zero_inside[3] = 0x00;

    let mut long_run_of_empty_blocks = vec![0x01; 1000];
    long_run_of_empty_blocks.push(0x00);

    vec![
        Case {
            name: "garbage ending in a delimiter before a valid frame",
            // Code 0x13 announces 18 data bytes; only two arrive.
            input: stream(&[&[0x13, 0x37, 0x42, 0x00], &hello]),
            expected: vec![dropped(DropReason::Truncated, 4), valid(b"hello")],
        },
        Case {
            name: "tail of a frame already in flight when the receiver started",
            input: stream(&[&hello[6..], &frame(b"next")]),
            // The tail starts at CRC byte 0x86, read as a code announcing 133 data bytes.
            expected: vec![dropped(DropReason::Truncated, 5), valid(b"next")],
        },
        Case {
            name: "well-formed garbage fails its CRC",
            // Decodes to AA BB 00 CC: an empty payload whose trailer is not crc32("") = 0.
            input: stream(&[&[0x03, 0xAA, 0xBB, 0x02, 0xCC, 0x00], &hello]),
            expected: vec![
                dropped(
                    DropReason::BadCrc {
                        expected: 0,
                        found: 0xCC00_BBAA,
                    },
                    6,
                ),
                valid(b"hello"),
            ],
        },
        Case {
            name: "garbage without a delimiter takes the next frame down with it",
            input: stream(&[&[0x13, 0x37], &hello, &frame(b"world")]),
            expected: vec![dropped(DropReason::Truncated, 2 + 11), valid(b"world")],
        },
        Case {
            name: "a sender's extra zero cuts garbage off from the next frame",
            input: stream(&[&[0x13, 0x37, 0x00], &hello]),
            expected: vec![dropped(DropReason::Truncated, 3), valid(b"hello")],
        },
        Case {
            name: "truncated frame: delimiter in the middle of a block",
            input: stream(&[&hello[..7], &[0x00], &frame(b"next")]),
            expected: vec![dropped(DropReason::Truncated, 8), valid(b"next")],
        },
        Case {
            name: "corrupted payload byte",
            input: stream(&[&corrupted_payload, &hello]),
            expected: vec![
                dropped(
                    DropReason::BadCrc {
                        expected: crc32(b"Hello"),
                        found: 0x3610_A686,
                    },
                    11,
                ),
                valid(b"hello"),
            ],
        },
        Case {
            name: "corrupted CRC byte",
            input: corrupted_crc,
            expected: vec![dropped(
                DropReason::BadCrc {
                    expected: 0x3610_A686,
                    found: 0x3610_A687,
                },
                11,
            )],
        },
        Case {
            name: "corrupted code byte",
            // Code 0x05 leaves "hell" and a zero; then 'o' announces 110 data bytes.
            input: corrupted_code,
            expected: vec![dropped(DropReason::Truncated, 11)],
        },
        Case {
            name: "a byte corrupted into a zero splits the frame in two",
            // 0A 68 65 | 00, then 6C (a code announcing 107 bytes) 6F 86 A6 10 36 | 00.
            input: stream(&[&zero_inside, &hello]),
            expected: vec![
                dropped(DropReason::Truncated, 4),
                dropped(DropReason::Truncated, 7),
                valid(b"hello"),
            ],
        },
        Case {
            name: "frame filling the buffer exactly",
            input: frame(&fits_exactly),
            expected: vec![valid(&fits_exactly)],
        },
        Case {
            name: "frame one byte over the buffer, then a valid frame",
            input: stream(&[&frame(&one_byte_over), &hello]),
            expected: vec![dropped(DropReason::TooLong, 67), valid(b"hello")],
        },
        Case {
            name: "very long frame reported once",
            // A thousand empty blocks decode to 999 zeros.
            input: stream(&[&long_run_of_empty_blocks, &hello]),
            expected: vec![dropped(DropReason::TooLong, 1001), valid(b"hello")],
        },
        Case {
            name: "frame decoding to nothing",
            input: vec![0x01, 0x00],
            expected: vec![dropped(DropReason::TooShort, 2)],
        },
        Case {
            name: "frames decoding to one, two and three bytes",
            input: vec![
                0x02, 0x41, 0x00, 0x01, 0x01, 0x00, 0x04, 0x41, 0x42, 0x43, 0x00,
            ],
            expected: vec![
                dropped(DropReason::TooShort, 3),
                dropped(DropReason::TooShort, 3),
                dropped(DropReason::TooShort, 5),
            ],
        },
        Case {
            name: "only zeros",
            input: vec![0x00; 300],
            expected: vec![],
        },
        Case {
            name: "nothing at all",
            input: vec![],
            expected: vec![],
        },
        Case {
            name: "a frame without its delimiter yet",
            input: hello[..10].to_vec(),
            expected: vec![],
        },
        Case {
            name: "empty payload",
            input: vec![0x01, 0x01, 0x01, 0x01, 0x01, 0x00],
            expected: vec![valid(b"")],
        },
        Case {
            name: "two frames back to back",
            input: stream(&[&frame(b"first"), &frame(b"second")]),
            expected: vec![valid(b"first"), valid(b"second")],
        },
        Case {
            name: "frames surrounded by idle fill",
            input: stream(&[
                &[0x00; 3],
                &frame(b"first"),
                &[0x00; 5],
                &frame(b"second"),
                &[0x00],
            ]),
            expected: vec![valid(b"first"), valid(b"second")],
        },
    ]
}

#[test]
fn corpus_of_malformed_frames() {
    for case in corpus() {
        let mut decoder = FrameDecoder::<SMALL>::new();
        let by_push = decode_by_push(&mut decoder, &case.input);
        assert_eq!(by_push, case.expected, "{}: byte by byte", case.name);
        assert_statistics(&decoder, &by_push, case.name);

        let mut decoder = FrameDecoder::<SMALL>::new();
        let whole = decode_by_feed(&mut decoder, &case.input, &[usize::MAX]);
        assert_eq!(whole, case.expected, "{}: one feed", case.name);
        assert_statistics(&decoder, &whole, case.name);

        let mut decoder = FrameDecoder::<SMALL>::new();
        let chunked = decode_by_feed(&mut decoder, &case.input, &[1, 2, 3, 7, 64]);
        assert_eq!(chunked, case.expected, "{}: chunked feed", case.name);
        assert_statistics(&decoder, &chunked, case.name);
    }
}

#[test]
fn frame_split_across_one_byte_feed_calls() {
    let payload: Vec<u8> = (0..=255).chain(0..=255).collect();
    let wire = stream(&[&frame(&payload), &frame(b"after")]);
    let mut decoder = DefaultFrameDecoder::new();
    let mut outputs = Vec::new();
    for (index, byte) in wire.iter().enumerate() {
        let mut input = core::slice::from_ref(byte);
        let result = decoder.feed(&mut input).map(to_output);
        assert!(input.is_empty(), "feed must consume the byte at {index}");
        assert_eq!(
            result.is_some(),
            *byte == 0,
            "only delimiters yield results"
        );
        outputs.extend(result);
    }
    assert_eq!(outputs, vec![valid(&payload), valid(b"after")]);
}

#[test]
fn feed_stops_right_after_the_first_result() {
    let first = frame(b"first");
    let wire = stream(&[&first, &frame(b"second")]);
    let mut decoder = FrameDecoder::<SMALL>::new();
    let mut input = &wire[..];
    assert_eq!(
        decoder.feed(&mut input).map(to_output),
        Some(valid(b"first"))
    );
    assert_eq!(input.len(), wire.len() - first.len());
    assert_eq!(
        decoder.feed(&mut input).map(to_output),
        Some(valid(b"second"))
    );
    assert!(input.is_empty());
    assert_eq!(decoder.feed(&mut input), None);
}

#[test]
fn largest_payload_round_trips_and_one_more_byte_is_refused() {
    let payload: Vec<u8> = (0..MAX_PAYLOAD).map(|index| (index % 251) as u8).collect();
    let wire = frame(&payload);
    let mut decoder = Box::new(DefaultFrameDecoder::new());
    assert_eq!(decode_by_push(&mut decoder, &wire), vec![valid(&payload)]);

    let mut out = vec![0; max_encoded_len(MAX_PAYLOAD + 1)];
    assert!(encode_frame(&[0; MAX_PAYLOAD + 1], &mut out).is_err());
}

// ---------------------------------------------------------------------------------------------
// Reference model and property tests
// ---------------------------------------------------------------------------------------------

/// Decodes the COBS bytes of one frame (between delimiters) block by block, the obvious
/// non-streaming way. Returns the decoded bytes and whether the input ended on a block
/// boundary; on a truncated block, the bytes that did arrive are included.
fn reference_cobs_decode(stuffed: &[u8]) -> (Vec<u8>, bool) {
    let mut decoded = Vec::new();
    let mut index = 0;
    while index < stuffed.len() {
        let code = usize::from(stuffed[index]);
        let block_start = index + 1;
        let block_end = block_start + code - 1;
        if block_end > stuffed.len() {
            decoded.extend_from_slice(&stuffed[block_start..]);
            return (decoded, false);
        }
        decoded.extend_from_slice(&stuffed[block_start..block_end]);
        index = block_end;
        // The implied zero after the last block is dropped; a 0xFF block implies none.
        if code != 0xFF && index < stuffed.len() {
            decoded.push(0);
        }
    }
    (decoded, true)
}

/// What a decoder with an `capacity`-byte buffer must report for one non-empty frame.
fn reference_verdict(stuffed: &[u8], capacity: usize) -> Output {
    let bytes = stuffed.len() + 1;
    let (decoded, complete) = reference_cobs_decode(stuffed);
    if decoded.len() > capacity {
        return dropped(DropReason::TooLong, bytes);
    }
    if !complete {
        return dropped(DropReason::Truncated, bytes);
    }
    if decoded.len() < CRC_LEN {
        return dropped(DropReason::TooShort, bytes);
    }
    let (payload, trailer) = decoded.split_at(decoded.len() - CRC_LEN);
    let found = u32::from_le_bytes(trailer.try_into().expect("four bytes"));
    let expected = crc32(payload);
    if expected == found {
        valid(payload)
    } else {
        dropped(DropReason::BadCrc { expected, found }, bytes)
    }
}

/// What a decoder with a `capacity`-byte buffer must report for a whole stream.
fn reference_outputs(input: &[u8], capacity: usize) -> Vec<Output> {
    let mut frames: Vec<&[u8]> = input.split(|&byte| byte == 0).collect();
    // The part after the last delimiter is a frame still in progress.
    frames.pop();
    frames
        .into_iter()
        .filter(|stuffed| !stuffed.is_empty())
        .map(|stuffed| reference_verdict(stuffed, capacity))
        .collect()
}

/// Bytes that favour the interesting cases: delimiters, small codes and full blocks.
fn soup_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => any::<u8>(),
        1 => Just(0x00),
        1 => 1_u8..=6,
        1 => Just(0xFF),
    ]
}

/// Payloads of up to `max_length` bytes built from runs that exercise every COBS block shape:
/// arbitrary bytes, long stretches without a zero (which need full 0xFF blocks) and zeros.
fn payload(max_length: usize) -> impl Strategy<Value = Vec<u8>> {
    let run = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..100),
        prop::collection::vec(1_u8..=0xFF, 0..600),
        prop::collection::vec(Just(0x00_u8), 1..5),
    ];
    prop::collection::vec(run, 0..6).prop_map(move |runs| {
        let mut payload = runs.concat();
        payload.truncate(max_length);
        payload
    })
}

/// One piece of a byte soup: random bytes, a valid frame, or idle fill.
fn soup_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(soup_byte(), 0..80),
        2 => payload(600).prop_map(|payload| frame(&payload)),
        1 => prop::collection::vec(Just(0x00_u8), 1..4),
    ]
}

/// One stretch of line noise that ends in a delimiter: non-zero bytes, then 0x00.
fn delimited_garbage() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1_u8..=0xFF, 1..40).prop_map(|mut garbage| {
        garbage.push(0x00);
        garbage
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any payload of up to 2 KiB survives framing and deframing unchanged.
    #[test]
    fn any_payload_round_trips(payload in payload(2048)) {
        let wire = frame(&payload);
        prop_assert!(wire.len() <= max_encoded_len(payload.len()));
        prop_assert_eq!(wire.iter().position(|&byte| byte == 0), Some(wire.len() - 1));

        let mut decoder = DefaultFrameDecoder::new();
        prop_assert_eq!(decode_by_push(&mut decoder, &wire), vec![valid(&payload)]);
    }

    /// Frames separated by delimited garbage and idle fill come out in order. Each stretch of
    /// garbage is its own frame and yields exactly one output: a report of exactly its length,
    /// or, should its CRC happen to match (a chance of about one in four billion, checked
    /// against the reference model rather than assumed away), an extra valid frame. Outputs
    /// from garbage are set aside; the rest must be exactly the original payloads, in order.
    #[test]
    fn payloads_survive_garbage_between_frames(
        segments in prop::collection::vec(
            (
                payload(600),
                prop::option::of(delimited_garbage()),
                0_usize..3,
            ),
            0..8,
        ),
        chunk_sizes in prop::collection::vec(1_usize..50, 1..5),
    ) {
        let mut wire = Vec::new();
        // What each frame on the wire is: a stretch of garbage (with its length) or an
        // original payload.
        let mut sources = Vec::new();
        for (payload, garbage, idle_zeros) in &segments {
            if let Some(garbage) = garbage {
                wire.extend_from_slice(garbage);
                sources.push(Err(garbage.as_slice()));
            }
            wire.extend(core::iter::repeat_n(0x00, *idle_zeros));
            wire.extend_from_slice(&frame(payload));
            sources.push(Ok(payload.as_slice()));
        }

        let mut decoder = DefaultFrameDecoder::new();
        let outputs = decode_by_feed(&mut decoder, &wire, &chunk_sizes);
        prop_assert_eq!(outputs.len(), sources.len());

        let mut recovered = Vec::new();
        for (output, source) in outputs.iter().zip(&sources) {
            match source {
                Ok(_) => recovered.push(output.clone()),
                Err(garbage) => {
                    let stuffed = &garbage[..garbage.len() - 1];
                    match output {
                        Output::Dropped(report) => prop_assert_eq!(report.bytes, garbage.len()),
                        Output::Frame(_) => {
                            prop_assert_eq!(output, &reference_verdict(stuffed, MAX_PAYLOAD + CRC_LEN));
                        }
                    }
                }
            }
        }
        let originals: Vec<Output> =
            segments.iter().map(|(payload, _, _)| valid(payload)).collect();
        prop_assert_eq!(recovered, originals);
    }

    /// Arbitrary byte soup: the decoder never panics, agrees with the reference model, yields
    /// results only at delimiters, reports the exact wire length of every discarded frame, and
    /// accounts for every byte: consumed = valid frames' wire bytes + dropped bytes + idle
    /// zeros. Chunked feeding sees the same results as pushing byte by byte.
    #[test]
    fn byte_soup_is_fully_accounted_for(
        pieces in prop::collection::vec(soup_piece(), 0..12),
        chunk_sizes in prop::collection::vec(1_usize..100, 1..5),
    ) {
        let mut input = pieces.concat();
        // A final delimiter flushes the frame in progress, so every byte gets a verdict.
        input.push(0x00);

        let mut decoder = FrameDecoder::<SMALL>::new();
        let mut outputs = Vec::new();
        let mut frame_start = 0;
        let mut valid_wire_bytes = 0;
        let mut idle_zeros = 0;
        for (index, &byte) in input.iter().enumerate() {
            let result = decoder.push(byte).map(to_output);
            if byte != 0x00 {
                prop_assert_eq!(result, None, "a result before the delimiter at {}", index);
                continue;
            }
            let frame_wire_bytes = index + 1 - frame_start;
            frame_start = index + 1;
            match &result {
                None => {
                    prop_assert_eq!(frame_wire_bytes, 1, "a non-empty frame vanished at {}", index);
                    idle_zeros += 1;
                }
                Some(Output::Frame(_)) => valid_wire_bytes += frame_wire_bytes,
                Some(Output::Dropped(report)) => prop_assert_eq!(report.bytes, frame_wire_bytes),
            }
            outputs.extend(result);
        }

        prop_assert_eq!(&outputs, &reference_outputs(&input, SMALL));
        let dropped_bytes = usize::try_from(decoder.bytes_dropped()).expect("small test input");
        prop_assert_eq!(input.len(), valid_wire_bytes + dropped_bytes + idle_zeros);

        let mut chunked_decoder = FrameDecoder::<SMALL>::new();
        prop_assert_eq!(&decode_by_feed(&mut chunked_decoder, &input, &chunk_sizes), &outputs);

        let mut large_decoder = DefaultFrameDecoder::new();
        prop_assert_eq!(
            decode_by_push(&mut large_decoder, &input),
            reference_outputs(&input, MAX_PAYLOAD + CRC_LEN)
        );
    }
}
