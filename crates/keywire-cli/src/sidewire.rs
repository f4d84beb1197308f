//! `keywire signal listen|send --compat sidewire`: talk to peers of a sidewire 0.1.9 network.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use keywire::signal::sidewire::{SidewireConfig, SidewireNode, SidewirePublicKey};
use keywire::signal::{PoolConfig, SystemClock};

use crate::node::NodeOptions;
use crate::output;

fn start(
    opts: &NodeOptions,
    pool: PoolConfig,
    config: SidewireConfig,
) -> anyhow::Result<SidewireNode> {
    let (key, _) = opts.sidewire_key()?;
    // The system clock, chosen explicitly: packet timestamps are checked within ±2 minutes.
    SidewireNode::start(key, pool, config, Arc::new(SystemClock))
        .context("cannot start the sidewire node")
}

fn up_brokers(node: &SidewireNode) -> Vec<String> {
    node.connections()
        .into_iter()
        .filter(|(_, up)| *up)
        .map(|(id, _)| id.to_string())
        .collect()
}

pub async fn listen(
    opts: &NodeOptions,
    pool: PoolConfig,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let node = start(opts, pool, SidewireConfig::default())?;
    if node.wait_subscribed(1, Duration::from_secs(10)).await == 0 {
        bail!("could not subscribe at any broker of the pool");
    }
    // sidewire peers may listen on any of the brokers: give the others a moment too.
    let all = node.connections().len();
    node.wait_subscribed(all, Duration::from_secs(2)).await;
    let brokers = up_brokers(&node);
    if opts.json {
        output::event(serde_json::json!({
            "event": "listening", "sidewire_key": node.public_key().to_string(), "brokers": brokers,
        }));
    } else {
        eprintln!(
            "listening as sidewire key {} at {}",
            node.public_key(),
            brokers.join(", ")
        );
    }
    let mut received = 0u64;
    while let Some(m) = node.recv().await {
        let text = String::from_utf8_lossy(&m.message);
        if opts.json {
            output::line(
                &serde_json::json!({
                    "from": m.from.to_string(),
                    "payload": text,
                    "timestamp_s": m.timestamp_secs,
                    "broker": m.broker.to_string(),
                })
                .to_string(),
            );
        } else {
            output::line(&format!("{}: {text}", m.from));
        }
        received += 1;
        if count.is_some_and(|n| received >= n) {
            // Let the acknowledgement of the last message leave before closing.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Ok(());
        }
    }
    Ok(())
}

pub async fn send(
    opts: &NodeOptions,
    pool: PoolConfig,
    dest: &str,
    text: &str,
    timeout: u64,
) -> anyhow::Result<()> {
    let dest: SidewirePublicKey = dest.parse().context("the destination")?;
    let mut config = SidewireConfig::default();
    config.signal.send_timeout = Duration::from_secs(timeout);
    let node = start(opts, pool, config)?;
    // The ACK comes back on the broker the message went through, where our own subscription
    // must be up: publishing waits for connections to be up (subscribed) anyway.
    node.wait_subscribed(1, Duration::from_secs(5)).await;
    let report = node.send(&dest, text.as_bytes()).await?;
    crate::signal::print_send_report(opts, &report, timeout)
}
