//! `keywire bench dht`: the DHT under churn in the simulator (the same core real nodes run),
//! and resolution on a real-socket DHT of loopback nodes.
//!
//! There is no baseline implementation to run in the same run; each figure is reported with
//! the target in `target`.

use std::net::SocketAddr;
use std::time::Duration;

use keywire::dht::{Dht, DhtConfig, ModeSetting};
use keywire_sim::dht::{run as simulate, DhtScenario};

use super::emit;
use super::stats::median;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Simulated nodes (0 skips the simulation).
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Record lookups measured in the simulation.
    #[arg(long, default_value_t = 10_000)]
    lookups: usize,
    /// Fraction of the network replaced per hour.
    #[arg(long, default_value_t = 0.10)]
    churn: f64,
    /// Simulated warm-up, minutes.
    #[arg(long, default_value_t = 60)]
    warmup_min: u64,
    /// Simulated minutes over which the lookups are spread.
    #[arg(long, default_value_t = 30)]
    window_min: u64,
    /// Datagram loss on every simulated link.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Simulation seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Real nodes on loopback (127.N.0.1) for the resolution figure (0 skips it).
    #[arg(long, default_value_t = 50)]
    real_nodes: usize,
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    if args.nodes > 0 {
        simulated(args).await?;
    }
    if args.real_nodes > 0 {
        real_sockets(args.real_nodes).await?;
    }
    Ok(())
}

async fn simulated(args: &Args) -> anyhow::Result<()> {
    let mut scenario = DhtScenario::churn10(args.nodes, args.lookups);
    scenario.churn_per_hour = args.churn;
    scenario.warmup = Duration::from_secs(args.warmup_min * 60);
    scenario.lookup_window = Duration::from_secs(args.window_min * 60);
    scenario.loss = args.loss;
    scenario.seed = args.seed;
    let report = tokio::task::spawn_blocking(move || simulate(&scenario)).await?;
    let tag = format!(
        "n{}_churn{}",
        args.nodes,
        (args.churn * 100.0).round() as u64
    );
    let extra = |target: serde_json::Value| {
        serde_json::json!({"target": target, "lookups": report.lookups, "seed": args.seed,
                           "loss": args.loss, "detail": report.to_string()})
    };
    emit(
        &format!("dht.success.{tag}"),
        report.success_rate(),
        "fraction",
        None,
        extra(">= 0.999".into()),
    );
    emit(
        &format!("dht.hops_median.{tag}"),
        report.hops_median.into(),
        "rounds",
        None,
        extra("<= 4".into()),
    );
    emit(
        &format!("dht.hops_p99.{tag}"),
        report.hops_p99.into(),
        "rounds",
        None,
        extra(serde_json::Value::Null),
    );
    emit(
        &format!("dht.messages_per_lookup.{tag}"),
        report.messages_mean,
        "requests",
        None,
        extra(serde_json::Value::Null),
    );
    emit(
        &format!("dht.maintenance_bytes.{tag}"),
        report.maintenance_bytes_per_node_minute,
        "bytes/node/minute",
        None,
        extra("stated and bounded".into()),
    );
    let delivery = if report.pubsub_expected == 0 {
        0.0
    } else {
        report.pubsub_delivered as f64 / report.pubsub_expected as f64
    };
    emit(
        &format!("dht.pubsub_delivery.{tag}"),
        delivery,
        "fraction",
        None,
        extra(serde_json::Value::Null),
    );
    Ok(())
}

/// `n` nodes on 127.N.0.1, the first a server (a gate), the others finding out their
/// reachability; then every node resolves another's key.
async fn real_sockets(n: usize) -> anyhow::Result<()> {
    anyhow::ensure!((2..=250).contains(&n), "--real-nodes must be 2..=250");
    let mut nodes = Vec::new();
    let mut first: Option<SocketAddr> = None;
    for i in 1..=n {
        let config =
            super::config(b"keywire-bench/dht/1").bind_addr(format!("127.{i}.0.1:0").parse()?);
        let endpoint = keywire::Endpoint::bind(config)?;
        let addr = endpoint.local_addr()?;
        let mut dht_config = DhtConfig {
            bootstrap: first.into_iter().collect(),
            ..DhtConfig::default()
        };
        dht_config.kad.mode = if first.is_none() {
            ModeSetting::Server
        } else {
            ModeSetting::Auto
        };
        let dht = Dht::spawn(&endpoint, dht_config);
        dht.publish_record(vec![addr], vec![]).await?;
        first.get_or_insert(addr);
        nodes.push((endpoint, dht));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut ready = 0;
        for (_, dht) in &nodes {
            let s = dht.status().await?;
            if s.joined && s.own_record_seq.is_some() && s.kad.mode == keywire::dht::Mode::Server {
                ready += 1;
            }
        }
        if ready == n {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {ready}/{n} nodes ready after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rounds = Vec::new();
    let mut found = 0;
    for i in 0..n {
        let target = nodes[(i * 7 + 3) % n].0.node_id();
        if target == nodes[i].0.node_id() {
            continue;
        }
        let outcome = nodes[i].1.lookup_detailed(target).await?;
        found += usize::from(outcome.record.is_some());
        rounds.push(f64::from(outcome.rounds));
    }
    let lookups = rounds.len();
    emit(
        &format!("dht.resolve_rounds.loopback{n}"),
        median(&rounds),
        "round trips",
        None,
        serde_json::json!({"lookups": lookups, "found": found}),
    );
    for (endpoint, dht) in nodes {
        dht.shutdown().await;
        endpoint.close().await;
    }
    Ok(())
}
