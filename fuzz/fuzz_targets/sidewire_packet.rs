//! Fuzzes the sidewire 0.1.9 packet decoder (compatibility mode) and the replay memory it feeds.
//! None may panic on any input (DESIGN.md rule 2).
#![no_main]

use keywire_proto::sidewire::{
    decode_packet, decode_unverified, encode_packet, SeenMessages, SidewireSecretKey, MAX_MESSAGE,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The full receive path: sizes, type, source key, signature.
    let _ = decode_packet(data);
    // The layout on its own (a fuzzer cannot forge a signature to get past the check).
    if let Ok((fields, _source)) = decode_unverified(data) {
        assert!(fields.message.len() <= MAX_MESSAGE);
        // Decoded fields re-encode and verify to the same fields under a real key.
        let key = SidewireSecretKey::from_bytes(&[7; 32]).expect("valid scalar");
        let encoded = encode_packet(&key, &fields);
        let (source, again) = decode_packet(&encoded).expect("own packet verifies");
        assert_eq!(&source, key.public_key());
        assert_eq!(again, fields);
        // Any timestamp, any clock: the replay memory decides without panicking.
        let mut seen = SeenMessages::new(4, fields.timestamp_secs / 2);
        let _ = seen.check(&source, &again, fields.timestamp_secs.wrapping_mul(3));
        let _ = seen.check(&source, &again, u64::MAX);
    }
});
