//! A small in-process model of a stub on the far end of a Unix socket: it answers the
//! handshake, marker table, map definitions and arming (refusing the sites a test
//! names), emits the events a test constructs once started, answers `ReadMap` with
//! pages the test provides, and reports the counters it is given.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};

use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::frame::{DefaultFrameDecoder, encode_message_vec};
use probe_port_protocol::message::*;

/// Something the fake sends after `Start`.
#[derive(Clone, Debug)]
pub enum Emit {
    /// An event: CPU, sequence number, probe, record bytes.
    Event {
        cpu: u16,
        seq: u64,
        probe: u32,
        data: Vec<u8>,
    },
    /// A loss report.
    Lost {
        cpu: u16,
        first_seq: u64,
        count: u64,
    },
}

/// What the fake stub is and does.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub build_id: Vec<u8>,
    pub cpu_count: u16,
    /// Marker names with argument names and types.
    pub markers: Vec<(String, Vec<(String, ArgType)>)>,
    /// Addresses `Arm` refuses, with the error.
    pub refuse: Vec<(u64, ErrorCode, ErrorDetailOwned)>,
    /// Sent after the reply to `Start`.
    pub emit: Vec<Emit>,
    /// Per map: pages of entries (each page's bytes and entry count).
    pub pages: HashMap<u16, Vec<(Vec<u8>, u32)>>,
    /// Per CPU: the next sequence number `CpuStats` reports.
    pub next_seq: HashMap<u16, u64>,
    /// Per probe: (faults, last fault address, misses, drops).
    pub probe_stats: HashMap<u32, (u64, u64, u64, u64)>,
    pub lease_ms: u32,
    /// Capabilities announced besides the default 0x7f (kernel symbol sites, say).
    pub extra_capabilities: u32,
    /// Set once `Start` was answered (for tests that act on a running session).
    pub started: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// An owned `ErrorDetail`.
#[derive(Clone, Debug)]
pub enum ErrorDetailOwned {
    Address(u64),
    Bytes(Vec<u8>),
}

/// What the fake saw: every request kind in order, and the sites armed.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub requests: Vec<String>,
    pub armed: Vec<String>,
}

fn send(stream: &mut impl Write, message: &StubMessage<'_>) {
    stream
        .write_all(&encode_message_vec(message).unwrap())
        .unwrap();
}

/// Serves `model` on `stream` until `Goodbye` or the end of the stream.
pub fn serve<S: Read + Write>(mut stream: S, model: Model) -> Seen {
    let mut seen = Seen::default();
    let mut decoder = DefaultFrameDecoder::new();
    let mut next_probe = 1;
    let mut buffer = [0u8; 4096];
    loop {
        let read = match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return seen,
            Ok(read) => read,
        };
        let mut input = &buffer[..read];
        let mut payloads = Vec::new();
        while !input.is_empty() {
            if let Some(Ok(payload)) = decoder.feed(&mut input) {
                payloads.push(payload.to_vec());
            }
        }
        for payload in payloads {
            let request = decode_request(&payload).unwrap();
            let seq = request.seq;
            let kind = format!("{:?}", request.body);
            seen.requests
                .push(kind.split([' ', '(', '{']).next().unwrap().to_string());
            let reply = |stream: &mut S, reply: Result<ReplyBody<'_>, ErrorReply<'_>>| {
                send(stream, &StubMessage::Reply { seq, reply })
            };
            match request.body {
                RequestBody::Hello(_) => reply(
                    &mut stream,
                    Ok(ReplyBody::Hello(HelloReply {
                        version: 1,
                        kernel: KernelIdentity {
                            build_id: &model.build_id,
                            name: "fake-stub",
                            arch: Arch::X86_64,
                        },
                        cpu_count: model.cpu_count,
                        limits: Limits {
                            max_message: 4096,
                            max_program_insns: 4096,
                            max_probes: 64,
                            max_maps: 16,
                            map_memory: 1 << 20,
                            ring_bytes_per_cpu: 65536,
                            max_record: 1024,
                            return_depth: 16,
                        },
                        capabilities: Capabilities(0x7f | model.extra_capabilities),
                        lease_ms: model.lease_ms,
                    })),
                ),
                RequestBody::DescribeMarker { index } => match model.markers.get(index as usize) {
                    Some((name, args)) => {
                        let args = args
                            .iter()
                            .map(|(name, ty)| MarkerArg { name, ty: *ty })
                            .collect();
                        reply(
                            &mut stream,
                            Ok(ReplyBody::Marker(MarkerInfo {
                                index,
                                total: model.markers.len() as u32,
                                name,
                                address: 0x1000 + u64::from(index),
                                args,
                            })),
                        )
                    }
                    None => reply(
                        &mut stream,
                        Err(ErrorReply::with(
                            ErrorCode::UNKNOWN_MARKER,
                            ErrorDetail::Value(u64::from(index)),
                        )),
                    ),
                },
                RequestBody::Arm(arm) => {
                    let address = match arm.site {
                        Site::Dynamic { address, .. } | Site::Return { address, .. } => address,
                        _ => 0,
                    };
                    seen.armed.push(format!("{:?}", arm.site));
                    match model.refuse.iter().find(|(at, _, _)| *at == address) {
                        Some((_, code, detail)) => {
                            let detail = match detail {
                                ErrorDetailOwned::Address(address) => {
                                    ErrorDetail::Address(*address)
                                }
                                ErrorDetailOwned::Bytes(bytes) => ErrorDetail::Bytes(bytes),
                            };
                            reply(&mut stream, Err(ErrorReply::with(*code, detail)))
                        }
                        None => {
                            reply(
                                &mut stream,
                                Ok(ReplyBody::Armed {
                                    probe: ProbeId(next_probe),
                                }),
                            );
                            next_probe += 1;
                        }
                    }
                }
                RequestBody::Start => {
                    reply(&mut stream, Ok(ReplyBody::Done));
                    model
                        .started
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    for emit in &model.emit {
                        match emit {
                            Emit::Event {
                                cpu,
                                seq,
                                probe,
                                data,
                            } => send(
                                &mut stream,
                                &StubMessage::Event(Event {
                                    cpu: *cpu,
                                    seq: *seq,
                                    probe: ProbeId(*probe),
                                    time_ns: 1000 * seq,
                                    data,
                                }),
                            ),
                            Emit::Lost {
                                cpu,
                                first_seq,
                                count,
                            } => send(
                                &mut stream,
                                &StubMessage::Lost(LostEvents {
                                    cpu: *cpu,
                                    first_seq: *first_seq,
                                    count: *count,
                                }),
                            ),
                        }
                    }
                }
                RequestBody::ReadMap { map, cursor } => {
                    let pages = model.pages.get(&map.0).cloned().unwrap_or_default();
                    let (entries, count) = pages.get(cursor as usize).cloned().unwrap_or_default();
                    let next_cursor = (cursor as usize + 1 < pages.len()).then_some(cursor + 1);
                    reply(
                        &mut stream,
                        Ok(ReplyBody::MapPage(MapPage {
                            map,
                            count,
                            entries: &entries,
                            next_cursor,
                        })),
                    )
                }
                RequestBody::CpuStats { cpu } => reply(
                    &mut stream,
                    Ok(ReplyBody::CpuStats(CpuStats {
                        cpu,
                        next_seq: model.next_seq.get(&cpu).copied().unwrap_or(0),
                        ..CpuStats::default()
                    })),
                ),
                RequestBody::ProbeStats { probe } => {
                    let (faults, last_fault_address, misses, drops) =
                        model.probe_stats.get(&probe.0).copied().unwrap_or_default();
                    reply(
                        &mut stream,
                        Ok(ReplyBody::ProbeStats(ProbeStats {
                            probe,
                            hits: 0,
                            misses,
                            faults,
                            last_fault_address,
                            drops,
                        })),
                    )
                }
                RequestBody::Goodbye => {
                    reply(&mut stream, Ok(ReplyBody::Done));
                    return seen;
                }
                _ => reply(&mut stream, Ok(ReplyBody::Done)),
            }
        }
    }
}

/// Serves `model` on one end of a socket pair in a thread; returns the other end.
pub fn spawn(model: Model) -> (UnixStream, JoinHandle<Seen>) {
    let (client, stub) = UnixStream::pair().unwrap();
    let handle = thread::spawn(move || serve(stub, model));
    (client, handle)
}

/// A record: its number, then 8-byte values.
pub fn record(id: u64, values: &[u64]) -> Vec<u8> {
    std::iter::once(id)
        .chain(values.iter().copied())
        .flat_map(u64::to_le_bytes)
        .collect()
}

/// Little-endian words, for map pages.
pub fn words(values: &[u64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}
