//! Punch signals: the decoder and the birthday plan never panic on any input, and nothing
//! without the key is ever taken (the fuzzer cannot forge a 128-bit MAC): the peer's NAT stays
//! unknown, so no input can start a spray or aim one anywhere.
#![no_main]

use std::time::{Duration, Instant};

use keywire_proto::nat::Mapping;
use keywire_proto::probe::punch::{Action, Punch, PunchConfig};
use keywire_proto::probe::ProbeKeys;
use keywire_proto::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = ProbeKeys::from_exported([7; 32]);
    let now = Instant::now();
    let mut punch = Punch::new(keys.clone(), Role::Acceptor, PunchConfig::default());
    punch.set_local(
        Mapping::EndpointIndependent,
        Some("198.51.100.1:4000".parse().unwrap()),
        now,
    );
    for (i, chunk) in data.split(|b| *b == 0xFF).enumerate() {
        let _ = keys.open_signal(chunk, Role::Acceptor);
        let _ = punch.handle(chunk, now + Duration::from_millis(i as u64));
    }
    punch.handle_timeout(now + Duration::from_secs(60));
    while let Some(action) = punch.poll_action() {
        assert!(matches!(action, Action::Signal(_)), "{action:?}");
    }
    assert_eq!(punch.peer_mapping(), None);
});
