//! `keywire bench <name>`: keywire against its baseline in the same run, one JSON object per
//! result (DESIGN.md, Benchmarks).

mod connect;
mod cpu;
mod delay_proxy;
mod dht;
mod natlab;
mod relay;
mod relay_switch;
mod relay_tcp;
mod stats;
mod throughput;

use clap::Subcommand;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// One stream over loopback: keywire (one-port socket, virtual addresses) against plain
    /// quinn with identical TLS, transport settings and socket buffers; ABBA pairs.
    Throughput(throughput::Args),
    /// Time from connect() to the first echoed byte against plain quinn (ABBA), and round trips
    /// counted through an in-process delaying proxy.
    Connect(connect::Args),
    /// The long NAT-lab run: every router kind, many trials, delays and loss (needs root).
    Natlab(natlab::Args),
    /// Signalling send-to-ACK latency and throughput through a local mosquitto pool.
    Signal(crate::bench_signal::BenchSignalArgs),
    /// The DHT: simulated under churn (success, hops, messages, maintenance bytes) and
    /// resolution on real loopback sockets.
    Dht(dht::Args),
    /// Through a gate: relayed throughput against direct (ABBA), TCP-relayed against
    /// UDP-relayed (ABBA), time to first byte in RTTs
    /// behind a delaying proxy, and time from relayed start to direct.
    Relay(relay::Args),
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match &args.bench {
        Bench::Throughput(a) => throughput::run(a).await,
        Bench::Connect(a) => connect::run(a).await,
        Bench::Natlab(a) => natlab::run(a).await,
        Bench::Signal(a) => crate::bench_signal::run(a).await,
        Bench::Dht(a) => dht::run(a).await,
        Bench::Relay(a) => relay::run(a).await,
    }
}

/// Prints one result line.
pub fn emit(bench: &str, value: f64, unit: &str, baseline: Option<f64>, extra: serde_json::Value) {
    let ratio = baseline.filter(|b| *b != 0.0).map(|b| value / b);
    let mut line = serde_json::json!({
        "bench": bench, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio,
    });
    if let (Some(obj), Some(more)) = (line.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    crate::output::line(&line.to_string());
}

/// The endpoints' shared test identity settings: a network of the bench's own, loopback only.
pub fn config(alpn: &[u8]) -> keywire::EndpointConfig {
    keywire::EndpointConfig::new(keywire::SecretKey::generate(&mut rand::rngs::OsRng))
        .bind_addr("127.0.0.1:0".parse().expect("literal address"))
        .network(keywire::NetworkId::from_name("keywire bench"))
        .alpn(alpn.to_vec())
}

/// The plain-quinn baseline: a server and a client configured exactly like keywire endpoints
/// (same TLS, transport settings and socket buffers), on plain UDP sockets.
pub struct PlainPair {
    pub server: keywire::quinn::Endpoint,
    pub client: keywire::quinn::Endpoint,
    dial: keywire::quinn::ClientConfig,
    server_node: keywire::NodeId,
}

impl PlainPair {
    pub fn new(alpn: &[u8]) -> anyhow::Result<Self> {
        use keywire::bench_support::{plain_client_config, plain_quinn_endpoint};
        let server_config = config(alpn);
        let client_config = config(alpn);
        Ok(Self {
            server: plain_quinn_endpoint(&server_config)?,
            client: plain_quinn_endpoint(&client_config)?,
            dial: plain_client_config(&client_config, alpn)?,
            server_node: server_config.secret_key.node_id(),
        })
    }

    /// Dials the server at `addr` (its own address, or a proxy in front of it).
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
    ) -> anyhow::Result<keywire::quinn::Connection> {
        keywire::bench_support::plain_connect(
            &self.client,
            self.dial.clone(),
            addr,
            &self.server_node,
        )
        .await
        .map_err(|e| anyhow::anyhow!("plain quinn connect: {e}"))
    }
}
