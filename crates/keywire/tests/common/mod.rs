//! Helpers for tests on real loopback sockets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keywire::{Endpoint, EndpointConfig, NetworkId, NodeAddr, SecretKey};

pub const ALPN: &[u8] = b"keywire-test/1";

/// A config for a test node bound to IPv4 loopback, on a network of its own (so tests never
/// talk to anything else).
pub fn config() -> EndpointConfig {
    let mut config = EndpointConfig::new(SecretKey::generate(&mut rand::rngs::OsRng))
        .bind_addr("127.0.0.1:0".parse().unwrap())
        .network(NetworkId::from_name("keywire tests"))
        .alpn(ALPN.to_vec());
    config.connect_timeout = Duration::from_secs(5);
    config
}

pub fn bind(config: EndpointConfig) -> Endpoint {
    Endpoint::bind(config).expect("bind a loopback endpoint")
}

/// Binds `config` on `ip` at a port free for both UDP and TCP, for a gate that must accept TCP
/// links on its UDP port's number.
pub fn bind_for_gate(config: EndpointConfig, ip: &str) -> Endpoint {
    let ip: std::net::IpAddr = ip.parse().expect("an IP address");
    let port =
        keywire::bench_support::free_tcp_and_udp_port(ip).expect("a port free for TCP and UDP");
    bind(config.bind_addr(SocketAddr::new(ip, port)))
}

pub fn addr_of(endpoint: &Endpoint) -> NodeAddr {
    NodeAddr::new(endpoint.node_id(), [endpoint.local_addr().unwrap()])
}

pub fn at(node: &Endpoint, addr: SocketAddr) -> NodeAddr {
    NodeAddr::new(node.node_id(), [addr])
}

/// Serves an echo on every bidirectional stream of every connection `accept()` returns.
pub fn spawn_echo(endpoint: Endpoint) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(conn) = endpoint.accept().await {
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut recv, &mut send).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    })
}

/// Bounds a test step in time, so a hang fails with a message instead of blocking CI.
pub async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {secs} s"))
}

/// Registers `client` with the gate running on `gate`, within 10 s.
pub async fn registered(client: &Endpoint, gate: &Endpoint) -> keywire::gate::GateClient {
    within(
        10,
        "gate registration",
        keywire::gate::GateClient::register(client, &addr_of(gate)),
    )
    .await
    .expect("registers with the gate")
}

/// Accepts the next connection and its first unidirectional stream, and reads it to the end:
/// returns how many bytes arrived and their BLAKE3 digest.
pub async fn receive_hashed(endpoint: &Endpoint) -> (usize, blake3::Hash) {
    let conn = endpoint.accept().await.expect("a connection");
    read_hashed(&conn).await
}

/// Accepts the next unidirectional stream of `conn` and reads it to the end: returns how many
/// bytes arrived and their BLAKE3 digest.
pub async fn read_hashed(conn: &keywire::Connection) -> (usize, blake3::Hash) {
    let mut recv = conn.accept_uni().await.expect("a stream");
    let mut hasher = blake3::Hasher::new();
    let mut total = 0;
    while let Some(chunk) = recv.read_chunk(1 << 20, true).await.expect("stream data") {
        hasher.update(&chunk.bytes);
        total += chunk.bytes.len();
    }
    (total, hasher.finalize())
}

/// A UDP forwarder between one client and a target set once, that can be cut.
pub struct Forwarder {
    pub front: SocketAddr,
    /// Until set, datagrams to `front` are dropped (as by a firewall).
    pub target: Arc<std::sync::OnceLock<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    pub async fn start(front_bind: &str, back_bind: &str) -> Self {
        let target = Arc::new(std::sync::OnceLock::<SocketAddr>::new());
        let target_for_task = target.clone();
        let front = Arc::new(tokio::net::UdpSocket::bind(front_bind).await.unwrap());
        let back = Arc::new(tokio::net::UdpSocket::bind(back_bind).await.unwrap());
        let front_addr = front.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let client = Arc::new(tokio::sync::Mutex::new(None::<SocketAddr>));
            let inbound = {
                let (front, back, client) = (front.clone(), back.clone(), client.clone());
                async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok((n, from)) = front.recv_from(&mut buf).await {
                        *client.lock().await = Some(from);
                        if let Some(target) = target_for_task.get() {
                            let _ = back.send_to(&buf[..n], *target).await;
                        }
                    }
                }
            };
            let outbound = async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, _)) = back.recv_from(&mut buf).await {
                    if let Some(to) = *client.lock().await {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            };
            tokio::join!(inbound, outbound);
        });
        Self {
            front: front_addr,
            target,
            task,
        }
    }

    pub fn cut(&self) {
        self.task.abort();
    }
}

/// DHT settings for loopback tests: `mode`, joining through `bootstrap`, 500 ms request
/// timeouts.
pub fn dht_config(
    bootstrap: Vec<SocketAddr>,
    mode: keywire::dht::ModeSetting,
) -> keywire::dht::DhtConfig {
    let mut config = keywire::dht::DhtConfig {
        bootstrap,
        ..keywire::dht::DhtConfig::default()
    };
    config.kad.mode = mode;
    config.kad.request_timeout = Duration::from_millis(500);
    config
}
