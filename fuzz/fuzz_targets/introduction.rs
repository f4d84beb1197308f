//! Introductions and nudges (`keywire_proto::intro`): the decoders never panic on any input,
//! whatever decodes re-encodes to the same bytes, every decoded candidate is usable, and the
//! replay guard stays within its bound.
#![no_main]

use keywire_proto::intro::{
    decode_nudge, encode_nudge, is_usable_candidate, IntroGuard, Introduction,
    MAX_INTRO_CANDIDATES,
};
use keywire_proto::SecretKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(nonce) = decode_nudge(data) {
        assert_eq!(&encode_nudge(&nonce)[..], data);
    }
    let me = SecretKey::from_seed([1; 32]).node_id();
    let from = SecretKey::from_seed([2; 32]).node_id();
    let mut guard = IntroGuard::new(4);
    for chunk in data.split(|b| *b == 0xFF) {
        let Ok(intro) = Introduction::decode(chunk) else {
            continue;
        };
        assert_eq!(intro.encode(), chunk);
        assert!(intro.candidates.len() <= MAX_INTRO_CANDIDATES);
        assert!(intro.candidates.iter().all(is_usable_candidate));
        let _ = guard.accept(&from, &intro, &me, intro.time_ms);
    }
});
