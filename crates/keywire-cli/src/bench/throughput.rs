//! `keywire bench throughput`: one stream over loopback, keywire against plain quinn.
//!
//! Method (issue: foundation part 2): runs alternate ABBA — pair i runs keywire first when i is
//! even and plain quinn first when odd — so drift on a shared machine hits both alike. Each run
//! uses a fresh connection on long-lived endpoints and times `bytes` from opening the stream to
//! the receiver reading the last byte. Reported: the median of per-pair throughput ratios
//! (keywire / quinn) and its interquartile range, and CPU seconds per GiB (both ends run in this
//! process). An IQR above 0.10 is noisy: the whole measurement is repeated, up to twice.

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use keywire::{Endpoint, NodeAddr};

use super::stats::{iqr, median};
use super::{config, cpu, emit, PlainPair};

const ALPN: &[u8] = b"keywire-bench/throughput/1";
const CHUNK: usize = 1 << 20;
const NOISY_IQR: f64 = 0.10;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Bytes per run.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// ABBA pairs (each pair runs keywire once and plain quinn once).
    #[arg(long, default_value_t = 16)]
    pairs: usize,
}

struct Sample {
    seconds: f64,
    cpu_seconds: f64,
}

struct Side {
    throughput: Vec<f64>,
    cpu_per_gib: Vec<f64>,
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.pairs >= 1 && args.bytes >= CHUNK as u64,
        "need at least 1 pair and 1 MiB"
    );
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (kw, quinn, ratios) = measure(args).await?;
        let spread = iqr(&ratios);
        let noisy = spread > NOISY_IQR;
        if noisy && attempt < 3 {
            crate::output::err_line(&format!(
                "throughput: IQR {spread:.3} > {NOISY_IQR}: noisy, repeating"
            ));
            continue;
        }
        let scenario = format!("loopback_{}mib", args.bytes >> 20);
        emit(
            &format!("throughput.ratio.{scenario}"),
            median(&ratios),
            "ratio",
            None,
            serde_json::json!({ "iqr": spread, "pairs": args.pairs, "noisy": noisy, "attempt": attempt,
                "baseline_name": "plain quinn, same TLS/transport/socket buffers", "target": ">= 0.98" }),
        );
        emit(
            &format!("throughput.mib_per_s.{scenario}"),
            median(&kw.throughput),
            "MiB/s",
            Some(median(&quinn.throughput)),
            serde_json::json!({}),
        );
        emit(
            &format!("throughput.cpu_s_per_gib.{scenario}"),
            median(&kw.cpu_per_gib),
            "s/GiB",
            Some(median(&quinn.cpu_per_gib)),
            serde_json::json!({ "target": "ratio <= 1.03" }),
        );
        return Ok(());
    }
}

async fn measure(args: &Args) -> anyhow::Result<(Side, Side, Vec<f64>)> {
    let kw_server = Endpoint::bind(config(ALPN))?;
    let kw_client = Endpoint::bind(config(ALPN))?;
    let kw_addr = NodeAddr::new(kw_server.node_id(), [kw_server.local_addr()?]);
    let plain = PlainPair::new(ALPN)?;
    let q_addr = plain.server.local_addr()?;
    let payload = Bytes::from(vec![0x5a; CHUNK]);

    let mut kw = Side {
        throughput: Vec::new(),
        cpu_per_gib: Vec::new(),
    };
    let mut quinn = Side {
        throughput: Vec::new(),
        cpu_per_gib: Vec::new(),
    };
    let mut ratios = Vec::new();
    for pair in 0..args.pairs {
        let mut results = [None, None];
        for step in 0..2 {
            let keywire_turn = (pair % 2 == 0) == (step == 0);
            let sample = if keywire_turn {
                let receiver = tokio::spawn(receive_keywire(kw_server.clone()));
                let conn = kw_client.connect(&kw_addr, ALPN).await?;
                let sample = timed_send(&conn, &payload, args.bytes, receiver).await?;
                conn.close(0u32.into(), b"");
                sample
            } else {
                let receiver = tokio::spawn(receive_quinn(plain.server.clone()));
                let conn = plain.connect(q_addr).await?;
                let sample = timed_send(&conn, &payload, args.bytes, receiver).await?;
                conn.close(0u32.into(), b"");
                sample
            };
            results[usize::from(!keywire_turn)] = Some(sample);
        }
        let [Some(k), Some(q)] = results else {
            unreachable!("both turns ran")
        };
        let gib = args.bytes as f64 / (1u64 << 30) as f64;
        let mib = args.bytes as f64 / (1u64 << 20) as f64;
        kw.throughput.push(mib / k.seconds);
        quinn.throughput.push(mib / q.seconds);
        kw.cpu_per_gib.push(k.cpu_seconds / gib);
        quinn.cpu_per_gib.push(q.cpu_seconds / gib);
        ratios.push(q.seconds / k.seconds);
    }
    kw_client.close().await;
    kw_server.close().await;
    plain.client.close(0u32.into(), b"");
    plain.server.close(0u32.into(), b"");
    Ok((kw, quinn, ratios))
}

/// Sends `bytes` on a new unidirectional stream; returns the seconds until the receiver has read
/// them all (shared with `bench relay`).
pub(super) async fn send_and_wait(
    conn: &keywire::quinn::Connection,
    payload: &Bytes,
    bytes: u64,
    receiver: tokio::task::JoinHandle<anyhow::Result<u64>>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut send = conn.open_uni().await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(payload.len() as u64) as usize;
        send.write_chunk(payload.slice(..n)).await?;
        left -= n as u64;
    }
    send.finish()?;
    let received = receiver.await??;
    let seconds = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        received == bytes,
        "receiver got {received} of {bytes} bytes"
    );
    Ok(seconds)
}

/// [`send_and_wait`], with the process's CPU time over it.
async fn timed_send(
    conn: &keywire::quinn::Connection,
    payload: &Bytes,
    bytes: u64,
    receiver: tokio::task::JoinHandle<anyhow::Result<u64>>,
) -> anyhow::Result<Sample> {
    let cpu_start = cpu::process_cpu_seconds().context("no /proc/self/stat")?;
    let seconds = send_and_wait(conn, payload, bytes, receiver).await?;
    let cpu_seconds = cpu::process_cpu_seconds().context("no /proc/self/stat")? - cpu_start;
    Ok(Sample {
        seconds,
        cpu_seconds,
    })
}

pub(super) async fn receive_keywire(server: Endpoint) -> anyhow::Result<u64> {
    let conn = server.accept().await.context("endpoint closed")?;
    drain(conn.accept_uni().await?).await
}

async fn receive_quinn(server: keywire::quinn::Endpoint) -> anyhow::Result<u64> {
    let conn = server.accept().await.context("endpoint closed")?.await?;
    drain(conn.accept_uni().await?).await
}

async fn drain(mut recv: keywire::quinn::RecvStream) -> anyhow::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, false).await? {
        total += chunk.bytes.len() as u64;
    }
    Ok(total)
}
