//! `Stub::serve_bytes` on random input: it never panics, it writes only valid
//! frames, and every frame that reaches it intact gets exactly one reply — valid
//! requests, undecodable payloads and requests in any session state alike.

#[macro_use]
mod common;

use common::*;
use kernel_stub::{ArgType, MarkerSite, Stub};
use probe_port_protocol::frame::{DefaultFrameDecoder, encode_frame_vec};
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};
use probe_port_protocol::message::{
    ArmRequest, Hello, ProbeId, Request, RequestBody, Site, StubMessage, TimerScope,
    decode_stub_message, encode,
};
use proptest::prelude::*;

static MARKERS: [MarkerSite; 1] = [MarkerSite::new("fuzz:marker", &[("a", ArgType::U64)])];

/// A request built from a few random numbers, aimed at the interesting places of
/// the simulated kernel.
fn request(kind: u8, a: u64, b: u64, c: u8) -> RequestBody<'static> {
    const PROGRAMS: [&[u8]; 3] = [
        // mov64 r0, 0; exit
        &[0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0],
        // exit (r0 unset: rejected)
        &[0x95, 0, 0, 0, 0, 0, 0, 0],
        // mov64 r0, 0; ja -2; exit (backward: rejected)
        &[
            0xb7, 0, 0, 0, 0, 0, 0, 0, 0x05, 0, 0xfe, 0xff, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0,
        ],
    ];
    const EXPECTED: [&[u8]; 4] = [&[0x55], &[0x90], &[0x48, 0x89, 0xe5], &[0xcc]];
    let program = PROGRAMS[usize::from(c) % PROGRAMS.len()];
    let expected = EXPECTED[usize::from(c) % EXPECTED.len()];
    let address = match a % 4 {
        0 => F + b % 24,
        1 => NOPS + b % 64,
        2 => G + b % 10,
        _ => AREA_BASE + b % 64,
    };
    match kind % 16 {
        // Mostly valid, sometimes no common version or an inverted range.
        0 => RequestBody::Hello(Hello {
            min_version: if a.is_multiple_of(4) { 2 } else { 1 },
            max_version: if b.is_multiple_of(4) {
                0
            } else {
                1 + (b % 2) as u16
            },
            client: "fuzz",
        }),
        1 => RequestBody::DefineMap(MapSpec {
            map: MapId((a % 4) as u16),
            kind: if b.is_multiple_of(2) {
                MapKind::Hash
            } else {
                MapKind::Aggregate(AggregateKind::Count)
            },
            key_size: (c % 16) as u16,
            value_size: 8,
            max_entries: (b % 100) as u32,
        }),
        2 | 3 => RequestBody::Arm(ArmRequest {
            site: Site::Dynamic { address, expected },
            program,
        }),
        4 => RequestBody::Arm(ArmRequest {
            site: Site::Return {
                address,
                expected,
                entry_program: if b.is_multiple_of(2) { &[] } else { program },
            },
            program,
        }),
        5 => RequestBody::Arm(ArmRequest {
            site: if a.is_multiple_of(2) {
                Site::Marker {
                    index: (b % 2) as u32,
                }
            } else {
                Site::Timer {
                    period_ns: b % 3,
                    scope: if c.is_multiple_of(2) {
                        TimerScope::OneCpu
                    } else {
                        TimerScope::EachCpu
                    },
                }
            },
            program,
        }),
        6 => RequestBody::Disarm {
            probe: ProbeId((a % 8) as u32),
        },
        7 => RequestBody::Start,
        8 => RequestBody::Stop,
        9 => RequestBody::ReadMap {
            map: MapId((a % 4) as u16),
            cursor: (b % 300) as u32,
        },
        10 => RequestBody::ClearMap {
            map: MapId((a % 4) as u16),
        },
        11 => RequestBody::ProbeStats {
            probe: ProbeId((a % 8) as u32),
        },
        12 => RequestBody::CpuStats {
            cpu: (a % 4) as u16,
        },
        13 => RequestBody::DescribeMarker {
            index: (a % 3) as u32,
        },
        14 => RequestBody::ReadMemory {
            address: if b.is_multiple_of(5) { a } else { address },
            len: (b % 1100) as u16,
        },
        _ => {
            if a.is_multiple_of(5) {
                RequestBody::Goodbye
            } else {
                RequestBody::KeepAlive
            }
        }
    }
}

/// One piece of the input stream, and how many replies it must cause.
#[derive(Clone, Debug)]
enum Piece {
    /// Bytes that are not a frame, then a delimiter: dropped, no reply.
    Garbage(Vec<u8>),
    /// A valid frame around random bytes: one reply (`MALFORMED` or other).
    Payload(Vec<u8>),
    /// A valid frame around a real request, maybe with one byte changed.
    Request {
        seq: u32,
        kind: u8,
        a: u64,
        b: u64,
        c: u8,
        flip: Option<(usize, u8)>,
    },
}

impl Piece {
    fn wire(&self) -> (Vec<u8>, usize) {
        match self {
            Piece::Garbage(bytes) => {
                // Not a valid frame: the CRC of fewer than 5 bytes cannot match,
                // and longer garbage gets a wrong trailer on purpose.
                let mut wire: Vec<u8> = bytes.iter().map(|&byte| byte.max(1)).collect();
                if wire.len() > 4 {
                    let mut frame = encode_frame_vec(&wire).unwrap();
                    frame.pop();
                    let last = frame.len() - 1;
                    frame[last] = frame[last].wrapping_add(1).max(1);
                    wire = frame;
                }
                wire.push(0);
                (wire, 0)
            }
            Piece::Payload(bytes) => (encode_frame_vec(bytes).unwrap(), 1),
            Piece::Request {
                seq,
                kind,
                a,
                b,
                c,
                flip,
            } => {
                let mut payload = encode(&Request {
                    seq: *seq,
                    body: request(*kind, *a, *b, *c),
                })
                .unwrap();
                if let Some((position, value)) = flip {
                    let position = position % payload.len();
                    payload[position] = *value;
                }
                (encode_frame_vec(&payload).unwrap(), 1)
            }
        }
    }
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Piece::Garbage),
        2 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Piece::Payload),
        8 => (
            0..u32::MAX,
            any::<u8>(),
            any::<u64>(),
            any::<u64>(),
            any::<u8>(),
            proptest::option::weighted(0.2, (any::<usize>(), any::<u8>()))
        )
            .prop_map(|(seq, kind, a, b, c, flip)| Piece::Request { seq, kind, a, b, c, flip }),
    ]
}

/// The stub of one proptest (each test has its own: they run in parallel, and a
/// stub's state carries from case to case on purpose).
macro_rules! fuzz_stub {
    () => {{
        static STUB: Stub<Sim> = Stub::new(Sim::new());
        STUB.platform().set_markers(&MARKERS);
        &STUB
    }};
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn every_intact_frame_gets_exactly_one_reply(
        pieces in proptest::collection::vec(piece(), 1..24),
        splits in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let stub: &'static Stub<Sim> = fuzz_stub!();
        // Every case begins with a handshake (refused if the previous case left
        // the session open), so that most requests meet an open session.
        let hello = Piece::Request { seq: 0, kind: 0, a: 1, b: 1, c: 0, flip: None };
        let (mut input, mut expected) = hello.wire();
        for piece in &pieces {
            let (wire, replies) = piece.wire();
            input.extend(wire);
            expected += replies;
        }
        // Delivered in arbitrary chunks, as a serial line would.
        let mut output = Vec::new();
        let mut rest = &input[..];
        let mut split = splits.iter().cycle();
        while !rest.is_empty() {
            let take = (*split.next().unwrap()).min(rest.len());
            stub.serve_bytes(&rest[..take], &mut |bytes| output.extend_from_slice(bytes));
            rest = &rest[take..];
        }
        let mut decoder = DefaultFrameDecoder::new();
        let mut replies = 0;
        let mut stream = &output[..];
        while !stream.is_empty() {
            if let Some(frame) = decoder.feed(&mut stream) {
                let payload = frame.expect("the stub writes only valid frames");
                let message = decode_stub_message(payload).expect("and only valid messages");
                if matches!(message, StubMessage::Reply { .. }) {
                    replies += 1;
                }
            }
        }
        prop_assert_eq!(replies, expected);
        // Whatever happened, the stub is consistent enough to end cleanly.
        prop_assert_eq!(stub.anomalies(), (0, 0));
    }
}

/// Counts the replies in a stream of frames the stub wrote, checking that every
/// frame and message is valid.
fn replies_in(output: &[u8]) -> usize {
    let mut decoder = DefaultFrameDecoder::new();
    let mut replies = 0;
    let mut stream = output;
    while !stream.is_empty() {
        if let Some(frame) = decoder.feed(&mut stream) {
            let payload = frame.expect("the stub writes only valid frames");
            let message = decode_stub_message(payload).expect("and only valid messages");
            replies += usize::from(matches!(message, StubMessage::Reply { .. }));
        }
    }
    replies
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Raw bytes, no structure at all (zeros are frequent, so frames do form):
    /// the oracle is a reference frame decoder run over the same bytes.
    #[test]
    fn raw_bytes_never_panic_and_each_accepted_frame_gets_one_reply(
        input in proptest::collection::vec(
            prop_oneof![4 => any::<u8>(), 1 => Just(0u8)], 0..512),
    ) {
        let stub: &'static Stub<Sim> = fuzz_stub!();
        let mut reference = DefaultFrameDecoder::new();
        let mut accepted = 0;
        let mut rest = &input[..];
        while !rest.is_empty() {
            if let Some(Ok(_)) = reference.feed(&mut rest) {
                accepted += 1;
            }
        }
        let mut output = Vec::new();
        // A fresh decoder state in the stub: end any partial frame first.
        stub.serve_bytes(&[0], &mut |bytes| output.extend_from_slice(bytes));
        output.clear();
        stub.serve_bytes(&input, &mut |bytes| output.extend_from_slice(bytes));
        prop_assert_eq!(replies_in(&output), accepted);
    }
}

#[test]
fn a_session_over_bytes_ends_with_the_text_restored() {
    let stub = new_stub!();
    let sim = stub.platform();
    let before = sim.text();
    let frames: Vec<u8> = [
        request(0, 1, 1, 0),
        request(2, 0, 0, 0),
        request(7, 0, 0, 0),
    ]
    .into_iter()
    .enumerate()
    .flat_map(|(seq, body)| {
        encode_frame_vec(
            &encode(&Request {
                seq: seq as u32,
                body,
            })
            .unwrap(),
        )
        .unwrap()
    })
    .collect();
    let mut output = Vec::new();
    stub.serve_bytes(&frames, &mut |bytes| output.extend_from_slice(bytes));
    assert_eq!(sim.read(F, 1), [0xcc]);
    let mut regs = call_registers(F, STACK_BASE + 0x8000, &[]);
    assert!(sim.fetch(stub, 0, &mut regs).is_some());
    stub.end_session();
    assert_eq!(sim.text(), before);
    let mut decoder = DefaultFrameDecoder::new();
    let mut stream = &output[..];
    let mut seqs = Vec::new();
    while let Some(frame) = decoder.feed(&mut stream) {
        if let StubMessage::Reply { seq, reply } = decode_stub_message(frame.unwrap()).unwrap() {
            assert!(reply.is_ok(), "{reply:?}");
            seqs.push(seq);
        }
    }
    assert_eq!(seqs, [0, 1, 2]);
}
