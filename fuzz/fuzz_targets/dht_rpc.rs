//! DHT RPC decoder: never panics; what decodes re-encodes to the same bytes.
#![no_main]

use keywire_proto::kad::Rpc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(rpc) = Rpc::decode(data) {
        let again = rpc.encode().expect("a decoded RPC fits the size cap");
        // Equal as messages (v4-mapped addresses and keys have one encoding each).
        assert_eq!(Rpc::decode(&again).expect("re-decodes"), rpc);
    }
});
