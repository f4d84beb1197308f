//! Path probes: the decoder and the prober never panic on any input, and nothing without the
//! key is ever accepted (the fuzzer cannot forge a 128-bit MAC, so every accepted input must be
//! a genuine probe that the fuzzer found by copying one out of the corpus).
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use keywire_proto::probe::{ProbeKeys, Prober, ProberConfig};
use keywire_proto::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = ProbeKeys::from_exported([7; 32]);
    let _ = keywire_proto::probe::tag_of(data);
    let now = Instant::now();
    let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let mut prober = Prober::new(
        keys.clone(),
        Role::Acceptor,
        ProberConfig::default(),
        &[peer],
        now,
        [3; 32],
    );
    prober.handle_timeout(now);
    while prober.poll_transmit().is_some() {}
    // Every chunk is handled as a probe from the peer; a response can never validate (its
    // nonce would have to match one the prober drew), so the path must stay undecided.
    for chunk in data.split(|b| *b == 0xFF) {
        let _ = prober.handle(peer, chunk, now);
        let _ = keys.open(chunk, Role::Dialer);
    }
    assert_eq!(prober.direct(), None);
});
