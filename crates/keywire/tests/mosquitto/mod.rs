//! Real mosquitto brokers for the signalling tests: started on free loopback ports, killed by
//! PID when dropped. No mocks: the tests exercise the same client code as production.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keywire::signal::{
    AddressFamily, BrokerSpec, PoolConfig, RateCap, SignalConfig, SignalNode, SystemClock,
};
use keywire::{NetworkId, SecretKey};

/// The mosquitto binary, or a panic that says how to get it.
pub fn mosquitto_binary() -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let path = PathBuf::from(dir).join("mosquitto");
        if path.exists() {
            return path;
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let path = dir.join("mosquitto");
            if path.exists() {
                return path;
            }
        }
    }
    panic!(
        "the signalling tests need a real MQTT broker: `mosquitto` was not found in /usr/sbin or \
         PATH. Install it with `apt-get install mosquitto` (.ci/install-deps.sh does)."
    );
}

/// A loopback port that was free a moment ago (nothing listens there afterwards).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A running mosquitto process.
pub struct Broker {
    pub port: u16,
    /// "127.0.0.1" or "::1".
    pub host: &'static str,
    child: Option<Child>,
    config: PathBuf,
}

impl Broker {
    /// Starts a broker on a free port.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a broker on a free IPv6 loopback port.
    pub fn start_v6() -> Self {
        let l = TcpListener::bind("[::1]:0").expect("bind an IPv6 loopback port");
        let port = l.local_addr().expect("local addr").port();
        drop(l);
        Self::start_at("::1", port)
    }

    /// Starts a broker on `port` and waits until it accepts connections.
    pub fn start_on(port: u16) -> Self {
        Self::start_at("127.0.0.1", port)
    }

    /// Starts a broker listening on `host:port` (any spelling of a loopback address).
    pub fn start_at(host: &'static str, port: u16) -> Self {
        let config =
            std::env::temp_dir().join(format!("kw-mosquitto-{port}-{}.conf", std::process::id()));
        std::fs::write(
            &config,
            format!(
                "listener {port} {host}\nallow_anonymous true\npersistence false\n\
                 log_dest none\nmax_keepalive 120\n"
            ),
        )
        .expect("write mosquitto config");
        let mut broker = Self {
            port,
            host,
            child: None,
            config,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((self.host, self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("mosquitto on port {} exited at start: {status}", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the broker (SIGKILL by PID): connections drop without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn spec(&self) -> BrokerSpec {
        let family = if self.host.contains(':') {
            AddressFamily::V6
        } else {
            AddressFamily::V4
        };
        BrokerSpec::new(self.host, self.port, family)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// A pool of `live` running brokers plus `dead` ports where nothing listens.
pub struct Pool {
    pub brokers: Vec<Broker>,
    pub dead: Vec<u16>,
}

impl Pool {
    pub fn start(live: usize, dead: usize) -> Self {
        Self {
            brokers: (0..live).map(|_| Broker::start()).collect(),
            dead: (0..dead).map(|_| free_port()).collect(),
        }
    }

    pub fn config(&self) -> PoolConfig {
        let mut pool = PoolConfig::new();
        for b in &self.brokers {
            pool = pool.broker("127.0.0.1", b.port);
        }
        for port in &self.dead {
            pool = pool.broker("127.0.0.1", *port);
        }
        pool
    }
}

/// Settings for tests: short timers so that failure scenarios take seconds, caps raised so
/// that bulk tests are not throttled (the caps themselves are tested separately).
pub fn test_config() -> SignalConfig {
    let mut c = SignalConfig::default();
    c.send_timeout = Duration::from_secs(5);
    c.republish_interval = Duration::from_millis(300);
    c.replace_after = Duration::from_secs(2);
    c.backoff.initial = Duration::from_millis(100);
    c.backoff.max = Duration::from_millis(500);
    c.connect_timeout_secs = 1;
    c.sender_rate = RateCap { rate: 0, burst: 1 };
    c.broker_rate = RateCap { rate: 0, burst: 1 };
    c.tick = Duration::from_millis(50);
    c
}

pub fn network() -> NetworkId {
    NetworkId::from_name("signal tests")
}

pub fn node(seed: u8, pool: PoolConfig, config: SignalConfig) -> SignalNode {
    SignalNode::start(
        SecretKey::from_seed([seed; 32]),
        network(),
        pool,
        config,
        Arc::new(SystemClock),
    )
    .expect("start signal node")
}

/// Runs `f` with a hard time limit so that a hung broker cannot hang the test run.
pub async fn bounded<F: std::future::Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"))
}

/// A plain MQTT client outside keywire: watches a topic and publishes arbitrary bytes, as an
/// eavesdropper or attacker with access to a broker would.
pub struct RawClient {
    client: rumqttc::AsyncClient,
    received: tokio::sync::mpsc::Receiver<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawClient {
    /// Connects to the broker on `port`, subscribed to `topic`; returns once subscribed.
    pub async fn connect(port: u16, topic: &str) -> Self {
        let id = format!("raw-{:016x}", rand::random::<u64>());
        let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
        client
            .subscribe(topic, rumqttc::QoS::AtMostOnce)
            .await
            .expect("queue subscribe");
        let (tx, received) = tokio::sync::mpsc::channel(1024);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let task = tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                match event {
                    rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(());
                        }
                    }
                    rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                        let _ = tx.try_send(p.payload.to_vec());
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), ready_rx)
            .await
            .expect("raw client subscribed in time")
            .expect("raw client task alive");
        Self {
            client,
            received,
            task,
        }
    }

    /// The next message seen on the topic.
    pub async fn next(&mut self) -> Vec<u8> {
        tokio::time::timeout(Duration::from_secs(5), self.received.recv())
            .await
            .expect("a message on the watched topic")
            .expect("raw client alive")
    }

    pub async fn publish(&self, topic: &str, bytes: Vec<u8>) {
        self.client
            .publish(topic, rumqttc::QoS::AtMostOnce, false, bytes)
            .await
            .expect("queue publish");
    }
}

impl Drop for RawClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The MQTT topic `node` listens on in the test network.
pub fn topic_of(node: &keywire::NodeId) -> String {
    keywire::proto::signal::SignalTopic::new(&network(), node).mqtt_topic()
}

/// Waits until `f` holds, polling; panics with `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
