//! `Port` against a scripted stub on the other end of a socket pair.

use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::frame::{DefaultFrameDecoder, encode_message_vec};
use probe_port_protocol::message::*;
use userland_client::port::{OwnedEvent, Port, PortError, Unsolicited};

/// Reads one request from the stream and returns its sequence number and kind.
fn read_request(stream: &mut UnixStream, decoder: &mut DefaultFrameDecoder) -> (u32, String) {
    use std::io::Read;
    let mut byte = [0u8; 1];
    loop {
        stream.read_exact(&mut byte).unwrap();
        if let Some(Ok(payload)) = decoder.push(byte[0]) {
            let request = decode_request(payload).unwrap();
            return (request.seq, format!("{:?}", request.body));
        }
    }
}

fn send(stream: &mut UnixStream, message: &StubMessage<'_>) {
    use std::io::Write;
    stream
        .write_all(&encode_message_vec(message).unwrap())
        .unwrap();
}

#[test]
fn replies_are_matched_and_events_kept_in_order() {
    let (client, mut stub) = UnixStream::pair().unwrap();
    let stub_thread = thread::spawn(move || {
        let mut decoder = DefaultFrameDecoder::new();
        let (seq, kind) = read_request(&mut stub, &mut decoder);
        assert!(kind.starts_with("Hello"), "{kind}");
        // An event and a loss report before the reply, and line noise.
        let event = Event {
            cpu: 1,
            seq: 0,
            probe: ProbeId(4),
            time_ns: 10,
            data: &[1, 2],
        };
        send(&mut stub, &StubMessage::Event(event));
        std::io::Write::write_all(&mut stub, b"noise\x00").unwrap();
        send(
            &mut stub,
            &StubMessage::Lost(LostEvents {
                cpu: 1,
                first_seq: 1,
                count: 3,
            }),
        );
        send(
            &mut stub,
            &StubMessage::Reply {
                seq,
                reply: Ok(ReplyBody::Done),
            },
        );

        let (seq, _) = read_request(&mut stub, &mut decoder);
        let refusal = ErrorReply::with(ErrorCode::UNKNOWN_PROBE, ErrorDetail::Value(9));
        send(
            &mut stub,
            &StubMessage::Reply {
                seq,
                reply: Err(refusal),
            },
        );
    });

    let mut port = Port::new(client);
    port.set_timeout(Duration::from_secs(10));
    let reply = port.hello("test").unwrap();
    assert_eq!(reply.get(), Ok(ReplyBody::Done));
    assert_eq!(
        port.take_unsolicited(),
        [
            Unsolicited::Event(OwnedEvent {
                cpu: 1,
                seq: 0,
                probe: 4,
                time_ns: 10,
                data: vec![1, 2]
            }),
            Unsolicited::Lost(LostEvents {
                cpu: 1,
                first_seq: 1,
                count: 3
            }),
        ]
    );
    assert_eq!(port.dropped_frames().len(), 1, "the noise is counted");

    let reply = port
        .request(RequestBody::Disarm { probe: ProbeId(9) })
        .unwrap();
    let error = reply.get().unwrap_err();
    assert_eq!(error.code, ErrorCode::UNKNOWN_PROBE);
    assert!(matches!(reply.ok(), Err(PortError::Refused(text)) if text.contains("unknown probe")));
    stub_thread.join().unwrap();
}

#[test]
fn a_silent_stub_times_out_and_a_closed_one_is_reported() {
    let (client, stub) = UnixStream::pair().unwrap();
    let mut port = Port::new(client);
    port.set_timeout(Duration::from_millis(200));
    assert!(matches!(
        port.request(RequestBody::KeepAlive),
        Err(PortError::Timeout { seq: 1, .. })
    ));
    drop(stub);
    assert!(matches!(
        port.request(RequestBody::KeepAlive),
        Err(PortError::Closed | PortError::Io(_))
    ));
}

#[test]
fn a_reply_to_another_request_is_an_error() {
    let (client, mut stub) = UnixStream::pair().unwrap();
    let stub_thread = thread::spawn(move || {
        let mut decoder = DefaultFrameDecoder::new();
        let (seq, _) = read_request(&mut stub, &mut decoder);
        send(
            &mut stub,
            &StubMessage::Reply {
                seq: seq + 100,
                reply: Ok(ReplyBody::Done),
            },
        );
    });
    let mut port = Port::new(client);
    port.set_timeout(Duration::from_secs(10));
    assert!(matches!(
        port.request(RequestBody::KeepAlive),
        Err(PortError::UnexpectedReply {
            expected: 1,
            got: 101
        })
    ));
    stub_thread.join().unwrap();
}
