//! Stream-link decoders (raw framing, WebSocket frames and reassembly, HTTP heads): never
//! panic; a raw frame that decodes re-encodes to the bytes it took.
#![no_main]

use keywire_proto::link::{framing, http, websocket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = framing::sniff(data);
    // A stream of raw frames, cut the way a reader cuts it.
    let mut rest = data;
    while let Ok(Some((datagram, used))) = framing::decode(rest) {
        let mut out = Vec::new();
        framing::encode(datagram, &mut out).expect("a decoded datagram re-encodes");
        assert_eq!(out, &rest[..used]);
        rest = &rest[used..];
    }
    // The same bytes as WebSocket frames from either side, through reassembly.
    for from_client in [true, false] {
        let mut buf = data.to_vec();
        let mut at = 0;
        let mut reassembly = websocket::Reassembly::default();
        while let Ok(Some(frame)) = websocket::decode(&mut buf[at..], from_client) {
            let payload = buf[at..][frame.payload.clone()].to_vec();
            if reassembly.handle_frame(&frame, &payload).is_err() {
                break;
            }
            at += frame.consumed;
        }
    }
    let _ = http::parse_upgrade_request(data);
    let _ = http::check_upgrade_response(data, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let _ = http::check_connect_response(data);
});
