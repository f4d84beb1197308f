//! `keywire gate`, `keywire listen --gate` and `keywire connect` as users run them: a listener
//! reachable only through its gate is dialed relayed, and the connection then goes direct.

mod common;

use common::wait_with_timeout;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keywire::{NodeAddr, Ticket};

fn keywire(dir: &std::path::Path, key: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keywire"));
    cmd.env_remove("KEYWIRE_KEY")
        .env_remove("KEYWIRE_NETWORK")
        .env_remove("RUST_LOG")
        .arg("--key")
        .arg(dir.join(key))
        .args(["--network", "gate-cli-test", "--json"]);
    cmd
}

/// Kills a child process on drop, so a failed assertion leaves nothing running.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json_line(reader: &mut impl BufRead, what: &str) -> serde_json::Value {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("{what}: not JSON: {line:?}"))
}

#[test]
fn a_listener_behind_its_gate_is_reached_relayed_then_directly() {
    relayed_then_direct("udp", &[], "relayed");
}

/// The connector reaches the gate over TCP only (`--gate-link tcp`, as a node whose network
/// blocks UDP would after its fall-back), as raw framing and as WebSocket: the connection
/// starts `relayed (tcp)`, and moves to a direct UDP path since UDP to the peer works here.
#[test]
fn a_connector_that_reaches_the_gate_over_tcp_starts_relayed_tcp() {
    relayed_then_direct("tcp", &["--gate-link", "tcp"], "relayed (tcp)");
    relayed_then_direct(
        "ws",
        &["--gate-link", "tcp", "--websocket"],
        "relayed (tcp)",
    );
}

/// A gate, a listener registered with it, and a connector dialing a ticket that names only
/// the gate (with `connector_options`): the bytes arrive, the connection starts on
/// `expected_start` and then goes direct.
fn relayed_then_direct(name: &str, connector_options: &[&str], expected_start: &str) {
    let dir = std::env::temp_dir().join(format!("keywire-gate-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // A port free for TCP too: the connector may reach the gate over TCP on its UDP port's number.
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let port = keywire::bench_support::free_tcp_and_udp_port(ip).unwrap();
    let bind = format!("127.0.0.1:{port}");
    let mut gate = Reaper(
        keywire(&dir, "gate.key")
            .args(["gate", "--bind", &bind, "--report-every", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut gate_out = BufReader::new(gate.0.stdout.take().unwrap());
    let gate_event = json_line(&mut gate_out, "gate");
    let gate_ticket = gate_event["ticket"].as_str().unwrap().to_string();
    assert_eq!(
        gate_event["tcp_addrs"][0], gate_event["addr"],
        "TCP links on the UDP port's address: {gate_event}"
    );

    let payload: Vec<u8> = (0..(2 << 20)).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("payload"), &payload).unwrap();
    let mut listener = Reaper(
        keywire(&dir, "listener.key")
            .args(["listen", "--bind", "127.0.0.1:0", "--gate", &gate_ticket])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("listener.out")).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut listener_err = BufReader::new(listener.0.stderr.take().unwrap());
    let listening = json_line(&mut listener_err, "listening");
    assert_eq!(listening["event"], "listening", "{listening}");
    let ticket: Ticket = listening["ticket"].as_str().unwrap().parse().unwrap();
    assert_eq!(ticket.gates.len(), 1, "the ticket names the gate");
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = listener_err.read_to_string(&mut rest);
        rest
    });
    // As if the listener were behind a NAT: dial with only the gate in the ticket.
    let gate_only = Ticket::with_gates(NodeAddr::new(ticket.node.node_id, []), ticket.gates)
        .unwrap()
        .to_string();
    let mut connector = Reaper(
        keywire(&dir, "connector.key")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .args(connector_options)
            .args(["connect", &gate_only])
            .stdin(std::fs::File::open(dir.join("payload")).unwrap())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("connector.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = wait_with_timeout(&mut connector.0, Duration::from_secs(60));
    let events: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("connector.err"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(status.success(), "connect failed: {events:?}");
    assert!(
        wait_with_timeout(&mut listener.0, Duration::from_secs(30)).success(),
        "{}",
        drain.join().unwrap()
    );
    assert_eq!(std::fs::read(dir.join("listener.out")).unwrap(), payload);

    let find = |name: &str| events.iter().find(|e| e["event"] == name).cloned();
    let connected = find("connected").expect("a connected event");
    assert_eq!(connected["path"], expected_start, "{connected}");
    assert!(connected["gate"].is_string());
    assert!(!connected["candidates"].as_array().unwrap().is_empty());
    let path = find("path").expect("a path event: the switch to direct");
    assert_eq!(path["path"], "direct", "{path}");
    let done = find("done").expect("a done event");
    assert!(done["to_direct_ms"].as_f64().is_some(), "{done}");
    assert_eq!(done["bytes_sent"], 2 << 20);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Starts a `keywire gate` process on `[::]` (both address families); returns it and the
/// gate's address for IPv4 and IPv6 clients.
fn gate_process(dir: &std::path::Path, key: &str) -> (Reaper, keywire::NodeAddr) {
    let mut gate = Reaper(
        keywire(dir, key)
            .args(["gate", "--bind", "[::]:0", "--report-every", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(gate.0.stdout.take().unwrap());
    let event = json_line(&mut out, "gate");
    let ticket: Ticket = event["ticket"].as_str().unwrap().parse().unwrap();
    let port = event["addr"]
        .as_str()
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .port();
    let addrs: [std::net::SocketAddr; 2] = [
        ([127, 0, 0, 1], port).into(),
        (std::net::Ipv6Addr::LOCALHOST, port).into(),
    ];
    (gate, NodeAddr::new(ticket.node.node_id, addrs))
}

async fn within<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .map_err(|_| format!("no answer within {secs} s"))
}

#[tokio::test]
async fn a_relayed_connection_moves_to_the_second_gate_when_the_first_dies() {
    let dir = std::env::temp_dir().join(format!("keywire-failover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mut first, first_addr) = gate_process(&dir, "gate1.key");
    let (_second, second_addr) = gate_process(&dir, "gate2.key");
    // Alice speaks only IPv4 and Bob only IPv6: no direct path, the relay is all they have.
    let node = |bind: &str| {
        let key = keywire::SecretKey::generate(&mut rand::rngs::OsRng);
        keywire::Endpoint::bind(
            keywire::EndpointConfig::new(key)
                .bind_addr(bind.parse().unwrap())
                .network(keywire::NetworkId::from_name("gate-cli-test"))
                .alpn(b"failover-test".to_vec()),
        )
        .unwrap()
    };
    let (alice, bob) = (node("127.0.0.1:0"), node("[::1]:0"));
    within(10, bob.join_gate(&first_addr))
        .await
        .unwrap()
        .unwrap();
    within(10, bob.join_gate(&second_addr))
        .await
        .unwrap()
        .unwrap();
    let ticket = Ticket::with_gates(NodeAddr::new(bob.node_id(), []), bob.joined_gates()).unwrap();
    assert_eq!(ticket.gates.len(), 2);

    let receiving = tokio::spawn({
        let bob = bob.clone();
        async move {
            let conn = bob.accept().await.unwrap();
            let mut recv = conn.accept_uni().await.unwrap();
            let mut hasher = blake3::Hasher::new();
            let mut total = 0usize;
            while let Some(chunk) = recv.read_chunk(1 << 20, true).await.unwrap() {
                hasher.update(&chunk.bytes);
                total += chunk.bytes.len();
            }
            (total, hasher.finalize(), conn)
        }
    });
    let conn = within(10, alice.connect_ticket(&ticket, b"failover-test"))
        .await
        .unwrap()
        .unwrap();
    let first_gate = match conn.initial_path() {
        keywire::Path::Relayed { gate, .. } => gate,
        other => panic!("expected a relayed start, got {other}"),
    };
    assert_eq!(first_gate.port(), first_addr.direct_addrs[0].port());
    let mut events = conn.path_events();
    let watcher = tokio::spawn(async move { (events.next().await, Instant::now()) });
    let mut send = conn.open_uni().await.unwrap();
    let block: Vec<u8> = (0..(256 << 10)).map(|i| (i % 249) as u8).collect();
    let mut expected = blake3::Hasher::new();
    let mut killed_at = None;
    for i in 0..40 {
        expected.update(&block);
        send.write_all(&block).await.unwrap();
        if i == 4 {
            // The first gate dies without a word (SIGKILL).
            first.0.kill().unwrap();
            first.0.wait().unwrap();
            killed_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send.finish().unwrap();
    let (moved, moved_at) = within(10, watcher).await.expect("a path change").unwrap();
    let moved_after = moved_at - killed_at.unwrap();
    assert!(
        moved_after <= Duration::from_secs(5),
        "moved {moved_after:?} after the kill (limit 5 s)"
    );
    match moved.expect("the connection's path") {
        keywire::Path::Relayed { gate, .. } => {
            assert_eq!(
                gate.port(),
                second_addr.direct_addrs[0].port(),
                "moved to the second gate"
            )
        }
        other => panic!("expected the second gate, got {other}"),
    }
    let (total, digest, _bob_conn) = within(60, receiving).await.unwrap().unwrap();
    assert_eq!(
        (total, digest),
        (40 * (256 << 10), expected.finalize()),
        "byte-identical"
    );
    assert_eq!(alice.metrics().gate_failovers, 1, "{:?}", alice.metrics());
    assert!(
        bob.metrics().gate_failovers >= 1,
        "bob followed alice to the second gate: {:?}",
        bob.metrics()
    );
    eprintln!("moved to the second gate {moved_after:?} after the first was killed");
    let _ = std::fs::remove_dir_all(dir);
}
