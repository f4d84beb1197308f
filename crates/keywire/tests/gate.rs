//! Gates on real sockets: registration, observation, introductions, relaying, refusals.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use keywire::gate::{Gate, GateClient, GateConfig, GateError};
use keywire::proto::gate::frame::RelayFrame;
use keywire::proto::gate::message::RefusalCode;
use keywire::proto::gate::observe::Observe;
use keywire::{ControlKind, Endpoint};

async fn gate_with(config: GateConfig) -> (Endpoint, Gate) {
    let endpoint = bind(common::config());
    let gate = Gate::spawn(&endpoint, config).await.expect("gate starts");
    (endpoint, gate)
}

#[tokio::test]
async fn registration_reports_the_observed_address_and_a_second_port() {
    let (gate_node, gate) = gate_with(GateConfig::default()).await;
    let client = bind(config());
    let registration = registered(&client, &gate_node).await;
    assert_eq!(
        registration.observed_addr(),
        client.local_addr().unwrap(),
        "no NAT on loopback"
    );
    assert_eq!(registration.observation_addr(), gate.observation_addr());
    assert_ne!(
        gate.observation_addr().port(),
        gate_node.local_addr().unwrap().port()
    );
    assert_eq!(gate.clients(), 1);

    // The second port tells a raw socket its address; an unpadded request gets nothing.
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    raw.send_to(
        &Observe::Request { nonce: 42 }.encode()[..20],
        gate.observation_addr(),
    )
    .await
    .unwrap();
    raw.send_to(
        &Observe::Request { nonce: 43 }.encode(),
        gate.observation_addr(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = within(5, "observation reply", raw.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        Observe::decode(&buf[..n]),
        Some(Observe::Reply {
            nonce: 43,
            observed: raw.local_addr().unwrap()
        })
    );
    assert_eq!(gate.metrics().observations, 1);
}

#[tokio::test]
async fn introductions_and_relayed_frames() {
    let (gate_node, gate) = gate_with(GateConfig::default()).await;
    let (alice, bob) = (bind(config()), bind(config()));
    let mut alice_relay = alice.control_channel(ControlKind::Relay, 64);
    let mut bob_relay = bob.control_channel(ControlKind::Relay, 64);
    let a = registered(&alice, &gate_node).await;
    let b = registered(&bob, &gate_node).await;

    let candidate = "198.51.100.7:4242".parse().unwrap();
    let intro = within(10, "introduce", a.introduce(bob.node_id(), vec![candidate]))
        .await
        .unwrap();
    assert_eq!(intro.peer, bob.node_id());
    assert_eq!(intro.candidates, vec![bob.local_addr().unwrap()]);
    let seen_by_bob = within(10, "introduction", b.next_introduction())
        .await
        .unwrap();
    assert_eq!(seen_by_bob.channel, intro.channel);
    assert_eq!(seen_by_bob.peer, alice.node_id());
    assert_eq!(
        seen_by_bob.candidates,
        vec![candidate, alice.local_addr().unwrap()]
    );

    // Alice -> gate -> Bob, and back.
    let gate_addr = a.gate_addr();
    for (from, to_channel, session, peer_session, payload) in [(
        &alice_relay,
        &mut bob_relay,
        a.session(),
        b.session(),
        &b"hello bob"[..],
    )] {
        from.send(gate_addr, &frame_payload(session, intro.channel, payload))
            .await
            .unwrap();
        let got = within(5, "relayed frame", to_channel.recv()).await.unwrap();
        assert_eq!(got.from, gate_addr);
        let frame = RelayFrame::decode_payload(&got.payload).unwrap();
        assert_eq!(
            (frame.session, frame.channel, frame.payload),
            (peer_session, intro.channel, payload)
        );
    }
    bob_relay
        .send(
            gate_addr,
            &frame_payload(b.session(), intro.channel, b"hi alice"),
        )
        .await
        .unwrap();
    let got = within(5, "relayed back", alice_relay.recv()).await.unwrap();
    assert_eq!(
        RelayFrame::decode_payload(&got.payload).unwrap().payload,
        b"hi alice"
    );
    let m = gate.metrics();
    assert_eq!(
        (m.introductions, m.frames_relayed, m.bytes_relayed),
        (1, 2, 17)
    );

    // What the gate must not relay: unknown session, a session used from another address, an
    // unknown channel, garbage.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let send_raw = |payload: Vec<u8>| {
        let mut datagram = vec![0x11, 0x01];
        datagram.extend_from_slice(&payload);
        raw.send_to(&datagram, gate_addr).unwrap();
    };
    send_raw(frame_payload(a.session(), intro.channel, b"spoofed")); // right session, wrong address
    send_raw(frame_payload(12345, intro.channel, b"unknown session"));
    send_raw(vec![1, 2, 3]);
    alice_relay
        .send(
            gate_addr,
            &frame_payload(a.session(), intro.channel + 7, b"no such channel"),
        )
        .await
        .unwrap();
    within(5, "drops counted", async {
        loop {
            let m = gate.metrics();
            if m.frames_unregistered == 2
                && m.frames_malformed == 1
                && m.frames_unknown_channel == 1
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(gate.metrics().frames_relayed, 2, "nothing bad was relayed");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), bob_relay.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn relay_budget_is_enforced() {
    let config = configured(|c| {
        c.relay_bytes_per_second = 1000;
        c.relay_burst = 1000;
    });
    let (gate_node, gate) = gate_with(config).await;
    let (alice, bob) = (bind(common::config()), bind(common::config()));
    let alice_relay = alice.control_channel(ControlKind::Relay, 64);
    let _bob_relay = bob.control_channel(ControlKind::Relay, 64);
    let a = registered(&alice, &gate_node).await;
    let _b = registered(&bob, &gate_node).await;
    let intro = a.introduce(bob.node_id(), vec![]).await.unwrap();
    for _ in 0..5 {
        alice_relay
            .send(
                a.gate_addr(),
                &frame_payload(a.session(), intro.channel, &[7u8; 486]),
            )
            .await
            .unwrap();
    }
    within(5, "rate limit", async {
        while gate.metrics().frames_relayed + gate.metrics().frames_rate_limited < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let m = gate.metrics();
    // 500 bytes each (486 + 14 of header) against a 1000-byte burst: two pass.
    assert_eq!((m.frames_relayed, m.frames_rate_limited), (2, 3));
}

#[tokio::test]
async fn refusals_are_typed() {
    let allowed = bind(config());
    let stranger = bind(config());
    let allow = configured(|c| {
        c.allow = Some([allowed.node_id()].into_iter().collect());
        c.max_clients = 1;
    });
    let (gate_node, gate) = gate_with(allow).await;
    let _ok = registered(&allowed, &gate_node).await;
    match GateClient::register(&stranger, &addr_of(&gate_node)).await {
        Err(GateError::Refused {
            code: RefusalCode::NotAllowed,
            ..
        }) => {}
        other => panic!("expected NotAllowed, got {other:?}"),
    }

    let (full_node, full) = gate_with(configured(|c| {
        c.max_clients = 1;
    }))
    .await;
    let _first = registered(&allowed, &full_node).await;
    let err = GateClient::register(&stranger, &addr_of(&full_node))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            GateError::Refused {
                code: RefusalCode::GateFull,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("GateFull"), "{err}");

    let (busy_node, busy) = gate_with(configured(|c| {
        c.registrations_per_ip = 1;
    }))
    .await;
    let _one = registered(&allowed, &busy_node).await;
    let err = GateClient::register(&stranger, &addr_of(&busy_node))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            GateError::Refused {
                code: RefusalCode::RateLimited,
                ..
            }
        ),
        "{err}"
    );

    let ghost = keywire::SecretKey::generate(&mut rand::rngs::OsRng).node_id();
    let err = _ok.introduce(ghost, vec![]).await.unwrap_err();
    assert!(
        matches!(err, GateError::NoSuchPeer(id) if id == ghost),
        "{err}"
    );
    assert_eq!(
        (
            gate.metrics().refused_not_allowed,
            full.metrics().refused_full,
            busy.metrics().refused_rate_limited
        ),
        (1, 1, 1)
    );
}

fn configured(change: impl FnOnce(&mut GateConfig)) -> GateConfig {
    let mut config = GateConfig::default();
    change(&mut config);
    config
}

fn frame_payload(session: u64, channel: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    RelayFrame {
        session,
        channel,
        payload,
    }
    .encode(&mut out);
    out.split_off(2) // ControlChannel::send adds the kind and version itself
}

#[tokio::test]
async fn connections_through_the_relay_carry_streams_end_to_end() {
    let (gate_node, gate) = gate_with(configured(|c| c.relay_bytes_per_second = 64 << 20)).await;
    // Relayed all the way: this test is about the relay (tests/upgrade.rs about going direct).
    let relay_only = || config().upgrade_to_direct(false);
    let (alice, bob) = (bind(relay_only()), bind(relay_only()));
    let a = registered(&alice, &gate_node).await;
    let b = registered(&bob, &gate_node).await;
    bob.use_gate(&b);
    let receiver = tokio::spawn({
        let bob = bob.clone();
        async move {
            let conn = bob.accept().await.unwrap();
            let path = conn.path();
            let (total, digest) = read_hashed(&conn).await;
            (conn.remote_node_id(), path, total, digest)
        }
    });
    let conn = within(
        10,
        "relayed connect",
        alice.connect_via(bob.node_id(), ALPN, &a),
    )
    .await
    .unwrap();
    assert_eq!(conn.remote_node_id(), bob.node_id());
    assert_eq!(
        conn.path(),
        keywire::Path::Relayed {
            gate: a.gate_addr(),
            link: keywire::RelayLink::Udp,
        }
    );
    let mut send = conn.open_uni().await.unwrap();
    let block: Vec<u8> = (0..(1 << 20)).map(|i| (i % 241) as u8).collect();
    let mut expected = blake3::Hasher::new();
    for _ in 0..4 {
        expected.update(&block);
        send.write_all(&block).await.unwrap();
    }
    send.finish().unwrap();
    let (dialer, path, total, digest) = within(60, "relayed transfer", receiver).await.unwrap();
    assert_eq!(dialer, alice.node_id());
    assert_eq!(
        path,
        keywire::Path::Relayed {
            gate: b.gate_addr(),
            link: keywire::RelayLink::Udp,
        }
    );
    assert_eq!((total, digest), (4 << 20, expected.finalize()));
    let m = gate.metrics();
    assert!(
        m.frames_relayed > 3000 && m.bytes_relayed > 4 << 20,
        "{m:?}"
    );
    assert!(bob.metrics().relayed_received > 0);
}

#[tokio::test]
async fn relayed_dial_to_an_unknown_peer_is_a_gate_error() {
    let (gate_node, _gate) = gate_with(GateConfig::default()).await;
    let alice = bind(config());
    let a = registered(&alice, &gate_node).await;
    let ghost = keywire::SecretKey::generate(&mut rand::rngs::OsRng).node_id();
    let err = alice.connect_via(ghost, ALPN, &a).await.unwrap_err();
    assert!(
        err.to_string().contains("is not a client of this gate"),
        "{err}"
    );
}
