//! Relayed connections moving to a direct path and back, on real sockets: streams carry on
//! across every switch, and the path is read from the API.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use keywire::gate::{Gate, GateClient, GateConfig};
use keywire::{Connection, Endpoint, Path};
use tokio::net::UdpSocket;

async fn gate_at(bind_addr: &str) -> (Endpoint, Gate) {
    let endpoint = bind(config().bind_addr(bind_addr.parse().unwrap()));
    let mut gate_config = GateConfig::default();
    gate_config.relay_bytes_per_second = 64 << 20;
    let gate = Gate::spawn(&endpoint, gate_config)
        .await
        .expect("gate starts");
    (endpoint, gate)
}

/// Sends `blocks` MiB on a uni stream; the receiving side returns (bytes, digest).
async fn transfer(
    sender: &Connection,
    receiver: Connection,
    blocks: usize,
) -> ((usize, blake3::Hash), blake3::Hash) {
    let receiving = tokio::spawn(async move { read_hashed(&receiver).await });
    let mut send = sender.open_uni().await.unwrap();
    let block: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let mut expected = blake3::Hasher::new();
    for _ in 0..blocks {
        expected.update(&block);
        send.write_all(&block).await.unwrap();
        // Spread the transfer over time, so path switches happen in the middle of it.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send.finish().unwrap();
    let got = within(60, "transfer", receiving).await.unwrap();
    (got, expected.finalize())
}

#[tokio::test]
async fn a_relayed_connection_goes_direct_and_the_stream_never_notices() {
    let (gate_node, gate) = gate_at("127.0.0.1:0").await;
    let (alice, bob) = (bind(config()), bind(config()));
    let a = registered(&alice, &gate_node).await;
    let b = registered(&bob, &gate_node).await;
    bob.use_gate(&b);
    let accepting = tokio::spawn({
        let bob = bob.clone();
        async move { bob.accept().await.unwrap() }
    });
    let started = Instant::now();
    let conn = within(
        10,
        "relayed connect",
        alice.connect_via(bob.node_id(), ALPN, &a),
    )
    .await
    .unwrap();
    let mut events = conn.path_events();
    let bob_conn = within(10, "accept", accepting).await.unwrap();
    assert_eq!(conn.peer_candidates(), [bob.local_addr().unwrap()]);
    assert_eq!(bob_conn.peer_candidates(), [alice.local_addr().unwrap()]);

    let relayed_before = gate.metrics().bytes_relayed;
    let transferring = {
        let conn = conn.clone();
        tokio::spawn(async move { transfer(&conn, bob_conn, 16).await })
    };
    // The first change is the upgrade to bob's address, well within a second on loopback.
    let path = within(5, "the switch to direct", events.next()).await;
    let to_direct = started.elapsed();
    assert_eq!(path, Some(Path::Direct(bob.local_addr().unwrap())));
    assert_eq!(conn.path(), Path::Direct(bob.local_addr().unwrap()));
    let ((total, digest), expected) = transferring.await.unwrap();
    assert_eq!(
        (total, digest),
        (16 << 20, expected),
        "byte-identical across the switch"
    );
    let relayed = gate.metrics().bytes_relayed - relayed_before;
    assert!(
        relayed < 8 << 20,
        "most of the 16 MiB went direct, yet the gate relayed {relayed} bytes"
    );
    let m = alice.metrics();
    assert_eq!((m.path_upgrades, m.path_fallbacks), (1, 0), "{m:?}");
    assert!(m.probes_sent > 0 && m.probes_accepted > 0);
    assert_eq!(bob.metrics().path_upgrades, 1);
    println!("relayed start to direct in {to_direct:?}");
}

#[tokio::test]
async fn when_the_direct_path_dies_the_relay_takes_over_within_3_s() {
    // Alice speaks only IPv4 and Bob only IPv6, so the one direct path between them is a
    // forwarder Bob announces; the dual-stack gate reaches both. Cutting the forwarder kills
    // the direct path and nothing else.
    let (gate_node, gate) = gate_at("[::]:0").await;
    let gate_port = gate_node.local_addr().unwrap().port();
    let forwarder = Forwarder::start("127.0.0.1:0", "[::1]:0").await;
    let bob = bind(
        config()
            .bind_addr("[::1]:0".parse().unwrap())
            .announce(forwarder.front),
    );
    forwarder.target.set(bob.local_addr().unwrap()).unwrap();
    let alice = bind(config());
    let gate_v4 = at(&gate_node, SocketAddr::from(([127, 0, 0, 1], gate_port)));
    let gate_v6 = at(
        &gate_node,
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, gate_port)),
    );
    let a = GateClient::register(&alice, &gate_v4).await.unwrap();
    let b = GateClient::register(&bob, &gate_v6).await.unwrap();
    bob.use_gate(&b);
    let accepting = tokio::spawn({
        let bob = bob.clone();
        async move { bob.accept().await.unwrap() }
    });
    let conn = within(
        10,
        "relayed connect",
        alice.connect_via(bob.node_id(), ALPN, &a),
    )
    .await
    .unwrap();
    let mut events = conn.path_events();
    let bob_conn = within(10, "accept", accepting).await.unwrap();
    let path = within(5, "the switch to direct", events.next()).await;
    assert_eq!(path, Some(Path::Direct(forwarder.front)));

    let transferring = {
        let conn = conn.clone();
        tokio::spawn(async move { transfer(&conn, bob_conn, 40).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    forwarder.cut();
    let cut_at = Instant::now();
    let path = within(10, "the fall back to the relay", events.next()).await;
    let fallback = cut_at.elapsed();
    assert_eq!(
        path,
        Some(Path::Relayed {
            gate: a.gate_addr(),
            link: keywire::RelayLink::Udp,
        })
    );
    assert!(
        fallback <= Duration::from_secs(3),
        "the relay took over {fallback:?} after the cut"
    );
    let ((total, digest), expected) = transferring.await.unwrap();
    assert_eq!(
        (total, digest),
        (40 << 20, expected),
        "byte-identical across both switches"
    );
    assert!(
        gate.metrics().bytes_relayed > 1 << 20,
        "the rest went through the gate"
    );
    let m = alice.metrics();
    assert_eq!((m.path_upgrades, m.path_fallbacks), (1, 1), "{m:?}");
    println!("relay took over {fallback:?} after the cut");
}

#[tokio::test]
async fn a_ticket_with_only_a_gate_connects_relayed_then_goes_direct() {
    let (gate_node, _gate) = gate_at("127.0.0.1:0").await;
    let (alice, bob) = (bind(config()), bind(config()));
    let joined = within(10, "join", bob.join_gate(&addr_of(&gate_node)))
        .await
        .unwrap();
    assert!(joined.is_alive());
    let full = bob.ticket().unwrap();
    assert_eq!(full.gates, vec![addr_of(&gate_node)]);
    assert_eq!(full.to_string().parse::<keywire::Ticket>().unwrap(), full);
    // As if Bob were behind a NAT: the ticket names only his gate.
    let ticket =
        keywire::Ticket::with_gates(keywire::NodeAddr::new(bob.node_id(), []), full.gates).unwrap();
    spawn_echo(bob.clone());
    let conn = within(10, "connect by ticket", alice.connect_ticket(&ticket, ALPN))
        .await
        .unwrap();
    let mut events = conn.path_events();
    assert!(
        matches!(conn.initial_path(), Path::Relayed { .. }),
        "{:?}",
        conn.initial_path()
    );
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"ping").await.unwrap();
    send.finish().unwrap();
    assert_eq!(
        within(10, "echo", recv.read_to_end(64)).await.unwrap(),
        b"ping"
    );
    let path = within(5, "the switch to direct", events.next()).await;
    assert_eq!(path, Some(Path::Direct(bob.local_addr().unwrap())));
    assert_eq!(
        alice.joined_gates(),
        vec![addr_of(&gate_node)],
        "joined on the way"
    );

    // A gate that does not know the node, and no direct address: a typed error naming both.
    let stranger = bind(config());
    let lost = keywire::Ticket::with_gates(
        keywire::NodeAddr::new(stranger.node_id(), []),
        vec![addr_of(&gate_node)],
    )
    .unwrap();
    let err = within(
        10,
        "connect to an unknown node",
        alice.connect_ticket(&lost, ALPN),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, keywire::ConnectError::NoRoute { ref gates, .. } if gates.len() == 1),
        "{err}"
    );
    assert!(
        err.to_string().contains("not a client of this gate"),
        "{err}"
    );
}

#[tokio::test]
async fn after_an_upgrade_the_same_address_serves_new_dials() {
    let (_gate_node, _gate, alice, bob, ticket) = echo_behind_gate().await;
    let conn = within(10, "connect by ticket", alice.connect_ticket(&ticket, ALPN))
        .await
        .unwrap();
    let mut events = conn.path_events();
    within(5, "the switch to direct", events.next()).await;
    conn.close(0u32.into(), b"done");
    // The wrong key at Bob's address is refused at once; the right one connects directly.
    let impostor = keywire::SecretKey::generate(&mut rand::rngs::OsRng).node_id();
    let wrong = within(
        10,
        "dial a wrong key",
        alice.connect(&at_node(impostor, bob.local_addr().unwrap()), ALPN),
    )
    .await;
    assert!(
        matches!(wrong, Err(keywire::ConnectError::WrongPeer { .. })),
        "{wrong:?} {:?} {:?}",
        alice.metrics(),
        bob.metrics()
    );
    let again = within(10, "dial again", alice.connect(&addr_of(&bob), ALPN))
        .await
        .unwrap();
    assert_eq!(again.path(), Path::Direct(bob.local_addr().unwrap()));
}

/// A gate on loopback, Alice, and Bob serving an echo, reachable (as if behind a NAT) only
/// through the gate: his ticket names no direct address.
async fn echo_behind_gate() -> (Endpoint, Gate, Endpoint, Endpoint, keywire::Ticket) {
    let (gate_node, gate) = gate_at("127.0.0.1:0").await;
    let (alice, bob) = (bind(config()), bind(config()));
    bob.join_gate(&addr_of(&gate_node)).await.unwrap();
    let ticket = keywire::Ticket::with_gates(
        keywire::NodeAddr::new(bob.node_id(), []),
        bob.joined_gates(),
    )
    .unwrap();
    spawn_echo(bob.clone());
    (gate_node, gate, alice, bob, ticket)
}

fn at_node(node: keywire::NodeId, addr: SocketAddr) -> keywire::NodeAddr {
    keywire::NodeAddr::new(node, [addr])
}

#[tokio::test]
async fn forged_and_malformed_probes_are_dropped_counted_and_never_answered() {
    let (_gate_node, _gate, alice, bob, ticket) = echo_behind_gate().await;
    let conn = within(10, "connect", alice.connect_ticket(&ticket, ALPN))
        .await
        .unwrap();
    within(5, "direct", conn.path_events().next()).await;
    let refused_before = bob.metrics().probes_refused;

    // An attacker without the connection's key: garbage, a request under a made-up key, a
    // truncated one, and a flood of the same. None is answered.
    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let forged_keys = keywire::proto::probe::ProbeKeys::from_exported([0x5a; 32]);
    let mut forged = vec![0x10, 0x01];
    forged.extend_from_slice(&forged_keys.request(keywire::proto::Role::Dialer, [1; 16]));
    let packets: Vec<Vec<u8>> = vec![
        vec![0x10, 0x01, 0xff, 0xff],
        forged.clone(),
        forged[..20].to_vec(),
    ];
    for _ in 0..100 {
        for packet in &packets {
            raw.send_to(packet, bob.local_addr().unwrap())
                .await
                .unwrap();
        }
    }
    let mut buf = [0u8; 256];
    let answer = tokio::time::timeout(Duration::from_millis(500), raw.recv_from(&mut buf)).await;
    assert!(answer.is_err(), "a forged probe got an answer");
    // Counted (some may be dropped earlier, at a full queue, which counts elsewhere).
    let deadline = Instant::now() + Duration::from_secs(5);
    while bob.metrics().probes_refused < refused_before + 100 {
        assert!(Instant::now() < deadline, "{:?}", bob.metrics());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The real connection is untouched.
    assert_eq!(conn.path(), Path::Direct(bob.local_addr().unwrap()));
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"still here").await.unwrap();
    send.finish().unwrap();
    assert_eq!(
        within(5, "echo", recv.read_to_end(64)).await.unwrap(),
        b"still here"
    );
}

#[tokio::test]
async fn the_nat_report_uses_both_gate_ports() {
    let (gate_node, _gate) = gate_at("127.0.0.1:0").await;
    let alice = bind(config());
    assert_eq!(alice.nat_report().await, None, "no gate, no report");
    alice.join_gate(&addr_of(&gate_node)).await.unwrap();
    let report = within(10, "nat report", alice.nat_report())
        .await
        .expect("a report with a gate");
    // Loopback has no NAT: both ports of the gate see Alice's own address.
    assert_eq!(report.observers, 2, "{report:?}");
    assert_eq!(report.mapping, keywire::Mapping::None);
    assert_eq!(report.observed, Some(alice.local_addr().unwrap()));
}
