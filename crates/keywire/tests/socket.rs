//! The one-port socket under real traffic: garbage and control packets beside a live transfer.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use keywire::ControlKind;

/// Sends `count` datagrams of every size from 0 to 1500 bytes plus a few large ones, with every
/// possible first byte, from `sources` sockets to `target`.
fn spray_garbage(target: std::net::SocketAddr, sources: usize) -> usize {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let sockets: Vec<UdpSocket> = (0..sources)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut sent = 0;
    let sizes = (0..=1500usize).chain([1501, 2000, 4096, 9000, 16384, 65507]);
    for (i, size) in sizes.enumerate() {
        let mut datagram: Vec<u8> = (0..size).map(|_| next() as u8).collect();
        if let Some(first) = datagram.first_mut() {
            *first = i as u8; // cycles through every first byte: QUIC, control, STUN
        }
        if sockets[i % sources].send_to(&datagram, target).is_ok() {
            sent += 1;
        }
        if i % 200 == 0 {
            // Let the receiver breathe so the kernel buffer never hides the garbage by dropping it.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    sent
}

#[tokio::test]
async fn garbage_of_every_size_never_disturbs_a_live_connection() {
    const LEN: usize = 24 << 20;
    let server = bind(config());
    let client = bind(config());
    let receiver = tokio::spawn({
        let server = server.clone();
        async move { receive_hashed(&server).await }
    });
    let conn = client.connect(&addr_of(&server), ALPN).await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let client_addr = client.local_addr().unwrap();
    let garbage = tokio::task::spawn_blocking(move || {
        spray_garbage(server_addr, 3) + spray_garbage(client_addr, 2)
    });

    let mut send = conn.open_uni().await.unwrap();
    let mut expected = blake3::Hasher::new();
    let block: Vec<u8> = (0..(1 << 20)).map(|i| (i * 13 % 251) as u8).collect();
    for _ in 0..(LEN >> 20) {
        expected.update(&block);
        send.write_all(&block).await.unwrap();
    }
    send.finish().unwrap();
    let sent_garbage = within(60, "garbage", garbage).await.unwrap();
    let (total, digest) = within(120, "transfer under garbage", receiver)
        .await
        .unwrap();
    assert_eq!(total, LEN);
    assert_eq!(digest, expected.finalize());
    assert!(
        conn.close_reason().is_none(),
        "the connection died: {:?}",
        conn.close_reason()
    );
    assert!(sent_garbage > 2500);

    let m = server.metrics();
    assert_eq!(
        m.incoming_accepted, 1,
        "garbage must not become connections"
    );
    assert!(m.control_malformed > 0, "{m:?}");
    assert!(m.control_unknown > 0, "{m:?}");
    assert!(m.stun_ignored > 0, "{m:?}");
    assert!(m.quic_from_unknown_source > 0, "{m:?}");
    let c = client.metrics();
    assert!(
        c.control_unknown + c.control_malformed + c.stun_ignored + c.quic_from_unknown_source > 0,
        "{c:?}"
    );
}

#[tokio::test]
async fn control_packets_share_the_port_with_quic() {
    let server = bind(config());
    let client = bind(config());
    let mut server_probes = server.control_channel(ControlKind::Probe, 256);
    let mut client_probes = client.control_channel(ControlKind::Probe, 256);
    spawn_echo(server.clone());
    let conn = client.connect(&addr_of(&server), ALPN).await.unwrap();

    // Probes both ways while a stream is busy.
    let stream = tokio::spawn({
        let conn = conn.clone();
        async move {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let data = vec![7u8; 4 << 20];
            let writer = async {
                send.write_all(&data).await.unwrap();
                send.finish().unwrap();
            };
            let (_, echoed) = tokio::join!(writer, recv.read_to_end(8 << 20));
            echoed.unwrap().len()
        }
    });
    let server_addr = server.local_addr().unwrap();
    for i in 0..50u32 {
        client_probes
            .send(server_addr, &i.to_be_bytes())
            .await
            .unwrap();
        let got = within(5, "probe", server_probes.recv()).await.unwrap();
        assert_eq!(got.from, client.local_addr().unwrap());
        assert_eq!(&got.payload[..], &i.to_be_bytes());
        server_probes.send(got.from, b"pong").await.unwrap();
        let reply = within(5, "reply", client_probes.recv()).await.unwrap();
        assert_eq!(&reply.payload[..], b"pong");
    }
    assert_eq!(within(60, "stream", stream).await.unwrap(), 4 << 20);
    assert_eq!(server.metrics().control_received, 50);
    assert_eq!(client.metrics().control_received, 50);

    // A kind nobody claimed, and a bad version, are dropped and counted.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    raw.send_to(&[ControlKind::Dht.to_byte(), 1, 0], server_addr)
        .unwrap();
    raw.send_to(&[ControlKind::Probe.to_byte(), 99, 0], server_addr)
        .unwrap();
    raw.send_to(&[0x3f, 1], server_addr).unwrap();
    within(5, "drops counted", async {
        loop {
            let m = server.metrics();
            if m.control_unknown >= 2 && m.control_malformed >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
