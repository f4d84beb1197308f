//! `keywire dht lookup <node-id>` and `keywire dht status`: join the DHT for a moment, ask,
//! print. `keywire dht serve`: run a DHT node in server mode (a bootstrap node) until
//! interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use keywire::dht::{Dht, DhtConfig, DhtStatus, ModeSetting};
use keywire::proto::kad::KadConfig;
use keywire::NodeId;

use crate::node::NodeOptions;
use crate::output;

const ALPN: &[u8] = b"keywire-dht-cli/1";

#[derive(clap::Args, Debug)]
pub struct DhtArgs {
    #[command(subcommand)]
    command: DhtCommand,
}

#[derive(clap::Subcommand, Debug)]
enum DhtCommand {
    /// Find a node's freshest signed address record.
    Lookup {
        /// The node id (kw1...).
        node_id: String,
        #[command(flatten)]
        join: JoinArgs,
    },
    /// Join, then show this node's DHT state (mode, observed address, table, counters).
    Status {
        #[command(flatten)]
        join: JoinArgs,
    },
    /// Run a DHT node in server mode (e.g. a bootstrap node) until SIGINT or SIGTERM.
    Serve {
        /// Address to serve on (UDP).
        #[arg(long, value_name = "ADDR")]
        bind: SocketAddr,
        /// A known DHT node to join through (repeatable; none: this is the first node).
        #[arg(long, value_name = "ADDR")]
        bootstrap: Vec<SocketAddr>,
    },
}

#[derive(clap::Args, Debug)]
struct JoinArgs {
    /// A known DHT node or gate (repeatable). Without one, the saved routing table is used.
    #[arg(long, value_name = "ADDR")]
    bootstrap: Vec<SocketAddr>,
    /// Local address to bind.
    #[arg(long, default_value = "[::]:0")]
    bind: SocketAddr,
    /// Routing-table file (default: `$DATA_DIR/keywire/dht-table.bin`).
    #[arg(long, value_name = "PATH")]
    table: Option<PathBuf>,
    /// Seconds to wait for the join before giving up.
    #[arg(long, default_value_t = 10)]
    wait: u64,
}

pub async fn run(opts: &NodeOptions, args: &DhtArgs) -> anyhow::Result<()> {
    match &args.command {
        DhtCommand::Lookup { node_id, join } => {
            let key: NodeId = node_id.parse().context("node id")?;
            let (dht, endpoint) = start(opts, join).await?;
            let outcome = dht.lookup_detailed(key).await?;
            dht.shutdown().await;
            endpoint.close().await;
            let Some(record) = outcome.record else {
                anyhow::bail!(
                    "no record for {key} ({} rounds, {} requests)",
                    outcome.rounds,
                    outcome.messages
                );
            };
            let addrs: Vec<String> = record.addrs.iter().map(|a| a.to_string()).collect();
            let gates: Vec<serde_json::Value> = record
                .gates
                .iter()
                .map(|g| serde_json::json!({"node_id": g.node_id.to_string(), "addr": g.addr.to_string()}))
                .collect();
            if opts.json {
                output::line(
                    &serde_json::json!({
                        "node_id": record.node_id.to_string(), "seq": record.seq,
                        "expires_unix_ms": record.expires.as_unix_millis(),
                        "addrs": addrs, "gates": gates,
                        "rounds": outcome.rounds, "requests": outcome.messages,
                    })
                    .to_string(),
                );
            } else {
                output::line(&format!("node id: {}", record.node_id));
                output::line(&format!("sequence: {}", record.seq));
                for addr in addrs {
                    output::line(&format!("address: {addr}"));
                }
                for gate in &record.gates {
                    output::line(&format!("gate: {} at {}", gate.node_id, gate.addr));
                }
                output::line(&format!(
                    "found in {} rounds, {} requests",
                    outcome.rounds, outcome.messages
                ));
            }
            Ok(())
        }
        DhtCommand::Status { join } => {
            let (dht, endpoint) = start(opts, join).await?;
            let status = dht.status().await?;
            dht.shutdown().await;
            endpoint.close().await;
            print_status(opts.json, &status);
            Ok(())
        }
        DhtCommand::Serve { bind, bootstrap } => serve(opts, *bind, bootstrap).await,
    }
}

/// Serves the DHT on `bind` in server mode until SIGINT or SIGTERM (stdin is not read). The
/// routing table is not saved: a restarted server bootstraps again.
async fn serve(
    opts: &NodeOptions,
    bind: SocketAddr,
    bootstrap: &[SocketAddr],
) -> anyhow::Result<()> {
    let endpoint = opts.endpoint(bind, ALPN)?;
    let config = DhtConfig {
        kad: KadConfig {
            mode: ModeSetting::Server,
            ..KadConfig::default()
        },
        bootstrap: bootstrap.to_vec(),
        routing_table_file: None,
    };
    let dht = Dht::spawn(&endpoint, config);
    let node_id = endpoint.node_id().to_string();
    let addr = endpoint.local_addr()?.to_string();
    if opts.json {
        output::line(
            &serde_json::json!({ "event": "dht-serving", "node_id": node_id, "addr": addr })
                .to_string(),
        );
    } else {
        output::line(&format!("keywire DHT node {node_id} serving on {addr}"));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    dht.shutdown().await;
    endpoint.close().await;
    Ok(())
}

fn default_table() -> anyhow::Result<PathBuf> {
    let dir = dirs::data_dir().context("no data directory; pass --table")?;
    Ok(dir.join("keywire").join("dht-table.bin"))
}

async fn start(opts: &NodeOptions, join: &JoinArgs) -> anyhow::Result<(Dht, keywire::Endpoint)> {
    let endpoint = opts.endpoint(join.bind, ALPN)?;
    let table = match &join.table {
        Some(path) => path.clone(),
        None => default_table()?,
    };
    if join.bootstrap.is_empty() && !table.exists() {
        anyhow::bail!(
            "no --bootstrap address and no saved routing table at {}",
            table.display()
        );
    }
    let config = DhtConfig {
        bootstrap: join.bootstrap.clone(),
        routing_table_file: Some(table),
        ..DhtConfig::default()
    };
    let dht = Dht::spawn(&endpoint, config);
    let deadline = Instant::now() + Duration::from_secs(join.wait);
    while !dht.status().await?.joined {
        if Instant::now() >= deadline {
            anyhow::bail!("could not join the DHT within {} s", join.wait);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((dht, endpoint))
}

fn print_status(json: bool, s: &DhtStatus) {
    let k = &s.kad;
    let mode = format!("{:?}", k.mode).to_lowercase();
    let observed = k.observed_addr.map(|a| a.to_string());
    if json {
        output::line(
            &serde_json::json!({
                "node_id": k.node_id.to_string(), "mode": mode, "observed_addr": observed,
                "joined": s.joined, "contacts": k.contacts, "records_held": k.records_held,
                "subscriptions_held": k.subscriptions_held, "lookups": k.lookups,
                "sent_messages": k.stats.sent_messages, "sent_bytes": k.stats.sent_bytes,
                "received_messages": k.stats.received_messages,
                "received_bytes": k.stats.received_bytes, "timeouts": k.stats.timeouts,
                "malformed": k.stats.malformed, "rate_limited": k.stats.rate_limited,
            })
            .to_string(),
        );
    } else {
        output::line(&format!("node id: {}", k.node_id));
        output::line(&format!("mode: {mode}"));
        output::line(&format!(
            "observed address: {}",
            observed.unwrap_or_else(|| "unknown".into())
        ));
        output::line(&format!("routing table: {} contacts", k.contacts));
        output::line(&format!(
            "held for others: {} records, {} subscriptions",
            k.records_held, k.subscriptions_held
        ));
        output::line(&format!(
            "sent {} datagrams ({} B), received {} ({} B), {} timeouts",
            k.stats.sent_messages,
            k.stats.sent_bytes,
            k.stats.received_messages,
            k.stats.received_bytes,
            k.stats.timeouts
        ));
    }
}
