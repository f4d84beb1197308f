//! Endpoint behaviour on real UDP sockets on loopback.

mod common;

use std::time::Duration;

use common::*;
use keywire::{AttemptFailure, ConnectError, NetworkId, NodeAddr, PeerPolicy, SecretKey};

#[tokio::test]
async fn connect_and_echo_both_ways() {
    let server = bind(config());
    let client = bind(config());
    spawn_echo(server.clone());
    let conn = within(10, "connect", client.connect(&addr_of(&server), ALPN))
        .await
        .unwrap();
    assert_eq!(conn.remote_node_id(), server.node_id());
    assert_eq!(conn.alpn(), ALPN);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"hello keywire").await.unwrap();
    send.finish().unwrap();
    let echoed = within(10, "echo", recv.read_to_end(1024)).await.unwrap();
    assert_eq!(echoed, b"hello keywire");
    let m = client.metrics();
    assert_eq!((m.dials, m.dials_succeeded, m.dials_failed), (1, 1, 0));
    assert_eq!(server.metrics().incoming_accepted, 1);
}

#[tokio::test]
async fn server_sees_the_dialer_key() {
    let server = bind(config());
    let client = bind(config());
    let expected = client.node_id();
    let accepted = tokio::spawn({
        let server = server.clone();
        async move { server.accept().await.unwrap().remote_node_id() }
    });
    let _conn = client.connect(&addr_of(&server), ALPN).await.unwrap();
    assert_eq!(within(10, "accept", accepted).await.unwrap(), expected);
}

#[tokio::test]
async fn hundred_concurrent_streams() {
    let server = bind(config());
    let client = bind(config());
    spawn_echo(server.clone());
    let conn = client.connect(&addr_of(&server), ALPN).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let msg = format!("stream {i} says hi").repeat(100);
            send.write_all(msg.as_bytes()).await.unwrap();
            send.finish().unwrap();
            let back = recv.read_to_end(1 << 20).await.unwrap();
            assert_eq!(back, msg.as_bytes());
        }));
    }
    within(30, "100 streams", async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn transfer_64_mib_with_checksum() {
    const LEN: usize = 64 << 20;
    let server = bind(config());
    let client = bind(config());
    let receiver = tokio::spawn({
        let server = server.clone();
        async move { receive_hashed(&server).await }
    });
    let conn = client.connect(&addr_of(&server), ALPN).await.unwrap();
    let mut send = conn.open_uni().await.unwrap();
    let mut expected = blake3::Hasher::new();
    let mut block = vec![0u8; 1 << 20];
    for i in 0..(LEN >> 20) {
        for (j, b) in block.iter_mut().enumerate() {
            *b = (i * 31 + j * 7) as u8;
        }
        expected.update(&block);
        send.write_all(&block).await.unwrap();
    }
    send.finish().unwrap();
    let (total, digest) = within(120, "64 MiB transfer", receiver).await.unwrap();
    assert_eq!(total, LEN);
    assert_eq!(digest, expected.finalize());
}

#[tokio::test]
async fn datagrams() {
    let server = bind(config());
    let client = bind(config());
    let conn = client.connect(&addr_of(&server), ALPN).await.unwrap();
    let accepted = within(10, "accept", server.accept()).await.unwrap();
    assert!(conn.max_datagram_size().unwrap() >= 1000);
    // Datagrams are unreliable; on loopback with no load they arrive, but send a few to be safe.
    let got = within(10, "datagram", async {
        loop {
            conn.send_datagram(bytes::Bytes::from_static(b"ping"))
                .unwrap();
            if let Ok(Ok(d)) =
                tokio::time::timeout(Duration::from_millis(200), accepted.read_datagram()).await
            {
                break d;
            }
        }
    })
    .await;
    assert_eq!(&got[..], b"ping");
}

#[tokio::test]
async fn ipv6_loopback() {
    let server = bind(config().bind_addr("[::1]:0".parse().unwrap()));
    let client = bind(config().bind_addr("[::]:0".parse().unwrap()));
    spawn_echo(server.clone());
    let conn = client
        .connect(&addr_of(&server), ALPN)
        .await
        .expect("IPv6 loopback connect");
    assert!(conn.remote_address().is_ipv6());
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"v6").await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(10).await.unwrap(), b"v6");
}

#[tokio::test]
async fn dual_stack_socket_reaches_ipv4() {
    let server = bind(config());
    let client = bind(config().bind_addr("[::]:0".parse().unwrap()));
    let conn = client
        .connect(&addr_of(&server), ALPN)
        .await
        .expect("IPv4 via a dual-stack socket");
    assert_eq!(conn.remote_node_id(), server.node_id());
}

#[tokio::test]
async fn wrong_key_at_an_address_is_wrong_peer() {
    let a = bind(config());
    let client = bind(config());
    let b_key = SecretKey::generate(&mut rand::rngs::OsRng).node_id();
    let b_at_a = NodeAddr::new(b_key, [a.local_addr().unwrap()]);
    match client.connect(&b_at_a, ALPN).await {
        Err(ConnectError::WrongPeer { expected, addr }) => {
            assert_eq!(expected, b_key);
            assert_eq!(addr, a.local_addr().unwrap());
        }
        other => panic!("expected WrongPeer, got {other:?}"),
    }
    assert_eq!(client.metrics().handshakes_wrong_peer, 1);
    assert_eq!(a.metrics().incoming_accepted, 0);
}

#[tokio::test]
async fn session_resumption_never_skips_the_key_check() {
    let a = bind(config());
    let client = bind(config());
    spawn_echo(a.clone());
    // First connection: full handshake; A issues resumption tickets.
    let first = client.connect(&addr_of(&a), ALPN).await.unwrap();
    // One echo: `connect` returns after one round trip, before A's tickets arrive; they come
    // with A's first 1-RTT data after its handshake completes.
    echo_once(&first).await;
    first.close(0u32.into(), b"");
    // Second connection to A: resumed, so the client's verifier is not consulted again.
    let verified_before = client.metrics().peer_keys_verified;
    let second = client.connect(&addr_of(&a), ALPN).await.unwrap();
    assert_eq!(second.remote_node_id(), a.node_id());
    assert_eq!(
        client.metrics().peer_keys_verified,
        verified_before,
        "the second connection to A should have been resumed (no certificate verified)"
    );
    // Now dial key B at A's address: the cached session for A must not be offered or accepted.
    let b_key = SecretKey::generate(&mut rand::rngs::OsRng).node_id();
    let err = client
        .connect(&NodeAddr::new(b_key, [a.local_addr().unwrap()]), ALPN)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::WrongPeer { expected, .. } if expected == b_key),
        "{err:?}"
    );
}

#[tokio::test]
async fn different_network_ids_never_complete() {
    let server = bind(config().network(NetworkId::from_name("network one")));
    let client = bind(config().network(NetworkId::from_name("network two")));
    let err = client.connect(&addr_of(&server), ALPN).await.unwrap_err();
    assert!(
        matches!(err, ConnectError::NetworkMismatch { .. }),
        "{err:?}"
    );
    // The acceptor never hands the connection out.
    let accepted = tokio::time::timeout(Duration::from_millis(500), server.accept()).await;
    assert!(
        accepted.is_err(),
        "a connection from another network reached accept()"
    );
    within(5, "server counts the mismatch", async {
        while server.metrics().network_mismatch == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(server.metrics().incoming_accepted, 0);
    assert_eq!(client.metrics().network_mismatch, 1);
}

#[tokio::test]
async fn denied_key_never_finishes_a_handshake() {
    let client = bind(config());
    let mut policy = PeerPolicy::default();
    policy.deny.insert(client.node_id());
    let server = bind(config().policy(policy));
    expect_refused(client.connect(&addr_of(&server), ALPN).await).await;
    assert_eq!(server.metrics().handshakes_denied, 1);
    assert_eq!(server.metrics().incoming_accepted, 0);

    // Dialing a key on our own deny list fails before any packet is sent.
    let mut policy = PeerPolicy::default();
    policy.deny.insert(server.node_id());
    let picky = bind(config().policy(policy));
    let err = picky.connect(&addr_of(&server), ALPN).await.unwrap_err();
    assert!(
        matches!(err, ConnectError::Denied(id) if id == server.node_id()),
        "{err:?}"
    );
    assert_eq!(picky.metrics().dial_attempts, 0);
}

#[tokio::test]
async fn allow_list_admits_only_listed_keys() {
    let friend = bind(config());
    let stranger = bind(config());
    let policy = PeerPolicy {
        allow: Some([friend.node_id()].into_iter().collect()),
        ..Default::default()
    };
    let server = bind(config().policy(policy));
    friend
        .connect(&addr_of(&server), ALPN)
        .await
        .expect("listed key connects");
    expect_refused(stranger.connect(&addr_of(&server), ALPN).await).await;
    assert_eq!(
        server.metrics().incoming_accepted,
        1,
        "only the friend was handed out"
    );
}

/// A refused dialer learns of it half a round trip after its own handshake completed, so
/// `connect` either fails with `Refused` or returns a connection that then closes as refused.
async fn expect_refused(result: Result<keywire::Connection, ConnectError>) {
    match result {
        Err(err) => assert!(matches!(err, ConnectError::Refused { .. }), "{err:?}"),
        Ok(conn) => {
            let cause = within(10, "the refusal", conn.close_cause()).await;
            assert_eq!(cause, keywire::AttemptFailure::Refused);
        }
    }
}

/// Sends a few bytes on a new stream and checks they come back.
async fn echo_once(conn: &keywire::Connection) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"once").await.unwrap();
    send.finish().unwrap();
    assert_eq!(
        within(10, "echo", recv.read_to_end(16)).await.unwrap(),
        b"once"
    );
}

#[tokio::test]
async fn dialing_oneself_is_a_clear_error() {
    let node = bind(config());
    let err = node.connect(&addr_of(&node), ALPN).await.unwrap_err();
    assert!(matches!(err, ConnectError::DialSelf));
    assert_eq!(err.to_string(), "cannot dial this node's own id");
}

#[tokio::test]
async fn unknown_alpn_is_reported() {
    let server = bind(config());
    let client = bind(config());
    let err = client
        .connect(&addr_of(&server), b"nobody-speaks-this/1")
        .await
        .unwrap_err();
    match err {
        ConnectError::Unreachable { attempts, .. } => {
            assert_eq!(attempts.len(), 1);
            assert_eq!(attempts[0].failure, AttemptFailure::NoCommonProtocol);
        }
        other => panic!("expected Unreachable/NoCommonProtocol, got {other:?}"),
    }
}

#[tokio::test]
async fn every_address_is_tried_and_reasons_are_kept() {
    let server = bind(config());
    let client = bind({
        let mut c = config();
        c.connect_timeout = Duration::from_millis(600);
        c
    });
    // A socket that is bound but never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap();
    let node = NodeAddr::new(server.node_id(), [dead, server.local_addr().unwrap()]);
    let conn = within(10, "connect", client.connect(&node, ALPN))
        .await
        .expect("the live address wins");
    assert_eq!(conn.remote_address(), server.local_addr().unwrap());
    assert_eq!(client.metrics().dial_attempts, 2);

    let only_dead = NodeAddr::new(server.node_id(), [dead]);
    match client.connect(&only_dead, ALPN).await.unwrap_err() {
        ConnectError::Unreachable { attempts, .. } => {
            assert_eq!(attempts.len(), 1);
            assert_eq!(attempts[0].addr, dead);
            assert_eq!(attempts[0].failure, AttemptFailure::TimedOut);
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn router_and_accept_see_their_own_protocols() {
    const ROUTED: &[u8] = b"keywire-test/routed";
    let server = bind(config());
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    server
        .register(ROUTED.to_vec(), move |conn: keywire::Connection| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(conn.remote_node_id()).await;
            }
        })
        .unwrap();
    let client = bind(config());
    let _routed = client.connect(&addr_of(&server), ROUTED).await.unwrap();
    assert_eq!(
        within(5, "handler", rx.recv()).await,
        Some(client.node_id())
    );
    let _plain = client.connect(&addr_of(&server), ALPN).await.unwrap();
    let accepted = within(5, "accept", server.accept()).await.unwrap();
    assert_eq!(accepted.alpn(), ALPN);
    // The routed connection never showed up in accept().
    assert!(
        tokio::time::timeout(Duration::from_millis(200), server.accept())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn full_accept_queue_closes_new_connections_with_busy() {
    let server = bind({
        let mut c = config();
        c.accept_queue = 1;
        c
    });
    let client = bind(config());
    let _first = client.connect(&addr_of(&server), ALPN).await.unwrap();
    let second = client.connect(&addr_of(&server), ALPN).await.unwrap();
    let reason = within(5, "busy close", second.closed()).await;
    assert!(reason.to_string().contains("accept queue full"), "{reason}");
    assert_eq!(server.metrics().accept_queue_full, 1);
}

#[tokio::test]
async fn keep_alive_holds_idle_connections() {
    let mut server_config = config();
    server_config.idle_timeout = Duration::from_millis(1500);
    server_config.keep_alive = Duration::from_millis(400);
    let server = bind(server_config);
    let mut client_config = config();
    client_config.idle_timeout = Duration::from_millis(1500);
    client_config.keep_alive = Duration::from_millis(400);
    let client = bind(client_config);
    spawn_echo(server.clone());
    let conn = client.connect(&addr_of(&server), ALPN).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        conn.close_reason().is_none(),
        "idle connection died: {:?}",
        conn.close_reason()
    );
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"still here").await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(64).await.unwrap(), b"still here");
}

#[test]
fn invalid_configs_are_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let mut c = config();
    c.keep_alive = c.idle_timeout;
    let err = keywire::Endpoint::bind(c).unwrap_err();
    assert!(err.to_string().contains("keep_alive"), "{err}");
}

#[test]
fn bind_outside_a_runtime_is_a_clear_error() {
    let err = keywire::Endpoint::bind(config()).unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

/// Forwards only the first datagram a client sends, then swallows everything: the server is left
/// with a handshake that never completes, holding one of its handshake slots.
fn stalling_proxy(server: std::net::SocketAddr) -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], server);
        }
        // Keep the socket (and the server's view of this "client") alive until the test ends.
        while socket.recv_from(&mut buf).is_ok() {}
    });
    addr
}

#[tokio::test]
async fn unvalidated_sources_get_a_retry_under_load() {
    let server = bind({
        let mut c = config();
        c.max_pending_handshakes = 4;
        c
    });
    // Three handshakes that never finish: 1 slot of 4 left, under half, so the server is loaded.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let proxy = stalling_proxy(server.local_addr().unwrap());
        let client = bind({
            let mut c = config();
            c.connect_timeout = Duration::from_secs(2);
            c
        });
        let node = NodeAddr::new(server.node_id(), [proxy]);
        stalled.push(tokio::spawn(async move {
            client.connect(&node, ALPN).await.is_err()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.metrics().incoming_retried, 0);
    // A real client is asked to prove its address first, then connects.
    let client = bind(config());
    let conn = within(
        10,
        "connect under load",
        client.connect(&addr_of(&server), ALPN),
    )
    .await
    .expect("a Retry is followed transparently");
    assert_eq!(conn.remote_node_id(), server.node_id());
    assert_eq!(server.metrics().incoming_retried, 1);
    for s in stalled {
        assert!(s.await.unwrap(), "stalled handshakes must fail");
    }
}
