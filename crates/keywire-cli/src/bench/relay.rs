//! `keywire bench relay`: what a gate costs, against going direct, in the same run.
//!
//! Three figures, all on loopback with the gate in this process:
//! - throughput: one stream relayed through a gate as a ratio of the same stream sent direct.
//!   Each round runs direct, relayed, relayed, direct (ABBA) on fresh connections between the
//!   same long-lived endpoints, so drift on a shared machine hits both alike; the round's ratio
//!   is total direct time / total relayed time. Both ends keep relayed connections relayed
//!   (`upgrade_to_direct(false)`), else the relayed runs would mostly measure the direct path.
//! - TCP-relayed throughput as a ratio of UDP-relayed throughput (`relay_tcp.rs`).
//! - time to first byte via a gate, in RTTs: every node reaches the gate through its own
//!   [`DelayProxy`] with a known RTT, so elapsed / RTT counts round trips. Timed from the start
//!   of the caller's registration (cold) or of `connect_via` (caller already registered) until
//!   the first byte of the echo of a one-byte request arrives. Upgrades are off so the echo
//!   cannot take the (delay-free) direct path and flatter the figure.
//! - relayed start to direct: from `connect_via` returning until the path is direct, with
//!   upgrades on, in RTTs of the relayed path (caller–gate–callee: twice the proxy RTT).
//!
//! Fresh caller endpoints (and proxies) per trial, so no registration or connection to the gate
//! is reused by accident; one untimed warm-up trial pays the process's lazy set-up.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use keywire::gate::{Gate, GateClient, GateConfig};
use keywire::{Connection, Endpoint, NodeAddr, NodeId, Path};

use super::delay_proxy::DelayProxy;
use super::stats::{iqr, median};
use super::throughput::{receive_keywire, send_and_wait};
use super::{config, emit};

pub(super) const ALPN: &[u8] = b"keywire-bench/relay/1";
pub(super) const CHUNK: usize = 1 << 20;
/// Every step of a trial is bounded, so a stuck path fails the run instead of hanging it.
const STEP_LIMIT: Duration = Duration::from_secs(60);
const THROUGHPUT_TARGET: f64 = 0.5;
const TTFB_TARGET_RTT: f64 = 3.0;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Bytes per transfer in the throughput comparison [default: 64 MiB, 8 MiB with --quick].
    #[arg(long)]
    size: Option<u64>,
    /// ABBA rounds (direct, relayed, relayed, direct) [default: 8, 2 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Timed trials for each time-to-first-byte and upgrade figure [default: 10, 3 with --quick].
    #[arg(long)]
    trials: Option<usize>,
    /// RTT between each node and the gate, made by a delaying proxy, in milliseconds.
    #[arg(long, default_value_t = 20)]
    rtt_ms: u64,
    /// A short run; explicit --size, --rounds and --trials still win.
    #[arg(long)]
    quick: bool,
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let size = args
        .size
        .unwrap_or(if args.quick { 8 << 20 } else { 64 << 20 });
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 8 });
    let trials = args.trials.unwrap_or(if args.quick { 3 } else { 10 });
    anyhow::ensure!(
        size >= 1 && rounds >= 1 && trials >= 1 && args.rtt_ms >= 1,
        "--size, --rounds, --trials and --rtt-ms must be at least 1"
    );
    throughput(size, rounds).await?;
    super::relay_tcp::throughput(size, rounds).await?;
    let rtt = Duration::from_millis(args.rtt_ms);
    first_byte(rtt, trials).await?;
    to_direct(rtt, trials).await?;
    super::relay_switch::recovery(rtt, trials.min(5)).await
}

/// A gate whose limits do not shape what is measured: relaying at 1 GiB/s per client (the
/// default 4 MiB/s would measure the limit) and as many registrations from 127.0.0.1 as the
/// trials need (the default refills one per 6 s).
pub(super) async fn gate() -> anyhow::Result<(Endpoint, Gate)> {
    // A port free for TCP too: the TCP-relayed figures need links on the UDP port's number.
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let port = keywire::bench_support::free_tcp_and_udp_port(ip)?;
    let endpoint = Endpoint::bind(config(ALPN).bind_addr(std::net::SocketAddr::new(ip, port)))?;
    let mut gate_config = GateConfig::default();
    gate_config.relay_bytes_per_second = 1 << 30;
    gate_config.relay_burst = 16 << 20;
    gate_config.registrations_per_ip = 100_000;
    let gate = Gate::spawn(&endpoint, gate_config).await?;
    Ok((endpoint, gate))
}

pub(super) async fn bounded<T>(
    what: &str,
    step: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(STEP_LIMIT, step)
        .await
        .with_context(|| format!("{what}: no result within {STEP_LIMIT:?}"))?
        .with_context(|| what.to_string())
}

async fn throughput(size: u64, rounds: usize) -> anyhow::Result<()> {
    let (gate_node, gate) = gate().await?;
    let gate_addr = NodeAddr::new(gate_node.node_id(), [gate_node.local_addr()?]);
    let server = Endpoint::bind(config(ALPN).upgrade_to_direct(false))?;
    let client = Endpoint::bind(config(ALPN).upgrade_to_direct(false))?;
    let server_addr = NodeAddr::new(server.node_id(), [server.local_addr()?]);
    let server_gate = bounded("callee registers", async {
        Ok(GateClient::register(&server, &gate_addr).await?)
    })
    .await?;
    server.use_gate(&server_gate);
    let client_gate = bounded("caller registers", async {
        Ok(GateClient::register(&client, &gate_addr).await?)
    })
    .await?;
    let payload = Bytes::from(vec![0x5a; CHUNK]);

    let (mut ratios, mut direct_mib_s, mut relayed_mib_s) = (Vec::new(), Vec::new(), Vec::new());
    // Packets quinn declared lost, per run: where a relayed run's time goes besides CPU.
    let (mut direct_lost, mut relayed_lost) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (mut direct, mut relayed) = (0.0, 0.0);
        for relayed_turn in [false, true, true, false] {
            let receiver = tokio::spawn(receive_keywire(server.clone()));
            let conn = if relayed_turn {
                bounded("relayed connect", async {
                    Ok(client
                        .connect_via(server.node_id(), ALPN, &client_gate)
                        .await?)
                })
                .await?
            } else {
                bounded("direct connect", async {
                    Ok(client.connect(&server_addr, ALPN).await?)
                })
                .await?
            };
            let seconds =
                bounded("transfer", send_and_wait(&conn, &payload, size, receiver)).await?;
            // The measurement is only what it claims if the path stayed what it was meant to be.
            let relayed_path = matches!(conn.path(), Path::Relayed { .. });
            anyhow::ensure!(
                relayed_path == relayed_turn,
                "path was {} for a {} run",
                conn.path(),
                if relayed_turn { "relayed" } else { "direct" }
            );
            let lost = conn.stats().path.lost_packets as f64;
            conn.close(0u32.into(), b"");
            if relayed_turn {
                relayed += seconds;
                relayed_lost.push(lost);
            } else {
                direct += seconds;
                direct_lost.push(lost);
            }
        }
        let mib = 2.0 * size as f64 / (1u64 << 20) as f64;
        direct_mib_s.push(mib / direct);
        relayed_mib_s.push(mib / relayed);
        ratios.push(direct / relayed);
    }
    let m = gate.metrics();
    let ratio = median(&ratios);
    let scenario = format!("loopback_{}", size_label(size));
    emit(
        &format!("relay.throughput_ratio.{scenario}"),
        ratio,
        "ratio",
        None,
        serde_json::json!({ "iqr": iqr(&ratios), "rounds": rounds, "target": ">= 0.5",
            "verdict": verdict(ratio >= THROUGHPUT_TARGET),
            "what": "relayed throughput / direct throughput, one stream, ABBA rounds",
            "gate_frames_rate_limited": m.frames_rate_limited,
            "gate_queue_full": gate_node.metrics().control_queue_full,
            "callee_relayed_inbox_full": server.metrics().relayed_inbox_full,
            "relayed_lost_packets_per_run": median(&relayed_lost),
            "direct_lost_packets_per_run": median(&direct_lost) }),
    );
    emit(
        &format!("relay.mib_per_s.{scenario}"),
        median(&relayed_mib_s),
        "MiB/s",
        Some(median(&direct_mib_s)),
        serde_json::json!({ "baseline_name": "direct keywire, same endpoints" }),
    );
    drop((client_gate, server_gate));
    client.close().await;
    server.close().await;
    gate_node.close().await;
    Ok(())
}

pub(super) fn size_label(size: u64) -> String {
    if size % (1 << 20) == 0 {
        format!("{}mib", size >> 20)
    } else {
        format!("{size}b")
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "PASS"
    } else {
        "MISS"
    }
}

/// A gate, and a callee registered with it through a proxy of its own, echoing requests.
struct Lab {
    gate_node: Endpoint,
    _gate: Gate,
    callee: Endpoint,
    _callee_gate: GateClient,
    _callee_proxy: DelayProxy,
    one_way: Duration,
}

impl Lab {
    async fn start(rtt: Duration, upgrade: bool) -> anyhow::Result<Self> {
        let (gate_node, gate) = gate().await?;
        let callee = Endpoint::bind(config(ALPN).upgrade_to_direct(upgrade))?;
        callee.register(
            ALPN.to_vec(),
            |conn: Connection| async move { echo(conn).await },
        )?;
        let one_way = rtt / 2;
        let proxy = DelayProxy::start(gate_node.local_addr()?, one_way).await?;
        let callee_gate = bounded("callee registers", async {
            Ok(
                GateClient::register(&callee, &NodeAddr::new(gate_node.node_id(), [proxy.addr]))
                    .await?,
            )
        })
        .await?;
        callee.use_gate(&callee_gate);
        Ok(Self {
            gate_node,
            _gate: gate,
            callee,
            _callee_gate: callee_gate,
            _callee_proxy: proxy,
            one_way,
        })
    }

    /// A new caller endpoint and its own proxy in front of the gate (a proxy serves one client).
    async fn caller(&self, upgrade: bool) -> anyhow::Result<(Endpoint, DelayProxy, NodeAddr)> {
        let caller = Endpoint::bind(config(ALPN).upgrade_to_direct(upgrade))?;
        let proxy = DelayProxy::start(self.gate_node.local_addr()?, self.one_way).await?;
        let via = NodeAddr::new(self.gate_node.node_id(), [proxy.addr]);
        Ok((caller, proxy, via))
    }

    fn callee_id(&self) -> NodeId {
        self.callee.node_id()
    }

    async fn close(self) {
        self.callee.close().await;
        self.gate_node.close().await;
    }
}

async fn echo(conn: Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        if let Ok(data) = recv.read_to_end(16).await {
            let _ = send.write_all(&data).await;
            let _ = send.finish();
        }
    }
}

/// Sends one byte on a new stream and waits for the first byte of the answer.
async fn first_byte_of_echo(conn: &Connection) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[1]).await?;
    send.finish()?;
    let mut byte = [0u8; 1];
    recv.read_exact(&mut byte).await.context("no echo")?;
    anyhow::ensure!(byte == [1], "wrong echo");
    Ok(())
}

/// Where one time-to-first-byte trial spent its time, in seconds.
#[derive(Default)]
struct Phases {
    register: f64,
    connect_via: f64,
    echo: f64,
}

impl Phases {
    fn total(&self) -> f64 {
        self.register + self.connect_via + self.echo
    }
}

/// One time-to-first-byte trial; `cold` includes the caller's registration in the time.
async fn ttfb_once(lab: &Lab, cold: bool) -> anyhow::Result<Phases> {
    let (caller, _proxy, via) = lab.caller(false).await?;
    let mut phases = Phases::default();
    let mut registration = None;
    if !cold {
        registration = Some(GateClient::register(&caller, &via).await?);
    }
    let start = Instant::now();
    let registration = match registration {
        Some(r) => r,
        None => GateClient::register(&caller, &via).await?,
    };
    let registered = Instant::now();
    phases.register = (registered - start).as_secs_f64();
    let conn = caller
        .connect_via(lab.callee_id(), ALPN, &registration)
        .await?;
    let connected = Instant::now();
    phases.connect_via = (connected - registered).as_secs_f64();
    first_byte_of_echo(&conn).await?;
    phases.echo = connected.elapsed().as_secs_f64();
    anyhow::ensure!(
        matches!(conn.path(), Path::Relayed { .. }),
        "the echo went {}",
        conn.path()
    );
    conn.close(0u32.into(), b"");
    drop(registration);
    caller.close().await;
    Ok(phases)
}

async fn first_byte(rtt: Duration, trials: usize) -> anyhow::Result<()> {
    let lab = Lab::start(rtt, false).await?;
    bounded("warm-up trial", ttfb_once(&lab, true)).await?;
    let rtt_s = rtt.as_secs_f64();
    for (cold, scenario) in [(true, "cold"), (false, "registered")] {
        let mut trial_phases = Vec::new();
        for _ in 0..trials {
            trial_phases.push(bounded("first byte trial", ttfb_once(&lab, cold)).await?);
        }
        let in_rtts = |f: fn(&Phases) -> f64| -> Vec<f64> {
            trial_phases.iter().map(|p| f(p) / rtt_s).collect()
        };
        let rtts = in_rtts(Phases::total);
        let value = median(&rtts);
        let what = if cold {
            "caller's registration start to first echoed byte via the gate, in node-gate RTTs"
        } else {
            "connect_via start (caller registered) to first echoed byte, in node-gate RTTs"
        };
        emit(
            &format!("relay.first_byte_rtt.{scenario}_rtt{}ms", rtt.as_millis()),
            value,
            "RTT",
            None,
            serde_json::json!({ "iqr": iqr(&rtts), "trials": trials, "target": "<= 3",
                "verdict": verdict(value <= TTFB_TARGET_RTT), "median_ms": value * rtt_s * 1e3,
                "rtt_ms": rtt.as_millis() as u64, "what": what,
                // Medians of each phase, in RTTs: where the round trips go.
                "register_rtt": median(&in_rtts(|p| p.register)),
                "connect_via_rtt": median(&in_rtts(|p| p.connect_via)),
                "echo_rtt": median(&in_rtts(|p| p.echo)) }),
        );
    }
    lab.close().await;
    Ok(())
}

/// One upgrade trial: seconds from `connect_via` returning until the path is direct, and the
/// relayed RTT quinn had estimated by then.
async fn to_direct_once(lab: &Lab) -> anyhow::Result<(f64, f64)> {
    let (caller, _proxy, via) = lab.caller(true).await?;
    let registration = GateClient::register(&caller, &via).await?;
    let conn = caller
        .connect_via(lab.callee_id(), ALPN, &registration)
        .await?;
    let start = Instant::now();
    let quinn_rtt = conn.rtt().as_secs_f64();
    let mut events = conn.path_events();
    // The switch may land before the subscription: read the path first, then wait for changes.
    while !matches!(conn.path(), Path::Direct(_)) {
        events.next().await.context("path events ended")?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let direct_to: SocketAddr = lab.callee.local_addr()?;
    anyhow::ensure!(
        conn.path() == Path::Direct(direct_to),
        "went {} instead of to the callee's address",
        conn.path()
    );
    conn.close(0u32.into(), b"");
    drop(registration);
    caller.close().await;
    Ok((elapsed, quinn_rtt))
}

async fn to_direct(rtt: Duration, trials: usize) -> anyhow::Result<()> {
    let lab = Lab::start(rtt, true).await?;
    bounded("warm-up trial", to_direct_once(&lab)).await?;
    // Caller to gate and gate to callee each take one proxy RTT.
    let relayed_rtt = 2.0 * rtt.as_secs_f64();
    let (mut in_rtts, mut quinn_rtts) = (Vec::new(), Vec::new());
    for _ in 0..trials {
        let (elapsed, quinn_rtt) = bounded("upgrade trial", to_direct_once(&lab)).await?;
        in_rtts.push(elapsed / relayed_rtt);
        quinn_rtts.push(quinn_rtt);
    }
    let value = median(&in_rtts);
    emit(
        &format!("relay.to_direct_relayed_rtt.rtt{}ms", rtt.as_millis()),
        value,
        "relayed RTT",
        None,
        serde_json::json!({ "iqr": iqr(&in_rtts), "trials": trials,
            "median_ms": value * relayed_rtt * 1e3, "relayed_rtt_ms": relayed_rtt * 1e3,
            "quinn_rtt_ms_at_connect": median(&quinn_rtts) * 1e3,
            "what": "connect_via returns to path Direct, upgrade on, in relayed-path RTTs" }),
    );
    lab.close().await;
    Ok(())
}
