//! `keywire bench connect`: from `connect()` to the first echoed byte, against plain quinn.
//!
//! Two scenarios, both ABBA as in the throughput bench:
//! - `loopback`: direct, so the figure is mostly CPU (handshake crypto, keywire's extra work);
//!   reported as the median of per-pair time ratios.
//! - `delay10ms`: through an in-process proxy adding 10 ms each way (RTT 20 ms), so
//!   elapsed / RTT counts the round trips each protocol needs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use keywire::{Connection, Endpoint, NodeAddr};

use super::delay_proxy::DelayProxy;
use super::stats::{iqr, median};
use super::{config, emit, PlainPair};

const ALPN: &[u8] = b"keywire-bench/connect/1";
const ONE_WAY: Duration = Duration::from_millis(10);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// ABBA pairs on loopback.
    #[arg(long, default_value_t = 200)]
    pairs: usize,
    /// ABBA pairs through the 10 ms delay proxy.
    #[arg(long, default_value_t = 10)]
    delayed_pairs: usize,
}

struct Setup {
    kw_client: Endpoint,
    kw_server: Endpoint,
    plain: PlainPair,
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.pairs >= 1, "--pairs must be at least 1");
    let setup = setup()?;
    // Warm-up: first handshakes pay for lazy initialisation on both sides.
    for _ in 0..3 {
        once_keywire(&setup, setup.kw_server.local_addr()?).await?;
        once_quinn(&setup, setup.plain.server.local_addr()?).await?;
    }
    let (ratios, kw, q) = abba(&setup, args.pairs, None).await?;
    emit(
        "connect.ratio.loopback",
        median(&ratios),
        "ratio",
        None,
        serde_json::json!({ "iqr": iqr(&ratios), "pairs": args.pairs, "target": "<= 1.05",
            "keywire_ms": median(&kw) * 1e3, "quinn_ms": median(&q) * 1e3,
            "what": "time to first echoed byte, keywire / plain quinn" }),
    );
    let (_, kw, q) = abba(&setup, args.delayed_pairs, Some(ONE_WAY)).await?;
    let rtt = 2.0 * ONE_WAY.as_secs_f64();
    // `--delayed-pairs 0` skips the round-trip count.
    if !kw.is_empty() {
        emit(
            "connect.round_trips.delay10ms",
            median(&kw) / rtt,
            "RTT",
            Some(median(&q) / rtt),
            serde_json::json!({ "pairs": args.delayed_pairs,
            "what": "connect() to first echoed byte, in round trips of a 20 ms RTT path" }),
        );
    }
    setup.kw_client.close().await;
    setup.kw_server.close().await;
    Ok(())
}

fn setup() -> anyhow::Result<Setup> {
    let kw_server = Endpoint::bind(config(ALPN))?;
    kw_server.register(ALPN.to_vec(), |conn: Connection| async move {
        echo(conn.quinn().clone()).await
    })?;
    let kw_client = Endpoint::bind(config(ALPN))?;
    let plain = PlainPair::new(ALPN)?;
    let accepting = plain.server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    echo(conn).await;
                }
            });
        }
    });
    Ok(Setup {
        kw_client,
        kw_server,
        plain,
    })
}

async fn echo(conn: keywire::quinn::Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        if let Ok(data) = recv.read_to_end(16).await {
            let _ = send.write_all(&data).await;
            let _ = send.finish();
        }
    }
}

async fn abba(
    setup: &Setup,
    pairs: usize,
    delay: Option<Duration>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let (mut ratios, mut kw, mut q) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..pairs {
        let mut k = 0.0;
        let mut p = 0.0;
        for step in 0..2 {
            let keywire_turn = (pair % 2 == 0) == (step == 0);
            if keywire_turn {
                let (addr, _proxy) = target(setup.kw_server.local_addr()?, delay).await?;
                k = once_keywire(setup, addr).await?;
            } else {
                let (addr, _proxy) = target(setup.plain.server.local_addr()?, delay).await?;
                p = once_quinn(setup, addr).await?;
            }
        }
        ratios.push(k / p);
        kw.push(k);
        q.push(p);
    }
    Ok((ratios, kw, q))
}

async fn target(
    server: SocketAddr,
    delay: Option<Duration>,
) -> anyhow::Result<(SocketAddr, Option<DelayProxy>)> {
    match delay {
        None => Ok((server, None)),
        Some(one_way) => {
            let proxy = DelayProxy::start(server, one_way).await?;
            Ok((proxy.addr, Some(proxy)))
        }
    }
}

async fn once_keywire(setup: &Setup, addr: SocketAddr) -> anyhow::Result<f64> {
    let node = NodeAddr::new(setup.kw_server.node_id(), [addr]);
    let start = Instant::now();
    let conn = setup.kw_client.connect(&node, ALPN).await?;
    ping(conn.quinn()).await?;
    let elapsed = start.elapsed().as_secs_f64();
    conn.close(0u32.into(), b"");
    Ok(elapsed)
}

async fn once_quinn(setup: &Setup, addr: SocketAddr) -> anyhow::Result<f64> {
    let start = Instant::now();
    let conn = setup.plain.connect(addr).await?;
    ping(&conn).await?;
    let elapsed = start.elapsed().as_secs_f64();
    conn.close(0u32.into(), b"");
    Ok(elapsed)
}

async fn ping(conn: &keywire::quinn::Connection) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[1]).await?;
    send.finish()?;
    let echoed = recv.read_to_end(16).await.context("no echo")?;
    anyhow::ensure!(echoed == [1], "wrong echo");
    Ok(())
}
