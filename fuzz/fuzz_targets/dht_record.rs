//! Address record and publication decoders: never panic; decoded values re-encode and
//! re-decode to themselves; validation never panics.
#![no_main]

use keywire_proto::kad::record::{AddressRecord, Publication};
use keywire_proto::kad::wire::Reader;
use keywire_proto::kad::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Timestamp::from_unix_millis(1_700_000_000_000);
    if let Ok(record) = AddressRecord::decode(&mut Reader::new(data)) {
        let _ = record.validate(now, std::time::Duration::from_secs(3600));
        let mut out = Vec::new();
        record.encode(&mut out);
        assert_eq!(
            AddressRecord::decode(&mut Reader::new(&out)).unwrap(),
            record
        );
    }
    if let Ok(publication) = Publication::decode(&mut Reader::new(data)) {
        let _ = publication.validate(now);
        let mut out = Vec::new();
        publication.encode(&mut out);
        assert_eq!(
            Publication::decode(&mut Reader::new(&out)).unwrap(),
            publication
        );
    }
});
