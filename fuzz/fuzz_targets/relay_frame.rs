//! Relay frame decoder: never panics; what decodes re-encodes to the input.
#![no_main]

use keywire_proto::gate::frame::RelayFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = RelayFrame::decode(data) {
        let mut out = Vec::new();
        frame.encode(&mut out);
        assert_eq!(out, data);
    }
});
