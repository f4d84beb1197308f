//! The DHT core's handle_* never panic and its queues stay bounded, whatever arrives: the
//! input is cut into datagrams from a few source addresses, interleaved with time steps and
//! timeouts.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use keywire_proto::kad::node::{ModeSetting, MAX_EVENTS, MAX_TRANSMITS};
use keywire_proto::kad::{KadConfig, KadNode, Timestamp};
use keywire_proto::SecretKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut now = Timestamp::from_unix_millis(1_700_000_000_000);
    let config = KadConfig {
        mode: ModeSetting::Server,
        ..KadConfig::default()
    };
    let mut node = KadNode::new(SecretKey::from_seed([1; 32]), config, [2; 32], now);
    node.bootstrap(now, &["10.0.0.1:1".parse().unwrap()]);
    let mut rest = data;
    while let [control, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (datagram, after) = tail.split_at(len);
        rest = after;
        let from = SocketAddr::from(([10, 0, 0, control & 3], 1 + u16::from(control >> 6)));
        if control & 0x20 != 0 {
            now = now + Duration::from_millis(u64::from(*control) * 37);
            node.handle_timeout(now);
        }
        node.handle_datagram(now, from, datagram);
        let mut sent = 0;
        while node.poll_transmit().is_some() {
            sent += 1;
        }
        assert!(sent <= MAX_TRANSMITS);
        let mut events = 0;
        while node.poll_event().is_some() {
            events += 1;
        }
        assert!(events <= MAX_EVENTS);
        let _ = node.poll_timeout();
    }
});
