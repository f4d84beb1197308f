//! Dialing a bare key on loopback: through a real DHT (three server nodes, each on its own
//! 127.N.0.1), through real mosquitto brokers, and from the address book after a restart; and
//! forged introductions and nudges that must change nothing.

mod common;
mod mosquitto;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dht_config;
use keywire::address_book::AddressBook;
use keywire::dht::{Dht, ModeSetting};
use keywire::proto::intro::{encode_nudge, IntroKind, Introduction};
use keywire::signal::{SignalNode, SystemClock};
use keywire::{
    ConnectError, Discovery, Endpoint, EndpointConfig, IntroChannel, Introducer, SecretKey,
};
use mosquitto::{bounded, test_config, Pool, RawClient};

const LIMIT: Duration = Duration::from_secs(60);

fn endpoint_at(ip: &str, key: SecretKey) -> Endpoint {
    let mut config = EndpointConfig::new(key)
        .bind_addr(format!("{ip}:0").parse().unwrap())
        .network(keywire::NetworkId::from_name("keywire discovery tests"))
        .alpn(common::ALPN.to_vec());
    config.connect_timeout = Duration::from_secs(5);
    common::bind(config)
}

fn new_key() -> SecretKey {
    SecretKey::generate(&mut rand::rngs::OsRng)
}

/// A DHT node in automatic mode (a client until proven reachable).
fn dht_client(endpoint: &Endpoint, bootstrap: Vec<SocketAddr>) -> Arc<Dht> {
    Arc::new(Dht::spawn(
        endpoint,
        dht_config(bootstrap, ModeSetting::Auto),
    ))
}

/// A node at `ip` that dials by key through `net` (joining through its first node) and the
/// address book at `book`, and does not advertise itself.
fn dht_dialer(ip: &str, key: SecretKey, net: &DhtNet, book: &std::path::Path) -> Endpoint {
    let dialer = endpoint_at(ip, key);
    let dht = dht_client(&dialer, vec![net.addrs()[0]]);
    let book = Arc::new(AddressBook::open(book).unwrap());
    let discovery = Discovery::new().dht(dht).address_book(book);
    dialer.set_discovery(discovery.advertise(false)).unwrap();
    dialer
}

/// Three server-mode DHT nodes that know each other.
struct DhtNet {
    nodes: Vec<(Endpoint, Arc<Dht>)>,
}

impl DhtNet {
    async fn start(first_octet: u8) -> Self {
        let mut nodes: Vec<(Endpoint, Arc<Dht>)> = Vec::new();
        for n in 0..3u8 {
            let ep = endpoint_at(&format!("127.{}.0.1", first_octet + n), new_key());
            let bootstrap = nodes.iter().map(|(e, _)| e.local_addr().unwrap()).collect();
            let dht = Arc::new(Dht::spawn(&ep, dht_config(bootstrap, ModeSetting::Server)));
            nodes.push((ep, dht));
        }
        Self { nodes }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .map(|(e, _)| e.local_addr().unwrap())
            .collect()
    }

    /// Waits until the DHT serves `node`'s record.
    async fn wait_record(&self, node: keywire::NodeId) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = self.nodes[0].1.lookup(node).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the listener's record never appeared"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Accepts connections and echoes one stream each.
fn serve_echo(endpoint: &Endpoint) -> tokio::task::JoinHandle<()> {
    common::spawn_echo(endpoint.clone())
}

async fn echo_once(conn: &keywire::Connection) {
    let (mut send, mut recv) = conn.open_bi().await.expect("open a stream");
    send.write_all(b"by key").await.unwrap();
    send.finish().unwrap();
    let back = recv.read_to_end(64).await.expect("echo");
    assert_eq!(back, b"by key");
}

async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn temp_book(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "keywire-discovery-{name}-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("book.sqlite")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_key_without_discovery_is_a_clear_error() {
    let dialer = common::bind(common::config());
    let key = new_key().node_id();
    match dialer.connect(key, common::ALPN).await {
        Err(ConnectError::NoAddresses(node)) => assert_eq!(node, key),
        other => panic!("expected NoAddresses, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_by_key_through_the_dht_then_from_the_address_book() {
    bounded(LIMIT, async {
        let net = DhtNet::start(71).await;
        let listener = endpoint_at("127.74.0.1", new_key());
        let listener_dht = dht_client(&listener, net.addrs());
        listener
            .set_discovery(Discovery::new().dht(listener_dht.clone()))
            .unwrap();
        let _echo = serve_echo(&listener);
        net.wait_record(listener.node_id()).await;

        let book_path = temp_book("dht");
        let dialer_key = new_key();
        {
            let dialer = dht_dialer("127.75.0.1", dialer_key.clone(), &net, &book_path);
            let found = dialer
                .connect_by_key(listener.node_id(), common::ALPN)
                .await
                .expect("dial by key through the DHT");
            assert_eq!(found.connection.remote_node_id(), listener.node_id());
            assert!(
                matches!(
                    found.introduced_by,
                    IntroChannel::DhtRecord | IntroChannel::DhtIntro
                ),
                "introduced by {}",
                found.introduced_by
            );
            assert!(found.timings.dht_record.is_some() || found.timings.dht_nudge.is_some());
            echo_once(&found.connection).await;
            // The introduction went out with the lookup: the listener answers it with nudges.
            eventually_async("the listener accepted the DHT introduction", || async {
                listener
                    .discovery_metrics()
                    .is_some_and(|m| m.intros_accepted_dht == 1 && m.nudges_sent >= 1)
            })
            .await;
            found.connection.close(0u32.into(), b"done");
            dialer.close().await;
        }

        // A restart: a new endpoint with the same key and book, no DHT, no MQTT.
        let dialer = endpoint_at("127.75.0.1", dialer_key);
        let book = Arc::new(AddressBook::open(&book_path).unwrap());
        dialer
            .set_discovery(Discovery::new().address_book(book).advertise(false))
            .unwrap();
        let found = dialer
            .connect_by_key(listener.node_id(), common::ALPN)
            .await
            .expect("dial by key from the address book");
        assert_eq!(found.introduced_by, IntroChannel::AddressBook);
        echo_once(&found.connection).await;
        let _ = std::fs::remove_dir_all(book_path.parent().unwrap());
    })
    .await;
}

/// An endpoint with a signalling node of the same key, discovery over the pool.
fn mqtt_node(ip: &str, pool: &Pool, advertise: bool) -> (Endpoint, Arc<SignalNode>) {
    let key = new_key();
    let endpoint = endpoint_at(ip, key.clone());
    let signal = Arc::new(
        SignalNode::start(
            key,
            mosquitto::network(),
            pool.config(),
            test_config(),
            Arc::new(SystemClock),
        )
        .expect("start the signalling node"),
    );
    endpoint
        .set_discovery(Discovery::new().mqtt(signal.clone()).advertise(advertise))
        .unwrap();
    (endpoint, signal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_by_key_through_the_mqtt_pool_despite_forgeries() {
    bounded(LIMIT, async {
        let pool = Pool::start(2, 0);
        let (listener, listener_signal) = mqtt_node("127.0.0.1", &pool, true);
        let _echo = serve_echo(&listener);
        let (dialer, dialer_signal) = mqtt_node("127.0.0.1", &pool, false);
        let (_attacker_ep, attacker) = mqtt_node("127.0.0.1", &pool, false);
        for node in [&listener_signal, &dialer_signal, &attacker] {
            assert_eq!(node.wait_subscribed(2, Duration::from_secs(10)).await, 2);
        }

        // Forgeries before the dial: garbage on the listener's topic (refused by the
        // signalling layer), and signed introductions that are wrong in every other way.
        let raw = RawClient::connect(pool.brokers[0].port, "unused/topic").await;
        raw.publish(&mosquitto::topic_of(&listener.node_id()), vec![0xAB; 200])
            .await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let forged = |kind, to, time_ms| Introduction {
            kind,
            to,
            time_ms,
            nonce: rand::random(),
            candidates: vec!["127.0.0.1:9".parse().unwrap()],
        };
        let bad = [
            // For another node.
            forged(IntroKind::Request, dialer.node_id(), now_ms),
            // Too old.
            forged(IntroKind::Request, listener.node_id(), now_ms - 120_000),
            // A reply nobody asked for.
            forged(IntroKind::Reply, listener.node_id(), now_ms),
        ];
        for intro in &bad {
            attacker
                .send_control(listener.node_id(), &intro.encode())
                .await
                .unwrap();
        }
        // One valid introduction, then the same again: the replay is refused.
        let once = forged(IntroKind::Request, listener.node_id(), now_ms);
        for _ in 0..2 {
            attacker
                .send_control(listener.node_id(), &once.encode())
                .await
                .unwrap();
        }
        eventually_async("the forgeries refused", || async {
            listener
                .discovery_metrics()
                .is_some_and(|m| m.intros_rejected == 4 && m.intros_accepted_mqtt == 1)
        })
        .await;
        assert!(listener_signal.metrics().rejected_garbage >= 1);

        // Stray nudges at the dialer: counted, never dialed.
        let stray = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dialer_addr = dialer.local_addr().unwrap();
        stray
            .send_to(&encode_nudge(&rand::random()), dialer_addr)
            .await
            .unwrap();
        eventually_async("the stray nudge counted", || async {
            dialer
                .discovery_metrics()
                .is_some_and(|m| m.nudges_unmatched == 1)
        })
        .await;

        let found = dialer
            .connect_by_key(listener.node_id(), common::ALPN)
            .await
            .expect("dial by key through the MQTT pool");
        assert_eq!(found.introduced_by, IntroChannel::MqttIntro);
        assert_eq!(found.connection.remote_node_id(), listener.node_id());
        assert!(found.timings.mqtt_answer.is_some());
        echo_once(&found.connection).await;
        let metrics = listener.discovery_metrics().unwrap();
        assert_eq!(metrics.intros_accepted_mqtt, 2);
        assert_eq!(metrics.intros_rejected, 4);

        // The pool as an `Introducer`, the interface gates and peers implement too.
        let again = keywire::discovery::MqttIntroducer
            .connect(&dialer, listener.node_id(), common::ALPN)
            .await
            .expect("connect through the MQTT introducer");
        assert_eq!(again.remote_node_id(), listener.node_id());
        echo_once(&again).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_nobody_advertises_fails_with_each_channels_reason() {
    bounded(LIMIT, async {
        let net = DhtNet::start(81).await;
        let dialer = dht_dialer("127.84.0.1", new_key(), &net, &temp_book("nobody"));
        let nobody = new_key().node_id();
        let started = Instant::now();
        match dialer.connect(nobody, common::ALPN).await {
            Err(ConnectError::NotFound { node, failures }) => {
                assert_eq!(node, nobody);
                let channels: Vec<IntroChannel> = failures.iter().map(|(c, _)| *c).collect();
                assert!(
                    channels.contains(&IntroChannel::AddressBook),
                    "{channels:?}"
                );
                assert!(channels.contains(&IntroChannel::DhtIntro), "{channels:?}");
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        // The answer wait bounds it, well inside the overall limit.
        assert!(started.elapsed() < keywire::discovery::RESOLVE_TIMEOUT);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_endpoint_with_discovery_frees_its_port() {
    bounded(LIMIT, async {
        let net = DhtNet::start(91).await;
        let addr = {
            let endpoint = endpoint_at("127.94.0.1", new_key());
            let dht = dht_client(&endpoint, net.addrs());
            endpoint.set_discovery(Discovery::new().dht(dht)).unwrap();
            let addr = endpoint.local_addr().unwrap();
            endpoint.close().await;
            addr
        };
        // The discovery's tasks, the DHT and the socket go with the endpoint.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::net::UdpSocket::bind(addr) {
                Ok(_) => break,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "{addr} still bound 5 s after the endpoint was dropped: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_is_not_looked_for() {
    bounded(LIMIT, async {
        let net = DhtNet::start(101).await;
        let denied = new_key().node_id();
        let mut config = EndpointConfig::new(new_key())
            .bind_addr("127.104.0.1:0".parse().unwrap())
            .network(keywire::NetworkId::from_name("keywire discovery tests"))
            .alpn(common::ALPN.to_vec());
        config.policy.deny.insert(denied);
        let dialer = common::bind(config);
        let dht = dht_client(&dialer, net.addrs());
        dialer
            .set_discovery(Discovery::new().dht(dht).advertise(false))
            .unwrap();
        let started = Instant::now();
        match dialer.connect(denied, common::ALPN).await {
            Err(ConnectError::Denied(node)) => assert_eq!(node, denied),
            other => panic!("expected Denied, got {other:?}"),
        }
        // Refused before any lookup or introduction (those take round trips and seconds).
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(dialer.discovery_metrics().unwrap().nudges_sent, 0);
    })
    .await;
}
