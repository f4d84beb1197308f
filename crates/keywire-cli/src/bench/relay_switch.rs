//! Goodput after a path switch: does the congestion controller restart well on the new path?
//!
//! The caller speaks only IPv4 and the callee only IPv6, so the one direct path between them is
//! a [`DelayProxy`] the callee announces (RTT `--rtt-ms`); the gate, on `[::]`, relays without
//! delay. A bulk stream starts on the relayed connection at once; the path probes move it to the
//! direct path a few milliseconds later. The receiver timestamps every chunk; from the caller's
//! switch on, goodput is cut into windows of one direct RTT. Steady state is the median of
//! windows 40 to 60; recovery is the first window from which every window reaches 80% of it
//! (target: within 20 RTT). quinn's congestion events and losses after the switch are reported
//! with it (the new path's queue is the proxy's, 4096 datagrams). The baseline, in the same
//! run (its trials first, then the switch's): a fresh connection made straight over the same
//! direct path, measured the same way from its start.

use std::time::{Duration, Instant};

use anyhow::Context;
use keywire::{Connection, Endpoint, NodeAddr, Path, Ticket};

use super::delay_proxy::DelayProxy;
use super::{config, emit};

const ALPN: &[u8] = b"keywire-bench/switch/1";
/// Windows after the switch that make up the steady state.
const STEADY: std::ops::Range<usize> = 40..60;
const RECOVERY_TARGET_RTT: usize = 20;

/// One run; returns (recovery in RTT windows, steady goodput in MiB/s, congestion events after
/// the switch, packets lost after the switch). With `fresh`, the baseline: a connection made
/// straight over the same direct path, measured from its start instead of from a switch.
async fn once(rtt: Duration, fresh: bool) -> anyhow::Result<(Option<usize>, f64, u64, u64)> {
    let gate_node = Endpoint::bind(config(ALPN).bind_addr("[::]:0".parse()?))?;
    let mut gate_config = keywire::gate::GateConfig::default();
    gate_config.relay_bytes_per_second = 1 << 30;
    gate_config.relay_burst = 16 << 20;
    let _gate = keywire::gate::Gate::spawn(&gate_node, gate_config).await?;
    let gate_port = gate_node.local_addr()?.port();
    let gate_v4 = NodeAddr::new(gate_node.node_id(), [([127, 0, 0, 1], gate_port).into()]);
    let gate_v6 = NodeAddr::new(
        gate_node.node_id(),
        [(std::net::Ipv6Addr::LOCALHOST, gate_port).into()],
    );

    let probe = tokio::net::UdpSocket::bind("[::1]:0").await?;
    let callee_addr = probe.local_addr()?;
    drop(probe);
    let proxy = DelayProxy::start_v4_to_v6(callee_addr, rtt / 2).await?;
    let callee = Endpoint::bind(config(ALPN).bind_addr(callee_addr).announce(proxy.addr))
        .context("callee on IPv6 loopback (is IPv6 available?)")?;
    callee.join_gate(&gate_v6).await?;
    let caller = Endpoint::bind(config(ALPN))?;
    caller.join_gate(&gate_v4).await?;
    let ticket = Ticket::with_gates(NodeAddr::new(callee.node_id(), []), vec![gate_v4])?;

    let receiving = tokio::spawn({
        let callee = callee.clone();
        async move {
            let conn = callee.accept().await.context("callee closed")?;
            let mut recv = conn.accept_uni().await?;
            let mut arrivals = Vec::new();
            while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
                arrivals.push((Instant::now(), chunk.bytes.len()));
            }
            anyhow::Ok(arrivals)
        }
    });
    let dial = async {
        if fresh {
            caller
                .connect(&NodeAddr::new(callee.node_id(), [proxy.addr]), ALPN)
                .await
        } else {
            caller.connect_ticket(&ticket, ALPN).await
        }
    };
    let conn = tokio::time::timeout(Duration::from_secs(20), dial)
        .await
        .context("dial: no answer within 20 s")??;
    let switched = if fresh {
        let stats = conn.stats();
        let at_start = (stats.path.congestion_events, stats.path.lost_packets);
        tokio::spawn(async move { anyhow::Ok((Instant::now(), at_start)) })
    } else {
        anyhow::ensure!(
            matches!(conn.initial_path(), Path::Relayed { .. }),
            "the connection did not start relayed"
        );
        tokio::spawn(switch_time(conn.clone()))
    };
    // Enough to fill well over 60 RTT of the direct path at full speed.
    let mut send = conn.open_uni().await?;
    let block = vec![0x5au8; 1 << 16];
    let deadline = Instant::now() + rtt * 90;
    let sending = async {
        while Instant::now() < deadline {
            send.write_all(&block).await?;
        }
        send.finish()?;
        anyhow::Ok(())
    };
    tokio::time::timeout(rtt * 90 + Duration::from_secs(20), sending)
        .await
        .context("sending stalled")??;
    let (switched_at, stats_at_switch) = tokio::time::timeout(Duration::from_secs(20), switched)
        .await
        .context("the connection never went direct")???;
    let arrivals = tokio::time::timeout(Duration::from_secs(60), receiving)
        .await
        .context("the receiver did not finish")???;
    let after = conn.stats();
    let congestion = after.path.congestion_events - stats_at_switch.0;
    let lost = after.path.lost_packets - stats_at_switch.1;
    conn.close(0u32.into(), b"");

    let windows = goodput_windows(&arrivals, switched_at, rtt);
    anyhow::ensure!(
        windows.len() > STEADY.end,
        "only {} RTT windows after the switch; the transfer was too short",
        windows.len()
    );
    let mut steady: Vec<f64> = windows[STEADY].to_vec();
    steady.sort_by(f64::total_cmp);
    let steady = steady[steady.len() / 2];
    let recovered =
        (0..STEADY.start).find(|&k| windows[k..STEADY.start].iter().all(|w| *w >= 0.8 * steady));
    let mib_s = steady / rtt.as_secs_f64() / (1 << 20) as f64;
    caller.close().await;
    callee.close().await;
    gate_node.close().await;
    Ok((recovered, mib_s, congestion, lost))
}

/// When the caller's path went direct, and its (congestion events, lost packets) then.
async fn switch_time(conn: Connection) -> anyhow::Result<(Instant, (u64, u64))> {
    let mut events = conn.path_events();
    loop {
        match events.next().await.context("path events ended")? {
            Path::Direct(_) => {
                let stats = conn.stats();
                return Ok((
                    Instant::now(),
                    (stats.path.congestion_events, stats.path.lost_packets),
                ));
            }
            _ => continue,
        }
    }
}

/// Bytes received in each window of one `rtt`, starting `rtt / 2` after `from` (the first
/// direct packets need one way to arrive).
fn goodput_windows(arrivals: &[(Instant, usize)], from: Instant, rtt: Duration) -> Vec<f64> {
    let start = from + rtt / 2;
    let mut windows: Vec<f64> = Vec::new();
    for (at, len) in arrivals {
        let Some(since) = at.checked_duration_since(start) else {
            continue;
        };
        let index = (since.as_secs_f64() / rtt.as_secs_f64()) as usize;
        if windows.len() <= index {
            windows.resize(index + 1, 0.0);
        }
        windows[index] += *len as f64;
    }
    windows
}

/// Runs the switch and its baseline (a fresh connection on the same path) alternately.
pub async fn recovery(rtt: Duration, trials: usize) -> anyhow::Result<()> {
    let baseline = Runs::collect(rtt, trials, true).await?;
    let switch = Runs::collect(rtt, trials, false).await?;
    let met = switch.never == 0 && switch.worst() <= RECOVERY_TARGET_RTT as f64;
    emit(
        &format!("relay.switch_recovery_rtt.rtt{}ms", rtt.as_millis()),
        super::stats::median(&switch.recoveries),
        "RTT",
        Some(super::stats::median(&baseline.recoveries)),
        serde_json::json!({
            "baseline_name": "fresh connection on the same direct path, from its start",
            "worst": switch.worst(), "never_recovered": switch.never, "trials": trials,
            "steady_mib_per_s": super::stats::median(&switch.steadies),
            "baseline_steady_mib_per_s": super::stats::median(&baseline.steadies),
            "congestion_events_after_switch": switch.congestion, "lost_after_switch": switch.lost,
            "baseline_congestion_events": baseline.congestion, "baseline_lost": baseline.lost,
            "baseline_never_recovered": baseline.never,
            "target": format!("<= {RECOVERY_TARGET_RTT} RTT to 80% of steady goodput"),
            "verdict": if met { "PASS" } else { "MISS" },
            "what": "relayed -> direct switch mid-transfer: RTT windows until goodput stays >= 80% of the new path's steady state",
        }),
    );
    Ok(())
}

/// The figures of several runs of one kind.
#[derive(Default)]
struct Runs {
    recoveries: Vec<f64>,
    steadies: Vec<f64>,
    congestion: u64,
    lost: u64,
    never: usize,
}

impl Runs {
    fn worst(&self) -> f64 {
        self.recoveries.iter().copied().fold(0.0, f64::max)
    }

    async fn collect(rtt: Duration, trials: usize, fresh: bool) -> anyhow::Result<Self> {
        let mut runs = Runs::default();
        for _ in 0..trials {
            let (recovered, mib_s, c, l) =
                tokio::time::timeout(Duration::from_secs(120), once(rtt, fresh))
                    .await
                    .context("a switch-recovery trial took over 120 s")??;
            // A run that never recovered counts as the whole window range it was given.
            match recovered {
                Some(k) => runs.recoveries.push(k as f64),
                None => {
                    runs.never += 1;
                    runs.recoveries.push(STEADY.start as f64);
                }
            }
            runs.steadies.push(mib_s);
            runs.congestion += c;
            runs.lost += l;
        }
        Ok(runs)
    }
}
