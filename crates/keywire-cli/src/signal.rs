//! `keywire signal listen|send`: small signed, encrypted messages by key through MQTT brokers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use keywire::signal::{MessageType, PoolConfig, SendReport, SignalConfig, SignalNode, SystemClock};
use keywire::NodeId;

use crate::node::{Compat, NodeOptions};
use crate::output;

#[derive(clap::Args, Debug)]
pub struct PoolArgs {
    /// Brokers, comma-separated host:port (IPv6 addresses in brackets). Both peers must share at
    /// least the pool (or pass hints).
    #[arg(long, value_name = "LIST", required_unless_present_any = ["pool", "public"])]
    brokers: Option<String>,
    /// A pool file (TOML: one "broker" table per broker, with host, port, family, weight).
    #[arg(long, value_name = "PATH")]
    pool: Option<PathBuf>,
    /// Use the public test brokers (opt-in: their operators see addresses, topics, sizes and
    /// timing; see docs/mqtt-signalling.md).
    #[arg(long)]
    public: bool,
}

/// The brokers of a `host:port,…` list and of a pool file, together.
pub fn pool_of(list: Option<&str>, file: Option<&std::path::Path>) -> anyhow::Result<PoolConfig> {
    let mut pool = PoolConfig::new();
    if let Some(list) = list {
        pool = PoolConfig::from_list(list)?;
    }
    if let Some(path) = file {
        for b in PoolConfig::from_toml_file(path)?.brokers() {
            pool = pool.with(b.clone());
        }
    }
    Ok(pool)
}

impl PoolArgs {
    pub fn config(&self) -> anyhow::Result<PoolConfig> {
        let mut pool = pool_of(self.brokers.as_deref(), self.pool.as_deref())?;
        if self.public {
            for b in PoolConfig::public().brokers() {
                pool = pool.with(b.clone());
            }
        }
        if pool.brokers().is_empty() {
            bail!("the broker pool is empty");
        }
        Ok(pool)
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum SignalCommand {
    /// Listen on this node's topic and print every message received.
    Listen(ListenArgs),
    /// Send one message to a node; exits 0 only if it acknowledged.
    Send(SendArgs),
}

#[derive(clap::Args, Debug)]
pub struct ListenArgs {
    #[command(flatten)]
    pool: PoolArgs,
    /// Exit after this many messages (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Speak another network's format: `sidewire` listens as this node's sidewire key (see
    /// `keywire id --compat sidewire`) on every broker of the pool.
    #[arg(long, value_enum)]
    compat: Option<Compat>,
}

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    pool: PoolArgs,
    /// The destination's node id (kw1...), or with `--compat sidewire` its 66-hex key.
    node_id: String,
    /// The message text.
    text: String,
    /// Seconds to wait for the acknowledgement.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Brokers the destination advertised, tried first (comma-separated host:port).
    #[arg(long, value_name = "LIST")]
    hint: Option<String>,
    /// Speak another network's format: `sidewire` sends as this node's sidewire key, on every
    /// broker of the pool (ASCII text only; the same text at most once per 140 s).
    #[arg(long, value_enum)]
    compat: Option<Compat>,
}

pub async fn run(opts: &NodeOptions, command: &SignalCommand) -> anyhow::Result<()> {
    match command {
        SignalCommand::Listen(args) if args.compat == Some(Compat::Sidewire) => {
            crate::sidewire::listen(opts, args.pool.config()?, args.count).await
        }
        SignalCommand::Send(args) if args.compat == Some(Compat::Sidewire) => {
            let pool = args.pool.config()?;
            if args.hint.is_some() {
                bail!("--hint is not used with --compat sidewire: every broker of the pool is");
            }
            crate::sidewire::send(opts, pool, &args.node_id, &args.text, args.timeout).await
        }
        SignalCommand::Listen(args) => listen(opts, args).await,
        SignalCommand::Send(args) => send(opts, args).await,
    }
}

fn start(opts: &NodeOptions, pool: PoolConfig, config: SignalConfig) -> anyhow::Result<SignalNode> {
    let (key, _) = opts.secret_key()?;
    // The system clock, chosen explicitly: envelope timestamps are checked within ±2 minutes.
    SignalNode::start(key, opts.network(), pool, config, Arc::new(SystemClock))
        .context("cannot start signalling")
}

async fn listen(opts: &NodeOptions, args: &ListenArgs) -> anyhow::Result<()> {
    let node = start(opts, args.pool.config()?, SignalConfig::default())?;
    let up = node.wait_subscribed(1, Duration::from_secs(10)).await;
    if up == 0 {
        bail!("could not subscribe at any broker of the pool");
    }
    let brokers: Vec<String> = node
        .own_brokers()
        .iter()
        .filter(|(_, up)| *up)
        .map(|(s, _)| s.id().to_string())
        .collect();
    if opts.json {
        output::event(serde_json::json!({
            "event": "listening", "node_id": node.node_id().to_string(), "brokers": brokers,
        }));
    } else {
        eprintln!("listening as {} at {}", node.node_id(), brokers.join(", "));
    }
    let mut received = 0u64;
    while let Some(m) = node.recv().await {
        let text = String::from_utf8_lossy(&m.payload);
        if opts.json {
            let kind = match m.kind {
                MessageType::Control => "control",
                _ => "data",
            };
            output::line(
                &serde_json::json!({
                    "from": m.from.to_string(),
                    "kind": kind,
                    "payload": text,
                    "timestamp_ms": m.timestamp.0,
                    "broker": m.broker.to_string(),
                })
                .to_string(),
            );
        } else {
            output::line(&format!("{}: {text}", m.from));
        }
        received += 1;
        if args.count.is_some_and(|n| received >= n) {
            // Let the acknowledgement of the last message leave before closing.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Ok(());
        }
    }
    Ok(())
}

async fn send(opts: &NodeOptions, args: &SendArgs) -> anyhow::Result<()> {
    let dest: NodeId = args.node_id.parse()?;
    let mut config = SignalConfig::default();
    config.send_timeout = Duration::from_secs(args.timeout);
    let node = start(opts, args.pool.config()?, config)?;
    if let Some(list) = &args.hint {
        node.add_hints(dest, PoolConfig::from_list(list)?.brokers());
    }
    // Our own subscription carries the acknowledgement back; give it a moment to be up.
    node.wait_subscribed(1, Duration::from_secs(5)).await;
    let report = node.send(dest, args.text.as_bytes()).await?;
    print_send_report(opts, &report, args.timeout)
}

/// Prints how a send went; an error (exit code 1) if it was not acknowledged.
pub fn print_send_report(
    opts: &NodeOptions,
    report: &SendReport,
    timeout_secs: u64,
) -> anyhow::Result<()> {
    let via = report.via.as_ref().map(|b| b.to_string());
    let elapsed_ms = report.elapsed.as_secs_f64() * 1000.0;
    if opts.json {
        output::event(serde_json::json!({
            "event": "sent",
            "acked": report.acked,
            "via": via,
            "brokers": report.brokers_tried,
            "elapsed_ms": elapsed_ms,
        }));
    } else if report.acked {
        eprintln!(
            "acknowledged via {} in {elapsed_ms:.1} ms",
            via.unwrap_or_default()
        );
    }
    if !report.acked {
        bail!("not acknowledged within {timeout_secs} s");
    }
    Ok(())
}
