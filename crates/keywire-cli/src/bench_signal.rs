//! `keywire bench signal`: send-to-ACK latency, throughput and delivery through a local pool of
//! real mosquitto brokers, each measured beside a baseline in the same run.
//!
//! Baselines: the loopback MQTT round trip of a bare client (publish to a topic it subscribes
//! to, through one broker) gives the latency target `2 × RTT + 5 ms` (a send-to-ACK
//! crosses a broker twice); bare QoS 0 publish→subscribe throughput through one broker, with
//! no crypto and no acknowledgements, is the ceiling for messages per second.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keywire::signal::{PoolConfig, RateCap, SignalConfig, SignalNode, SystemClock};
use keywire::{NetworkId, SecretKey};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use serde_json::json;

use crate::output;

#[derive(clap::Args, Debug)]
pub struct BenchSignalArgs {
    /// Sequential sends timed for the warm latency figures.
    #[arg(long, default_value_t = 300)]
    latency_sends: usize,
    /// Messages per throughput round.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Sends in flight at once in the throughput rounds.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Throughput rounds (keywire and baseline alternate; the median ratio is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Messages sent with 2 of 5 brokers dead.
    #[arg(long, default_value_t = 200)]
    dead_sends: usize,
    /// Sequential sends per direction in the sidewire comparison (where sidewire is installed).
    #[arg(long, default_value_t = 30)]
    sidewire_sends: usize,
}

/// A mosquitto process on a free loopback port, killed on drop.
pub(crate) struct LocalBroker {
    /// A spelling of loopback of its own: sidewire keys brokers by host string.
    pub(crate) host: String,
    pub(crate) port: u16,
    child: Option<Child>,
    config: PathBuf,
}

impl LocalBroker {
    fn start(binary: &PathBuf, host: &str) -> anyhow::Result<Self> {
        let port = TcpListener::bind((host, 0))?.local_addr()?.port();
        let config = std::env::temp_dir().join(format!("kw-bench-mosquitto-{port}.conf"));
        std::fs::write(
            &config,
            format!(
                "listener {port} {host}\nallow_anonymous true\npersistence false\nlog_dest none\n"
            ),
        )?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start mosquitto")?;
        let broker = Self {
            host: host.to_owned(),
            port,
            child: Some(child),
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((host, port)).is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto on port {port} did not start");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(broker)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.config);
    }
}

fn mosquitto_binary() -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/usr/sbin", "/usr/bin", "/usr/local/sbin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    dirs.into_iter()
        .map(|d| d.join("mosquitto"))
        .find(|p| p.exists())
        .context("`mosquitto` not found (apt-get install mosquitto): the bench runs real brokers")
}

pub(crate) fn emit(
    bench: &str,
    value: f64,
    unit: &str,
    baseline: Option<f64>,
    extra: serde_json::Value,
) {
    let ratio = baseline.filter(|b| *b > 0.0).map(|b| value / b);
    let mut obj = json!({ "bench": bench, "value": round(value), "unit": unit,
        "baseline": baseline.map(round), "ratio": ratio.map(round) });
    if let (Some(o), Some(e)) = (obj.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    output::line(&obj.to_string());
}

pub(crate) fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bench_config() -> SignalConfig {
    let mut c = SignalConfig::default();
    // Local brokers: the public-broker politeness caps would measure the caps, not the path.
    c.sender_rate = RateCap { rate: 0, burst: 1 };
    c.broker_rate = RateCap { rate: 0, burst: 1 };
    c.send_timeout = Duration::from_secs(5);
    c.replace_after = Duration::from_secs(2);
    c
}

fn node(seed: u8, pool: &PoolConfig) -> anyhow::Result<SignalNode> {
    let key = SecretKey::from_seed([seed; 32]);
    let network = NetworkId::from_name("keywire bench signal");
    Ok(SignalNode::start(
        key,
        network,
        pool.clone(),
        bench_config(),
        Arc::new(SystemClock),
    )?)
}

/// A bare MQTT client subscribed to `topic` (the baseline's instrument).
async fn raw_client(
    broker: &LocalBroker,
    topic: &str,
) -> anyhow::Result<(AsyncClient, tokio::sync::mpsc::Receiver<()>)> {
    let mut options = MqttOptions::new(
        format!("bench-{:x}", rand::random::<u64>()),
        broker.host.clone(),
        broker.port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 4096);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    client.subscribe(topic, QoS::AtMostOnce).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(65_536);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Event::Incoming(Packet::Publish(_)) => {
                    let _ = tx.try_send(());
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), ready_rx).await??;
    Ok((client, rx))
}

/// Median publish→receive loop time of a bare client through one broker, in ms.
async fn mqtt_rtt_ms(broker: &LocalBroker, samples: usize) -> anyhow::Result<f64> {
    let (client, mut rx) = raw_client(broker, "bench/rtt").await?;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        client
            .publish("bench/rtt", QoS::AtMostOnce, false, vec![0u8; 200])
            .await?;
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(percentile(&times, 0.5))
}

/// Bare QoS 0 messages per second, publisher to subscriber through one broker.
async fn mqtt_throughput(broker: &LocalBroker, n: usize) -> anyhow::Result<f64> {
    let topic = format!("bench/tp/{:x}", rand::random::<u64>());
    let (_sub, mut rx) = raw_client(broker, &topic).await?;
    let (publisher, _) = raw_client(broker, "bench/unused").await?;
    let t = Instant::now();
    let receive = async {
        for _ in 0..n {
            rx.recv().await;
        }
    };
    let send = async {
        for _ in 0..n {
            let _ = publisher
                .publish(topic.clone(), QoS::AtMostOnce, false, vec![0u8; 250])
                .await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(receive, send)
    })
    .await?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Acknowledged keywire messages per second, one way, `concurrency` in flight.
async fn signal_throughput(
    a: &Arc<SignalNode>,
    b: &Arc<SignalNode>,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<(f64, usize)> {
    let drain = {
        let b = b.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                if b.recv().await.is_none() {
                    break;
                }
            }
        })
    };
    let t = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (a, next, dest) = (a.clone(), next.clone(), b.node_id());
        workers.spawn(async move {
            let mut acked = 0;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                if a.send(dest, &[7u8; 64])
                    .await
                    .map(|r| r.acked)
                    .unwrap_or(false)
                {
                    acked += 1;
                }
            }
            acked
        });
    }
    let mut acked = 0;
    while let Some(r) = workers.join_next().await {
        acked += r?;
    }
    let rate = acked as f64 / t.elapsed().as_secs_f64();
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    Ok((rate, acked))
}

pub async fn run(args: &BenchSignalArgs) -> anyhow::Result<()> {
    let binary = mosquitto_binary()?;
    let mut brokers = (1..=5)
        .map(|i| LocalBroker::start(&binary, &format!("127.0.0.{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pool = brokers
        .iter()
        .fold(PoolConfig::new(), |p, b| p.broker(&b.host, b.port));
    let rtt = mqtt_rtt_ms(&brokers[0], 200).await?;
    emit("signal.mqtt_rtt_ms.loopback", rtt, "ms", None, json!({}));

    // Cold: a fresh sender node (new key, no connections) to a subscribed receiver, from start
    // to the first acknowledgement; the median of several, beside a bare client's connect +
    // subscribe + one loop. The very first node of the process also pays one-time set-up
    // costs; it is reported on its own.
    let b = Arc::new(node(2, &pool)?);
    b.wait_subscribed(3, Duration::from_secs(10)).await;
    let mut colds = Vec::new();
    let mut raw_colds = Vec::new();
    for seed in 100..106u8 {
        let t = Instant::now();
        let fresh = node(seed, &pool)?;
        let report = fresh.send(b.node_id(), b"cold").await?;
        if !report.acked {
            bail!("a cold send was not acknowledged");
        }
        colds.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = b.recv().await;
        let t = Instant::now();
        mqtt_rtt_ms(&brokers[1], 1).await?;
        raw_colds.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let first_in_process = colds.remove(0);
    raw_colds.remove(0);
    colds.sort_by(f64::total_cmp);
    raw_colds.sort_by(f64::total_cmp);
    emit(
        "signal.first_ack_ms.cold_first_in_process",
        first_in_process,
        "ms",
        None,
        json!({}),
    );
    emit(
        "signal.first_ack_ms.cold",
        percentile(&colds, 0.5),
        "ms",
        Some(percentile(&raw_colds, 0.5)),
        json!({"samples": colds.len(), "baseline_is": "bare MQTT connect+subscribe+one loop"}),
    );
    let a = Arc::new(node(1, &pool)?);

    // Warm latency.
    for _ in 0..20 {
        a.send(b.node_id(), b"warm-up").await?;
        let _ = b.recv().await;
    }
    let mut times = Vec::with_capacity(args.latency_sends);
    for _ in 0..args.latency_sends {
        let r = a.send(b.node_id(), &[1u8; 64]).await?;
        if !r.acked {
            bail!("a warm send was not acknowledged");
        }
        times.push(r.elapsed.as_secs_f64() * 1000.0);
        let _ = b.recv().await;
    }
    times.sort_by(f64::total_cmp);
    let target = 2.0 * rtt + 5.0;
    let extra = json!({"baseline_is": "issue 8 target 2*mqtt_rtt+5ms"});
    emit(
        "signal.p50_ms.warm",
        percentile(&times, 0.5),
        "ms",
        Some(target),
        extra.clone(),
    );
    emit(
        "signal.p99_ms.warm",
        percentile(&times, 0.99),
        "ms",
        Some(target),
        extra,
    );

    // Throughput, alternating with the bare-MQTT baseline.
    let mut ratios = Vec::new();
    let mut rates = Vec::new();
    let mut bases = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let (rate, acked) = signal_throughput(&a, &b, args.messages, args.concurrency).await?;
        if acked < args.messages {
            bail!(
                "throughput round: only {acked} of {} acknowledged",
                args.messages
            );
        }
        let base = mqtt_throughput(&brokers[2], args.messages).await?;
        ratios.push(rate / base);
        rates.push(rate);
        bases.push(base);
    }
    ratios.sort_by(f64::total_cmp);
    rates.sort_by(f64::total_cmp);
    bases.sort_by(f64::total_cmp);
    emit(
        "signal.msgs_per_s.one_way",
        percentile(&rates, 0.5),
        "msg/s",
        Some(percentile(&bases, 0.5)),
        json!({"median_ratio": round(percentile(&ratios, 0.5)),
               "ratio_spread": [round(ratios[0]), round(ratios[ratios.len() - 1])],
               "concurrency": args.concurrency, "rounds": args.rounds,
               "baseline_is": "bare QoS0 pub->sub, no crypto, no acks"}),
    );
    drop(a);
    drop(b);

    // sidewire compatibility, on the same five brokers.
    let list: Vec<String> = brokers
        .iter()
        .map(|b| format!("{}:{}", b.host, b.port))
        .collect();
    crate::bench_signal_sidewire::run(&list.join(","), &pool, args.sidewire_sends).await?;

    // Two of five brokers dead from the start; fresh nodes.
    brokers[0].kill();
    brokers[3].kill();
    let b = Arc::new(node(4, &pool)?);
    b.wait_subscribed(1, Duration::from_secs(10)).await;
    let a = Arc::new(node(3, &pool)?);
    let (_, acked) = signal_throughput(&a, &b, args.dead_sends, 8).await?;
    let pct = 100.0 * acked as f64 / args.dead_sends as f64;
    emit(
        "signal.delivery_pct.dead2of5",
        pct,
        "%",
        Some(100.0),
        json!({"sends": args.dead_sends}),
    );
    Ok(())
}
