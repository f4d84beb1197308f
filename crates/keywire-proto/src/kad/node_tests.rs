//! Cores driven against each other with a perfect network and a virtual clock.

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::identity::SecretKey;
use crate::kad::rpc::Rpc;

const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

fn core(seed: u8, mode: ModeSetting) -> KadNode {
    let config = KadConfig {
        mode,
        ..KadConfig::default()
    };
    KadNode::new(SecretKey::from_seed([seed; 32]), config, [seed; 32], T0)
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, i as u8, 0, 1], 4433))
}

/// Delivers every transmit at once (same time), round after round, until quiet.
fn settle(nodes: &mut [KadNode], now: Timestamp) -> Vec<(usize, KadEvent)> {
    let mut events = Vec::new();
    for _ in 0..200 {
        let mut moved = false;
        for i in 0..nodes.len() {
            while let Some(t) = nodes[i].poll_transmit() {
                moved = true;
                if let Some(j) = (0..nodes.len()).find(|j| addr(*j) == t.to) {
                    nodes[j].handle_datagram(now, addr(i), &t.payload);
                }
            }
            while let Some(e) = nodes[i].poll_event() {
                events.push((i, e));
            }
        }
        if !moved {
            break;
        }
    }
    events
}

#[test]
fn a_small_network_joins_stores_and_finds_records() {
    let mut nodes: Vec<KadNode> = (0..12u8)
        .map(|i| {
            core(
                i + 1,
                if i == 0 {
                    ModeSetting::Server
                } else {
                    ModeSetting::Auto
                },
            )
        })
        .collect();
    for i in 1..nodes.len() {
        nodes[i].bootstrap(T0, &[addr(0)]);
        settle(&mut nodes, T0);
    }
    // Reachability checks that found no helper yet are retried with back-off.
    let mut now = T0;
    for _ in 0..8 {
        now = now + Duration::from_secs(11);
        for n in nodes.iter_mut() {
            n.handle_timeout(now);
        }
        settle(&mut nodes, now);
    }
    assert!(nodes.iter().all(|n| n.mode() == Mode::Server));
    for (i, n) in nodes.iter_mut().enumerate() {
        n.publish_record(now, vec![addr(i)], vec![]).unwrap();
    }
    let events = settle(&mut nodes, now);
    let stored = events
        .iter()
        .filter(|(_, e)| matches!(e, KadEvent::RecordStored { stored, .. } if *stored > 0))
        .count();
    assert_eq!(stored, nodes.len());
    let key = nodes[7].node_id();
    let id = nodes[3].find_record(now, key).unwrap();
    let events = settle(&mut nodes, now);
    let found = events.iter().find_map(|(i, e)| match e {
        KadEvent::LookupFinished {
            id: got, record, ..
        } if *i == 3 && *got == id => record.clone(),
        _ => None,
    });
    assert_eq!(found.unwrap().addrs, vec![addr(7)]);
    // Pub/sub across the network, with the observed address of the publisher.
    nodes[5].subscribe(now, [9; 32]).unwrap();
    settle(&mut nodes, now);
    nodes[9].publish(now, [9; 32], b"hi".to_vec()).unwrap();
    let events = settle(&mut nodes, now);
    let delivered = events.iter().find_map(|(i, e)| match e {
        KadEvent::Publication {
            publication,
            observed,
            ..
        } if *i == 5 => Some((publication.payload.clone(), *observed)),
        _ => None,
    });
    assert_eq!(delivered, Some((b"hi".to_vec(), addr(9))));
}

#[test]
fn unvalidated_replies_are_never_larger_than_requests() {
    let mut server = core(1, ModeSetting::Server);
    let mut other = core(2, ModeSetting::Server);
    other.bootstrap(T0, &[addr(0)]);
    let ping = other.poll_transmit().unwrap();
    server.handle_datagram(T0, addr(1), &ping.payload);
    let pong = server.poll_transmit().unwrap();
    assert!(pong.payload.len() <= ping.payload.len());
    // A bare, unpadded FIND_NODE without a cookie gets a reply no larger than itself.
    let request = Rpc {
        txid: 5,
        sender: other.node_id(),
        sender_is_server: false,
        cookie: None,
        message: Message::FindNode { target: [0; 32] },
        padding: 0,
    }
    .encode()
    .unwrap();
    server.handle_datagram(T0, addr(1), &request);
    while let Some(t) = server.poll_transmit() {
        assert!(
            t.payload.len() <= request.len(),
            "{} > {}",
            t.payload.len(),
            request.len()
        );
    }
}

proptest! {
    #[test]
    fn handle_datagram_never_panics(datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
        let mut node = core(1, ModeSetting::Server);
        node.bootstrap(T0, &[addr(1)]);
        for (i, d) in datagrams.iter().enumerate() {
            node.handle_datagram(T0 + Duration::from_millis(i as u64 * 400), addr(i % 3), d);
            node.handle_timeout(T0 + Duration::from_millis(i as u64 * 400));
            while node.poll_transmit().is_some() {}
            while node.poll_event().is_some() {}
        }
    }
}

#[test]
fn a_client_keeps_its_subscription_holders_pinged() {
    // Three servers and one client that never becomes a server (a client behind a NAT).
    let mut nodes: Vec<KadNode> = (0..4u8)
        .map(|i| {
            core(
                i + 1,
                if i < 3 {
                    ModeSetting::Server
                } else {
                    ModeSetting::Client
                },
            )
        })
        .collect();
    for i in 1..nodes.len() {
        nodes[i].bootstrap(T0, &[addr(0)]);
        settle(&mut nodes, T0);
    }
    nodes[3].subscribe(T0, [7; 32]).unwrap();
    settle(&mut nodes, T0);
    let mut holders: Vec<SocketAddr> = nodes[3].subscription_holders.keys().copied().collect();
    holders.sort();
    assert_eq!(holders.len(), 3, "every server holds the subscription");
    let every = KadConfig::default().subscription_keepalive.unwrap();
    // Nothing before the interval, one ping per holder once it is up, and again after.
    for round in 1..=2u32 {
        let early = T0 + every * round - Duration::from_millis(10);
        nodes[3].handle_timeout(early);
        assert!(nodes[3].poll_transmit().is_none());
        let due = T0 + every * round;
        assert!(nodes[3].poll_timeout().unwrap() <= due);
        nodes[3].handle_timeout(due);
        let mut pinged = Vec::new();
        while let Some(t) = nodes[3].poll_transmit() {
            let rpc = Rpc::decode(&t.payload).unwrap();
            assert!(matches!(rpc.message, Message::Ping), "{:?}", rpc.message);
            pinged.push(t.to);
        }
        pinged.sort();
        assert_eq!(pinged, holders, "round {round}");
    }
    // A server never sends keepalives.
    assert!(nodes[0].subscription_holders.is_empty());
}
