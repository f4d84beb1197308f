//! Node id text decoder: never panics; what decodes prints back to a string that decodes alike.
#![no_main]

use keywire_proto::NodeId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = text.parse::<NodeId>() {
            assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
        }
    }
});
