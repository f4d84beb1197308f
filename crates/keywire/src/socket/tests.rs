//! The socket's tests: classification, virtual addresses, control channels, stream links.

use super::*;
use std::future::poll_fn;
use std::time::Duration;

fn socket() -> (Arc<KeywireSocket>, Arc<Metrics>, SocketAddr) {
    let std_socket = crate::udp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = std_socket.local_addr().unwrap();
    let metrics = Arc::new(Metrics::default());
    let paths = Arc::new(PathTable::new(16, Duration::from_secs(60)));
    (
        Arc::new(KeywireSocket::new(std_socket, paths, metrics.clone()).unwrap()),
        metrics,
        addr,
    )
}

async fn recv_one(socket: &KeywireSocket) -> (RecvMeta, Vec<u8>) {
    let mut storage = vec![0u8; 65536 * 4];
    let mut bufs: Vec<IoSliceMut> = storage.chunks_mut(65536).map(IoSliceMut::new).collect();
    let mut meta = vec![RecvMeta::default(); bufs.len()];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta)),
    )
    .await
    .expect("a datagram for quinn within 5 s")
    .unwrap();
    assert!(n >= 1);
    (meta[0], bufs[0][..meta[0].len].to_vec())
}

#[tokio::test]
async fn quinn_sees_virtual_addresses_and_no_real_destination() {
    let (socket, metrics, addr) = socket();
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // A short-header packet from an unknown source cannot open a path: dropped, counted.
    peer.send_to(&[0x40; 100], addr).unwrap();
    // Neither can a long-header packet that is too short for an Initial.
    peer.send_to(&[0xC0; 100], addr).unwrap();
    // Control and STUN packets never reach quinn.
    peer.send_to(&[0x10, 1, 2, 3], addr).unwrap();
    peer.send_to(&[0x00, 1], addr).unwrap();
    let mut initial = vec![0xC3u8; 1200];
    initial[1] = 7;
    peer.send_to(&initial, addr).unwrap();
    let (meta, data) = recv_one(&socket).await;
    assert_eq!(data, initial, "only the Initial reaches quinn");
    assert!(paths::is_virtual(&meta.addr), "quinn saw {}", meta.addr);
    assert_eq!(meta.dst_ip, None);
    assert_eq!(
        meta.ecn, None,
        "no ECN reported for a packet that carried none"
    );
    assert_eq!(
        socket.paths.real_for(&meta.addr),
        Some(peer.local_addr().unwrap())
    );
    let m = metrics.snapshot();
    assert_eq!(m.quic_from_unknown_source, 2);
    assert_eq!(m.control_unknown, 1, "no channel claimed probes");
    assert_eq!(m.stun_ignored, 1);

    // Once the path exists, short-header packets from it go through.
    peer.send_to(&[0x41, 9, 9], addr).unwrap();
    let (meta2, data2) = recv_one(&socket).await;
    assert_eq!((meta2.addr, data2), (meta.addr, vec![0x41, 9, 9]));
}

#[tokio::test]
async fn sends_go_to_the_real_address_and_unknown_ones_are_counted() {
    let (socket, metrics, _) = socket();
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let virtual_addr = socket
        .paths
        .for_dial(peer.local_addr().unwrap(), Instant::now())
        .unwrap();
    // As quinn does: wait until the socket is writable before the first send.
    let mut poller = socket.clone().create_io_poller();
    poll_fn(|cx| poller.as_mut().poll_writable(cx))
        .await
        .unwrap();
    let transmit = Transmit {
        destination: virtual_addr,
        ecn: None,
        contents: &[0x42, 1, 2],
        segment_size: None,
        src_ip: None,
    };
    socket.try_send(&transmit).unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x42, 1, 2]);

    let unknown: SocketAddr = "[fd6b:7769:7265::ffff]:1".parse().unwrap();
    let transmit = Transmit {
        destination: unknown,
        ecn: None,
        contents: &[0x42],
        segment_size: None,
        src_ip: None,
    };
    socket
        .try_send(&transmit)
        .expect("a datagram with no path is dropped, not an error");
    assert_eq!(metrics.snapshot().send_no_path, 1);
}

#[tokio::test]
async fn a_linked_address_gets_framed_datagrams_and_a_full_queue_drops() {
    let (socket, metrics, _) = socket();
    let gate: SocketAddr = "192.0.2.7:4433".parse().unwrap();
    let (mut outgoing, registration) = socket.links.add(
        gate,
        "192.0.2.7:50000".parse().unwrap(),
        links::Framing::Raw,
    );
    let virtual_addr = socket.paths.for_dial(gate, Instant::now()).unwrap();
    // A GSO batch of two packets leaves as two frames, never over UDP.
    let transmit = Transmit {
        destination: virtual_addr,
        ecn: None,
        contents: &[0x42, 1, 2, 0x42, 3],
        segment_size: Some(3),
        src_ip: None,
    };
    socket.try_send(&transmit).unwrap();
    assert_eq!(outgoing.try_recv().unwrap(), [0, 3, 0x42, 1, 2]);
    assert_eq!(outgoing.try_recv().unwrap(), [0, 2, 0x42, 3]);
    for _ in 0..links::LINK_QUEUE + 5 {
        socket.try_send(&transmit).unwrap();
    }
    let m = metrics.snapshot();
    assert_eq!(m.link_datagrams_sent, 2 + links::LINK_QUEUE as u64);
    assert_eq!(
        m.link_queue_full,
        2 * (links::LINK_QUEUE as u64 + 5) - links::LINK_QUEUE as u64,
        "a full queue drops instead of waiting"
    );
    assert_eq!(
        socket.paths.path_of_route(paths::Route::Direct(gate)),
        crate::Path::Direct(gate)
    );
    assert_eq!(
        socket
            .paths
            .path_of_route(paths::Route::Relayed { gate, channel: 1 }),
        crate::Path::Relayed {
            gate,
            link: crate::RelayLink::Tcp
        }
    );
    // A gate's accepted link that closed drops what is sent to it; the address is no
    // UDP destination.
    let accepted = socket.links.accepted_addr();
    let (_, closed) = socket.links.add(accepted, gate, links::Framing::Raw);
    drop(closed);
    assert_eq!(socket.links.send(accepted, &[0x42], 1), Some(()));
    assert_eq!(metrics.snapshot().send_no_path, 1);
    // Once the link is gone the address is reached over UDP again.
    drop(registration);
    assert!(socket.links.send(gate, &[0x42], 1).is_none());
    assert_eq!(
        socket
            .paths
            .path_of_route(paths::Route::Relayed { gate, channel: 1 }),
        crate::Path::Relayed {
            gate,
            link: crate::RelayLink::Udp
        }
    );
}

#[tokio::test]
async fn socket_capabilities_pass_through() {
    let (socket, _, _) = socket();
    assert_eq!(socket.may_fragment(), socket.inner.may_fragment());
    assert_eq!(
        socket.max_transmit_segments(),
        socket.inner.max_transmit_segments()
    );
    assert_eq!(
        socket.max_receive_segments(),
        socket.inner.max_receive_segments()
    );
    assert!(
        socket.local_addr().unwrap().is_ipv6(),
        "quinn must see an IPv6 socket"
    );
    assert!(socket.real_local_addr().unwrap().is_ipv4());
}

#[tokio::test]
async fn control_channel_round_trip() {
    let (socket, metrics, addr) = socket();
    let mut rx = socket
        .control
        .register(keywire_proto::datagram::ControlKind::Probe, 4);
    // Control packets are dispatched while quinn polls the socket; stand in for quinn.
    let receiving = socket.clone();
    let driver = tokio::spawn(async move { recv_one(&receiving).await });
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.send_to(&[0x10, 1, b'h', b'i'], addr).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.from, peer.local_addr().unwrap());
    assert_eq!(&got.payload[..], b"hi");
    assert_eq!(metrics.snapshot().control_received, 1);
    socket
        .send_control(peer.local_addr().unwrap(), &[0x10, 1, b'o', b'k'])
        .await
        .unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x10, 1, b'o', b'k']);
    driver.abort();
}

#[test]
fn synthetic_addresses_put_the_id_in_the_interface_part() {
    let addr = super::synthetic_addr([0xfd6b, 0x7769, 0x7265, 1], 0x0102_0304_0506_0708, 1);
    assert_eq!(
        addr,
        "[fd6b:7769:7265:1:102:304:506:708]:1".parse().unwrap()
    );
}
