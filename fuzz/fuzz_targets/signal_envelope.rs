//! Fuzzes the MQTT signalling envelope decoders: the sealed box, the inner layout and the ACK
//! body. None may panic on any input (DESIGN.md rule 2).
#![no_main]

use keywire_proto::signal::{open, AckBody, Envelope};
use keywire_proto::SecretKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_seed([2; 32]);
    // The full receive path: size check, decryption, layout, destination, signature.
    let _ = open(&key, data);
    // The inner layout on its own (a fuzzer cannot get past the AEAD to reach it otherwise).
    if let Ok((envelope, _signature)) = Envelope::decode_unverified(data) {
        // A decoded envelope re-encodes to the same bytes (the signature aside).
        let signer = SecretKey::from_seed([1; 32]);
        let mut copy = envelope.clone();
        copy.source = signer.node_id();
        let encoded = copy.encode_signed(&signer).expect("decoded payload fits");
        let (again, _) = Envelope::decode_unverified(&encoded).expect("re-decodes");
        assert_eq!(again, copy);
    }
    let _ = AckBody::decode(data);
});
