//! Arbitrary payloads through both message decoders: never a panic, and every
//! message that decodes re-encodes to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use probe_port_protocol::message::{
    classify_undecodable, decode_request, decode_stub_message, encode,
};

fuzz_target!(|payload: &[u8]| {
    match decode_request(payload) {
        Ok(request) => {
            let _ = request.validate();
            let bytes = encode(&request).expect("a decoded request re-encodes");
            assert_eq!(decode_request(&bytes).expect("re-encoded request decodes"), request);
        }
        Err(_) => {
            let _ = classify_undecodable(payload);
        }
    }
    if let Ok(message) = decode_stub_message(payload) {
        let bytes = encode(&message).expect("a decoded message re-encodes");
        assert_eq!(decode_stub_message(&bytes).expect("re-encoded message decodes"), message);
    }
});
