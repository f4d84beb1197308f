//! Classifier and control-packet decoder: never panic; what decodes re-encodes to the input.
#![no_main]

use keywire_proto::datagram::{classify, ControlPacket, DatagramClass};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let class = classify(data);
    if let Ok(packet) = ControlPacket::decode(data) {
        assert_eq!(class, DatagramClass::Control);
        let mut out = Vec::new();
        packet.encode(&mut out);
        assert_eq!(out, data);
    }
});
