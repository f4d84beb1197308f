//! The sidewire part of `keywire bench signal`: send→ACK latency of a sidewire 0.1.9 peer pair
//! (the baseline) beside keywire's compatibility mode talking to a sidewire peer, both ways —
//! same run, same brokers. Skipped, with a line saying so, where sidewire is not installed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use keywire::signal::sidewire::{SidewireConfig, SidewireNode, SidewireSecretKey};
use keywire::signal::{PoolConfig, SystemClock};
use serde_json::json;

use crate::bench_signal::{emit, percentile, round};
use crate::output;
use crate::sidewire_peer::{venv_python, PeerMode, SidewirePeer};

/// Times (ms) from a `done` event's `send_ack_ms`, sorted; an error if any send failed.
fn times_of(done: &serde_json::Value, sends: usize) -> anyhow::Result<Vec<f64>> {
    let mut times: Vec<f64> = done["send_ack_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    if times.len() != sends {
        bail!(
            "the sidewire sender got {} of {sends} ACKs: {done}",
            times.len()
        );
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

fn report(name: &str, times: &[f64], baseline: Option<&[f64]>) {
    for (label, p) in [("p50", 0.5), ("p99", 0.99)] {
        emit(
            &format!("signal.sidewire.{label}_ms.{name}"),
            percentile(times, p),
            "ms",
            baseline.map(|b| percentile(b, p)),
            json!({"sends": times.len(), "baseline_is": "sidewire 0.1.9 peer pair, same brokers"}),
        );
    }
}

/// Runs the comparison on `pool` (whose brokers must all be up); `sends` sequential sends each.
pub async fn run(brokers: &str, pool: &PoolConfig, sends: usize) -> anyhow::Result<()> {
    let python = match venv_python() {
        Ok(p) => p,
        Err(e) => {
            output::line(
                &json!({"bench": "signal.sidewire", "skipped": e.to_string()}).to_string(),
            );
            return Ok(());
        }
    };
    let node = Arc::new(SidewireNode::start(
        SidewireSecretKey::generate(&mut rand::rngs::OsRng),
        pool.clone(),
        SidewireConfig::default(),
        Arc::new(SystemClock),
    )?);
    let all = node.connections().len();
    if node.wait_subscribed(all, Duration::from_secs(10)).await < all {
        bail!("the sidewire-compatible node did not subscribe at every broker");
    }
    // Whatever reaches the node is acknowledged by it; the bench only drains its queue.
    let drain = {
        let node = node.clone();
        tokio::spawn(async move { while node.recv().await.is_some() {} })
    };
    let listener = SidewirePeer::spawn(&python, brokers, None, 0, PeerMode::Listen).await?;

    // Baseline: sidewire to sidewire.
    let mut sender = SidewirePeer::spawn(
        &python,
        brokers,
        Some(&listener.key),
        sends,
        PeerMode::Bench,
    )
    .await?;
    sender.go().await?;
    let pair = times_of(&sender.done().await?, sends)?;
    sender.finish().await?;

    // sidewire sends, keywire acknowledges.
    let mut sender = SidewirePeer::spawn(
        &python,
        brokers,
        Some(node.public_key()),
        sends,
        PeerMode::Bench,
    )
    .await?;
    sender.go().await?;
    let to_keywire = times_of(&sender.done().await?, sends)?;
    sender.finish().await?;

    // keywire sends, sidewire acknowledges.
    let tag: u32 = rand::random();
    let mut from_keywire = Vec::with_capacity(sends);
    for i in 0..sends {
        let r = node
            .send(&listener.key, format!("kw bench {tag:08x} {i}").as_bytes())
            .await?;
        if !r.acked {
            bail!("keywire -> sidewire send {i} was not acknowledged");
        }
        from_keywire.push(r.elapsed.as_secs_f64() * 1000.0);
    }
    from_keywire.sort_by(f64::total_cmp);
    let listener_brokers = listener.subscribed.clone();
    listener.finish().await?;
    drain.abort();

    report("sidewire_pair", &pair, None);
    report("sidewire_to_keywire", &to_keywire, Some(&pair));
    report("keywire_to_sidewire", &from_keywire, Some(&pair));
    let m = node.metrics();
    output::line(
        &json!({"bench": "signal.sidewire.keywire_node", "acks_duplicate_ignored": m.acks_duplicate,
                "sidewire_listener_subscribed_at": listener_brokers,
                "duplicates_reacked": m.duplicates, "publishes": m.publishes,
                "publishes_per_send": round(m.publishes as f64 / (2 * sends) as f64)})
        .to_string(),
    );
    Ok(())
}
