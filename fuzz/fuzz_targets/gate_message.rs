//! Gate control message decoder: never panics; what decodes re-encodes to the input.
#![no_main]

use keywire_proto::gate::message::GateMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = GateMessage::framed_len(data);
    if let Ok(message) = GateMessage::decode(data) {
        let mut out = Vec::new();
        message.encode(&mut out);
        assert_eq!(out, data);
    }
});
