//! "Connect via": a node both ends are connected to introduces them and relays until the path
//! goes direct (real endpoints on loopback).

mod common;

use common::{addr_of, bind, bind_for_gate, config, registered, spawn_echo, within, ALPN};
use keywire::gate::{Gate, GateConfig, GateError};
use keywire::{ConnectError, Introducer, Path, PeerIntroducer, RelayLink};

/// Echoes `message` over a new stream of `conn`.
async fn echo(conn: &keywire::Connection, message: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
    send.write_all(message).await.expect("write");
    send.finish().expect("finish");
    recv.read_to_end(1 << 16).await.expect("the echo")
}

#[tokio::test]
async fn a_connected_peer_that_introduces_relays_then_the_path_goes_direct() {
    // Carol agreed to introduce: she runs a gate service next to her own protocol.
    let carol = bind_for_gate(config(), "127.0.0.1");
    let _service = Gate::spawn(&carol, GateConfig::default()).await.unwrap();
    spawn_echo(carol.clone());
    let (alice, bob) = (bind(config()), bind(config()));
    // Bob is reachable through carol: he joined her as a gate.
    let b = registered(&bob, &carol).await;
    bob.use_gate(&b);
    spawn_echo(bob.clone());

    let to_carol = within(
        10,
        "connect to carol",
        alice.connect(&addr_of(&carol), ALPN),
    )
    .await
    .unwrap();
    let introducer = PeerIntroducer(to_carol.clone());
    let conn = within(
        10,
        "connect through carol",
        introducer.connect(&alice, bob.node_id(), ALPN),
    )
    .await
    .unwrap();
    assert_eq!(conn.remote_node_id(), bob.node_id());
    assert_eq!(
        conn.path(),
        Path::Relayed {
            gate: carol.local_addr().unwrap(),
            link: RelayLink::Udp
        },
        "the first way to bob is carol's relay"
    );
    assert_eq!(
        within(10, "echo", echo(&conn, b"through carol")).await,
        b"through carol"
    );
    // On loopback nothing filters: the path probes find bob at once.
    let mut events = conn.path_events();
    let path = within(5, "the switch to direct", events.next()).await;
    assert_eq!(path, Some(Path::Direct(bob.local_addr().unwrap())));
    assert_eq!(within(10, "echo", echo(&conn, b"direct")).await, b"direct");
    // Alice's own connection to carol is untouched.
    assert_eq!(
        within(10, "echo", echo(&to_carol, b"carol")).await,
        b"carol"
    );
}

#[tokio::test]
async fn a_peer_that_does_not_introduce_or_does_not_know_the_node_says_so() {
    let dave = bind(config());
    spawn_echo(dave.clone());
    let carol = bind_for_gate(config(), "127.0.0.1");
    let _service = Gate::spawn(&carol, GateConfig::default()).await.unwrap();
    spawn_echo(carol.clone());
    let (alice, bob) = (bind(config()), bind(config()));

    let to_dave = alice.connect(&addr_of(&dave), ALPN).await.unwrap();
    let err = within(
        10,
        "refusal",
        alice.connect_through(bob.node_id(), ALPN, &to_dave),
    )
    .await
    .unwrap_err();
    match err {
        ConnectError::Gate(e) => match *e {
            GateError::NotIntroducing(node) => assert_eq!(node, dave.node_id()),
            other => panic!("expected NotIntroducing, got {other}"),
        },
        other => panic!("expected a gate error, got {other}"),
    }

    // Carol introduces, but bob never joined her.
    let to_carol = alice.connect(&addr_of(&carol), ALPN).await.unwrap();
    let err = within(
        10,
        "unknown peer",
        alice.connect_through(bob.node_id(), ALPN, &to_carol),
    )
    .await
    .unwrap_err();
    match err {
        ConnectError::Gate(e) => assert!(
            matches!(*e, GateError::NoSuchPeer(node) if node == bob.node_id()),
            "expected NoSuchPeer, got {e}"
        ),
        other => panic!("expected a gate error, got {other}"),
    }
}
