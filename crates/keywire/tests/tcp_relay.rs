//! Gates over TCP and WebSocket for clients whose networks block UDP, on real loopback sockets:
//! a TCP client and a UDP client reach each other through one gate, the automatic fall-back
//! after 2 s of UDP silence, WebSocket through an HTTP CONNECT proxy, the move to a direct UDP
//! path once UDP works, and a TCP client that stops reading costing no one else.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use keywire::gate::{Gate, GateClient, GateConfig};
use keywire::proto::gate::frame::RelayFrame;
use keywire::{
    Connection, ControlKind, Endpoint, EndpointConfig, GateLinkConfig, GateLinkMode, Path,
    RelayLink,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn fast_gate() -> (Endpoint, Gate) {
    let endpoint = bind_for_gate(config(), "127.0.0.1");
    let mut gate_config = GateConfig::default();
    gate_config.relay_bytes_per_second = 1 << 30;
    gate_config.relay_burst = 16 << 20;
    let gate = Gate::spawn(&endpoint, gate_config)
        .await
        .expect("gate starts");
    (endpoint, gate)
}

/// A node that reaches gates only over TCP; relayed connections stay relayed.
fn tcp_only(link: GateLinkConfig) -> EndpointConfig {
    config()
        .upgrade_to_direct(false)
        .gate_link(link.mode(GateLinkMode::TcpOnly))
}

fn relay_only() -> EndpointConfig {
    config().upgrade_to_direct(false)
}

fn tcp_relayed(gate: SocketAddr) -> Path {
    Path::Relayed {
        gate,
        link: RelayLink::Tcp,
    }
}

fn udp_relayed(gate: SocketAddr) -> Path {
    Path::Relayed {
        gate,
        link: RelayLink::Udp,
    }
}

/// Sends `size` bytes of a fixed pattern on a new stream of `conn`; returns their digest.
async fn send_pattern(conn: &Connection, size: usize) -> blake3::Hash {
    let block: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let mut hasher = blake3::Hasher::new();
    let mut send = conn.open_uni().await.unwrap();
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len());
        hasher.update(&block[..n]);
        send.write_all(&block[..n]).await.unwrap();
        left -= n;
    }
    send.finish().unwrap();
    hasher.finalize()
}

/// Dials `to` through `via` and sends `size` bytes; checks the receiver got exactly them and
/// returns both ends' paths and the transfer time.
async fn relayed_transfer(
    from: &Endpoint,
    via: &GateClient,
    to: &Endpoint,
    size: usize,
) -> (Path, Path, Duration) {
    let receiver = tokio::spawn({
        let to = to.clone();
        async move {
            let conn = to.accept().await.unwrap();
            let path = conn.path();
            (path, read_hashed(&conn).await)
        }
    });
    let conn = within(
        10,
        "relayed connect",
        from.connect_via(to.node_id(), ALPN, via),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let digest = send_pattern(&conn, size).await;
    let (their_path, (total, got)) = within(120, "relayed transfer", receiver).await.unwrap();
    let took = started.elapsed();
    assert_eq!((total, got), (size, digest), "bytes arrive intact");
    (conn.path(), their_path, took)
}

#[tokio::test]
async fn a_tcp_client_and_a_udp_client_reach_each_other_through_one_gate() {
    let (gate_node, gate) = fast_gate().await;
    let tcp = bind(tcp_only(GateLinkConfig::default()));
    let udp = bind(relay_only());
    let t = registered(&tcp, &gate_node).await;
    let u = registered(&udp, &gate_node).await;
    assert!(t.over_stream_link() && !u.over_stream_link());
    assert!(
        t.observed_addr().ip().is_loopback(),
        "the gate reports the TCP peer, not its link's own address"
    );
    tcp.use_gate(&t);
    udp.use_gate(&u);
    let gate_addr = gate_node.local_addr().unwrap();

    // The TCP client dials, then the UDP client does.
    let (mine, theirs, _) = relayed_transfer(&tcp, &t, &udp, 8 << 20).await;
    assert_eq!(
        (mine, theirs),
        (tcp_relayed(gate_addr), udp_relayed(gate_addr))
    );
    assert_eq!(
        mine.to_string(),
        format!("relayed (tcp) via gate {gate_addr}")
    );
    assert_eq!(mine.kind(), "relayed (tcp)");
    let (mine, theirs, _) = relayed_transfer(&udp, &u, &tcp, 8 << 20).await;
    assert_eq!(
        (mine, theirs),
        (udp_relayed(gate_addr), tcp_relayed(gate_addr))
    );

    let m = gate.metrics();
    assert_eq!((m.links_accepted, m.links_refused), (1, 0), "{m:?}");
    assert!(m.bytes_relayed > 16 << 20, "{m:?}");
    let client = tcp.metrics();
    assert!(
        client.link_datagrams_received > 5_000 && client.link_queue_full == 0,
        "{client:?}"
    );
}

#[tokio::test]
async fn two_tcp_clients_reach_each_other_over_websocket() {
    let (gate_node, _gate) = fast_gate().await;
    let ws = || tcp_only(GateLinkConfig::default().websocket(true));
    let (alice, bob) = (bind(ws()), bind(ws()));
    let a = registered(&alice, &gate_node).await;
    let b = registered(&bob, &gate_node).await;
    bob.use_gate(&b);
    let gate_addr = gate_node.local_addr().unwrap();
    let (mine, theirs, _) = relayed_transfer(&alice, &a, &bob, 4 << 20).await;
    assert_eq!(
        (mine, theirs),
        (tcp_relayed(gate_addr), tcp_relayed(gate_addr))
    );
}

#[tokio::test]
async fn the_gate_closes_what_is_not_a_link_and_bounds_links_per_address() {
    let endpoint = bind_for_gate(config(), "127.0.0.1");
    let mut gate_config = GateConfig::default();
    gate_config.max_links_per_ip = 2;
    let extra = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    gate_config.extra_link_addrs = vec![extra];
    let gate = Gate::spawn(&endpoint, gate_config).await.unwrap();
    let tcp_addr = gate.link_addrs()[0];
    assert_eq!(gate.link_addrs()[1], extra);
    assert_eq!(
        tcp_addr,
        endpoint.local_addr().unwrap(),
        "the UDP port's number"
    );
    let answer = |mut stream: TcpStream| async move {
        let mut reply = Vec::new();
        within(15, "the gate closing", stream.read_to_end(&mut reply))
            .await
            .unwrap();
        String::from_utf8_lossy(&reply).to_string()
    };
    // Neither the preamble nor HTTP (here a TLS ClientHello's first bytes): closed, silently.
    let mut tls = TcpStream::connect(tcp_addr).await.unwrap();
    tls.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .await
        .unwrap();
    assert_eq!(answer(tls).await, "");
    // HTTP that is no WebSocket upgrade: 400.
    let mut plain = TcpStream::connect(tcp_addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: gate\r\n\r\n")
        .await
        .unwrap();
    assert!(answer(plain).await.starts_with("HTTP/1.1 400 "));
    // Two links from one address are held; the third is closed at once, also on the gate's
    // other listener (the bounds are the gate's, not each listener's).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut link = TcpStream::connect(tcp_addr).await.unwrap();
        link.write_all(&keywire::proto::link::framing::PREAMBLE)
            .await
            .unwrap();
        held.push(link);
    }
    within(5, "two links accepted", async {
        while gate.metrics().links_accepted < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let third = TcpStream::connect(extra).await.unwrap();
    assert_eq!(answer(third).await, "");
    let m = gate.metrics();
    assert_eq!((m.links_accepted, m.links_refused), (2, 3), "{m:?}");
    drop(held);
}

/// A UDP socket that swallows everything, with a TCP forwarder on the same port number to
/// the gate's TCP port: a network where UDP to the gate gets no answer and TCP works.
struct UdpBlackhole {
    addr: SocketAddr,
    _udp: std::net::UdpSocket,
    _forwarder: tokio::task::JoinHandle<()>,
}

impl UdpBlackhole {
    async fn to(gate_tcp: SocketAddr) -> Self {
        loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = udp.local_addr().unwrap();
            // The same port number for TCP may be taken; then try another.
            let Ok(listener) = TcpListener::bind(addr).await else {
                continue;
            };
            let forwarder = tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut gate = TcpStream::connect(gate_tcp).await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut gate).await;
                    });
                }
            });
            return Self {
                addr,
                _udp: udp,
                _forwarder: forwarder,
            };
        }
    }
}

#[tokio::test]
async fn a_client_whose_udp_gets_no_answer_falls_back_to_tcp_after_2_s() {
    let (gate_node, gate) = fast_gate().await;
    let blackhole = UdpBlackhole::to(gate.link_addrs()[0]).await;
    let blocked = bind(relay_only()); // the default: UDP, then TCP after 2 s
    let started = Instant::now();
    let registration = within(
        15,
        "registration through the blackhole",
        GateClient::register(&blocked, &at(&gate_node, blackhole.addr)),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(registration.over_stream_link());
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "registered after {took:?}: the fall-back starts at 2 s and takes a few round trips"
    );
    let peer = bind(relay_only());
    let p = registered(&peer, &gate_node).await;
    peer.use_gate(&p);
    let (mine, theirs, _) = relayed_transfer(&blocked, &registration, &peer, 2 << 20).await;
    assert_eq!(mine, tcp_relayed(blackhole.addr));
    assert_eq!(theirs, udp_relayed(gate_node.local_addr().unwrap()));
    // And the other way round.
    blocked.use_gate(&registration);
    let (mine, theirs, _) = relayed_transfer(&peer, &p, &blocked, 2 << 20).await;
    assert_eq!(mine, udp_relayed(gate_node.local_addr().unwrap()));
    assert_eq!(theirs, tcp_relayed(blackhole.addr));
}

/// An HTTP CONNECT proxy that records what it was asked for and can stop reading what comes
/// back from the far side (a client that stops reading, as the gate sees it).
struct ConnectProxy {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    paused: Arc<AtomicBool>,
    tunnels: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let paused = Arc::new(AtomicBool::new(false));
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let (log, pause, open) = (asked.clone(), paused.clone(), tunnels.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let tunnel = tokio::spawn(tunnel(client, log.clone(), pause.clone()));
                open.lock().unwrap().push(tunnel);
            }
        });
        Self {
            addr,
            asked,
            paused,
            tunnels,
            _task: task,
        }
    }

    /// Drops every tunnel open now (both TCP connections close), as a proxy ending long
    /// tunnels does.
    fn cut(&self) {
        for tunnel in self.tunnels.lock().unwrap().drain(..) {
            tunnel.abort();
        }
    }
}

async fn tunnel(mut client: TcpStream, log: Arc<Mutex<Vec<String>>>, pause: Arc<AtomicBool>) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if client.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let target = head.split(' ').nth(1).unwrap_or_default().to_string();
    log.lock()
        .unwrap()
        .push(head.lines().next().unwrap_or_default().to_string());
    // A small receive buffer towards the gate, so that a pause backs up to it quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let Ok(far) = socket.connect(target.parse().unwrap()).await else {
        return;
    };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .unwrap();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut far_read, mut far_write) = far.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut far_write).await;
    });
    let mut buf = vec![0u8; 16 << 10];
    loop {
        if pause.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        match far_read.read(&mut buf).await {
            Ok(n) if n > 0 => {
                if client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    up.abort();
}

#[tokio::test]
async fn websocket_through_an_http_connect_proxy() {
    let (gate_node, _gate) = fast_gate().await;
    let proxy = ConnectProxy::start().await;
    let link = GateLinkConfig::default()
        .websocket(true)
        .http_proxy(proxy.addr.to_string());
    let behind_proxy = bind(tcp_only(link));
    let peer = bind(relay_only());
    let b = registered(&behind_proxy, &gate_node).await;
    let p = registered(&peer, &gate_node).await;
    peer.use_gate(&p);
    let gate_addr = gate_node.local_addr().unwrap();
    assert_eq!(
        *proxy.asked.lock().unwrap(),
        [format!("CONNECT {gate_addr} HTTP/1.1")]
    );
    let (mine, _, _) = relayed_transfer(&behind_proxy, &b, &peer, 4 << 20).await;
    assert_eq!(mine, tcp_relayed(gate_addr));
}

#[tokio::test]
async fn when_the_link_breaks_the_client_opens_a_new_one_and_the_stream_carries_on() {
    let (gate_node, gate) = fast_gate().await;
    let gate_addr = gate_node.local_addr().unwrap();
    let proxy = ConnectProxy::start().await;
    let tcp = bind(tcp_only(
        GateLinkConfig::default().http_proxy(proxy.addr.to_string()),
    ));
    let udp = bind(relay_only());
    // Joined (not just registered), as `listen --gate` and tickets do: the endpoint then knows
    // the gate to join again.
    let t = tcp.join_gate(&addr_of(&gate_node)).await.unwrap();
    let u = udp.join_gate(&addr_of(&gate_node)).await.unwrap();
    assert!(t.over_stream_link());
    let receiver = tokio::spawn({
        let udp = udp.clone();
        async move { read_hashed(&udp.accept().await.unwrap()).await }
    });
    let conn = within(
        10,
        "relayed connect",
        tcp.connect_via(udp.node_id(), ALPN, &t),
    )
    .await
    .unwrap();
    let mut events = conn.path_events();
    // 4 MiB in 64 KiB pieces over about 1.3 s; the proxy drops the tunnel 300 ms in.
    let block: Vec<u8> = (0..(64 << 10)).map(|i| (i % 239) as u8).collect();
    let mut send = conn.open_uni().await.unwrap();
    let mut expected = blake3::Hasher::new();
    let started = Instant::now();
    let mut cut_at = None;
    for i in 0..64 {
        expected.update(&block);
        within(30, "a write", send.write_all(&block)).await.unwrap();
        if i == 15 {
            proxy.cut();
            cut_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send.finish().unwrap();
    let (total, digest) = within(60, "the transfer after the cut", receiver)
        .await
        .unwrap();
    assert_eq!(
        (total, digest),
        (4 << 20, expected.finalize()),
        "bytes intact"
    );
    let moved = within(5, "a path event", events.next()).await;
    assert_eq!(
        moved,
        Some(tcp_relayed(gate_addr)),
        "the same gate, a new link"
    );
    eprintln!(
        "link cut {:?} in; transfer done {:?} after the cut",
        cut_at.unwrap() - started,
        cut_at.unwrap().elapsed()
    );
    let m = gate.metrics();
    assert!(m.links_accepted >= 2, "a second link: {m:?}");
    assert_eq!(
        proxy.asked.lock().unwrap().len(),
        2,
        "opened again through the proxy"
    );
    drop(u);
}

#[tokio::test]
async fn a_tcp_relayed_connection_moves_to_udp_once_udp_works() {
    let (gate_node, _gate) = fast_gate().await;
    // UDP to the peer works on loopback; only the gate is reached over TCP.
    let alice = bind(config().gate_link(GateLinkConfig::default().mode(GateLinkMode::TcpOnly)));
    let bob = bind(config());
    let a = registered(&alice, &gate_node).await;
    let b = registered(&bob, &gate_node).await;
    bob.use_gate(&b);
    spawn_echo(bob.clone());
    let conn = within(
        10,
        "relayed connect",
        alice.connect_via(bob.node_id(), ALPN, &a),
    )
    .await
    .unwrap();
    assert_eq!(
        conn.initial_path(),
        tcp_relayed(gate_node.local_addr().unwrap())
    );
    let mut events = conn.path_events();
    let path = within(10, "the move to a direct path", events.next()).await;
    assert_eq!(path, Some(Path::Direct(bob.local_addr().unwrap())));
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"still the same connection").await.unwrap();
    send.finish().unwrap();
    let echoed = within(10, "echo", recv.read_to_end(64)).await.unwrap();
    assert_eq!(echoed, b"still the same connection");
}

#[tokio::test]
async fn when_udp_starts_working_a_tcp_relayed_connection_finds_the_direct_path() {
    // Bob and the gate speak only IPv6, Alice only IPv4: Alice reaches the gate through
    // 127.0.0.3, where a TCP forwarder passes links and a UDP forwarder on the gate's
    // observation port number drops everything at first; her one direct path to Bob is a
    // forwarder Bob announces, also dropping at first. Opening both is UDP starting to work.
    let gate_node = bind_for_gate(config(), "::1");
    let _gate = Gate::spawn(&gate_node, GateConfig::default())
        .await
        .unwrap();
    let gate_addr = gate_node.local_addr().unwrap();
    let tcp = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let blocked_gate = tcp.local_addr().unwrap();
    let _tcp_forwarder = tokio::spawn(async move {
        while let Ok((mut client, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut gate = TcpStream::connect(gate_addr).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut gate).await;
            });
        }
    });
    let bob_path = Forwarder::start("127.0.0.1:0", "[::1]:0").await;
    let bob = bind(
        config()
            .bind_addr("[::1]:0".parse().unwrap())
            .announce(bob_path.front),
    );
    let b = registered(&bob, &gate_node).await;
    bob.use_gate(&b);
    spawn_echo(bob.clone());

    let link = GateLinkConfig::default()
        .mode(GateLinkMode::TcpOnly)
        .udp_recheck(Duration::from_secs(1));
    let alice = bind(config().gate_link(link));
    let a = GateClient::register(&alice, &at(&gate_node, blocked_gate))
        .await
        .unwrap();
    let observer = a.observation_addr();
    assert_eq!(observer.ip(), blocked_gate.ip());
    let udp_to_gate = Forwarder::start(&observer.to_string(), "[::1]:0").await;
    let conn = within(
        10,
        "relayed connect",
        alice.connect_via(bob.node_id(), ALPN, &a),
    )
    .await
    .unwrap();
    assert_eq!(conn.initial_path(), tcp_relayed(blocked_gate));
    let mut events = conn.path_events();

    // Long enough for Alice's probes to give up on the silent candidate, and for the UDP
    // checks to fail.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(conn.path(), tcp_relayed(blocked_gate), "no UDP yet");
    udp_to_gate
        .target
        .set(SocketAddr::new(gate_addr.ip(), observer.port()))
        .unwrap();
    bob_path.target.set(bob.local_addr().unwrap()).unwrap();
    let opened = Instant::now();
    let path = within(15, "the move to a direct path", events.next()).await;
    assert_eq!(path, Some(Path::Direct(bob_path.front)));
    eprintln!("direct {:?} after UDP started working", opened.elapsed());
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"now over UDP").await.unwrap();
    send.finish().unwrap();
    let echoed = within(10, "echo", recv.read_to_end(64)).await.unwrap();
    assert_eq!(echoed, b"now over UDP");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_that_stops_reading_does_not_slow_a_udp_relayed_pair() {
    const SIZE: usize = 8 << 20;
    let (gate_node, gate) = fast_gate().await;
    let (alice, bob) = (bind(relay_only()), bind(relay_only()));
    let a = registered(&alice, &gate_node).await;
    let b = registered(&bob, &gate_node).await;
    bob.use_gate(&b);

    // The slow client reaches the gate over TCP through a proxy that can stop reading.
    let proxy = ConnectProxy::start().await;
    let slow = bind(tcp_only(
        GateLinkConfig::default().http_proxy(proxy.addr.to_string()),
    ));
    let s = registered(&slow, &gate_node).await;
    // A sender floods it with relay frames at ~5 MB/s, no congestion control to hold it back.
    let flooder = bind(config());
    let f = registered(&flooder, &gate_node).await;
    let channel = f.introduce(slow.node_id(), vec![]).await.unwrap().channel;
    let relay = flooder.control_channel(ControlKind::Relay, 16);
    let frame = frame_payload(f.session(), channel, &[0xC0; 1200]);
    let flooded = Arc::new(AtomicU64::new(0));
    let flood = tokio::spawn({
        let (gate_addr, flooded) = (gate_node.local_addr().unwrap(), flooded.clone());
        async move {
            loop {
                for _ in 0..40 {
                    if relay.send(gate_addr, &frame).await.is_ok() {
                        flooded.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    // ABBA: reading, stalled, stalled, reading.
    let (mut reading, mut stalled) = (Duration::ZERO, Duration::ZERO);
    for stall in [false, true, true, false] {
        proxy.paused.store(stall, Ordering::Release);
        if stall {
            let before = gate_node.metrics().link_queue_full;
            within(30, "the gate dropping the slow client's datagrams", async {
                while gate_node.metrics().link_queue_full < before + 100 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
        }
        let (path, _, took) = relayed_transfer(&alice, &a, &bob, SIZE).await;
        assert_eq!(path, udp_relayed(gate_node.local_addr().unwrap()));
        if stall {
            stalled += took;
        } else {
            reading += took;
        }
    }
    flood.abort();
    drop(s);
    let ratio = reading.as_secs_f64() / stalled.as_secs_f64();
    let m = gate_node.metrics();
    eprintln!(
        "UDP pair, 2 x {} MiB each: {reading:?} while the TCP client read, {stalled:?} while \
         it stalled (throughput ratio {ratio:.2}); {} frames flooded, {} dropped at the link",
        SIZE >> 20,
        flooded.load(Ordering::Relaxed),
        m.link_queue_full
    );
    assert!(
        ratio > 0.5,
        "the pair slowed to {ratio:.2} of its speed while a TCP client stalled"
    );
    assert!(gate.metrics().frames_relayed > 10_000);
}

#[tokio::test]
async fn a_taken_tcp_port_fails_a_chosen_gate_port_and_skips_tcp_on_an_os_picked_one() {
    // OS-picked UDP port whose number is taken for TCP: the gate runs, without TCP links.
    let endpoint = bind(config());
    let udp = endpoint.local_addr().unwrap();
    let _squatter =
        std::net::TcpListener::bind(udp).expect("the UDP port's number is free for TCP");
    let gate = Gate::spawn(&endpoint, GateConfig::default())
        .await
        .expect("an OS-picked port never fails the gate");
    assert!(gate.link_addrs().is_empty(), "{:?}", gate.link_addrs());
    drop(gate);

    // A chosen port whose TCP twin is taken: a clear error, not a gate that serves no one.
    let ip = "127.0.0.1".parse().unwrap();
    let port = keywire::bench_support::free_tcp_and_udp_port(ip).unwrap();
    let chosen = bind(config().bind_addr(SocketAddr::new(ip, port)));
    let _squatter = std::net::TcpListener::bind(SocketAddr::new(ip, port)).unwrap();
    let err = Gate::spawn(&chosen, GateConfig::default())
        .await
        .err()
        .expect("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains("cannot accept TCP links"), "{err}");
}

#[tokio::test]
async fn a_websocket_close_is_answered_with_a_close_before_the_gate_hangs_up() {
    use keywire::proto::link::{http, websocket};
    let (gate_node, gate) = fast_gate().await;
    let tcp_addr = gate.link_addrs()[0];
    let mut stream = TcpStream::connect(tcp_addr).await.unwrap();
    let key = websocket::base64(&[7; 16]);
    stream
        .write_all(http::upgrade_request(&tcp_addr.to_string(), "/", &key).as_bytes())
        .await
        .unwrap();
    let mut close = Vec::new();
    websocket::encode(
        websocket::Opcode::Close,
        &[],
        Some([1, 2, 3, 4]),
        &mut close,
    )
    .unwrap();
    // Everything the gate sends until it hangs up: the upgrade answer, then its frames.
    let reply = within(10, "the gate hanging up", async {
        let mut reply = Vec::new();
        let mut sent_close = false;
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                return reply;
            }
            reply.extend_from_slice(&chunk[..n]);
            if !sent_close
                && http::check_upgrade_response(&reply, &websocket::accept_value(&key))
                    .unwrap()
                    .is_some()
            {
                stream.write_all(&close).await.unwrap();
                sent_close = true;
            }
        }
    })
    .await;
    let head = http::check_upgrade_response(&reply, &websocket::accept_value(&key))
        .unwrap()
        .expect("the upgrade was answered");
    let mut frames = reply[head..].to_vec();
    let frame = websocket::decode(&mut frames, false)
        .unwrap()
        .expect("a frame after the upgrade");
    assert_eq!(frame.opcode, websocket::Opcode::Close);
    drop(gate_node);
}
