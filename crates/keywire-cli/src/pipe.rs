//! `keywire listen` / `keywire connect`: netcat over a keywire connection.
//!
//! Protocol (ALPN `keywire/pipe/1`), chosen so that both ends exit 0 only when every byte in both
//! directions was written out by the other side:
//! 1. The connector opens one bidirectional stream and sends a version byte (1), so the listener
//!    sees the stream at once even if the connector has nothing to say yet.
//! 2. Each side copies its stdin into the stream and finishes it at end of input, and copies what
//!    it receives to stdout until the peer finishes.
//! 3. The listener, once it has written out everything the connector sent, opens and finishes an
//!    empty unidirectional stream: "all your bytes arrived".
//! 4. The connector, once it has written out everything the listener sent and has that signal,
//!    closes the connection with code 0. The listener exits 0 on that close.
//!
//! QUIC acknowledgements alone would not do: an acknowledged byte may still sit unread in the
//! peer's buffers when the connection closes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keywire::quinn::{self, VarInt};
use keywire::{close_code, Connection, Ticket};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};

use crate::node::NodeOptions;
use crate::output;

/// The ALPN of the pipe protocol.
pub const PIPE_ALPN: &[u8] = b"keywire/pipe/1";
const PIPE_VERSION: u8 = 1;
const COPY_BUFFER: usize = 256 << 10;

#[derive(clap::Args, Debug)]
pub struct ListenArgs {
    /// Local address to bind (default: every interface, IPv6 and IPv4, a free port).
    #[arg(long, default_value = "[::]:0")]
    bind: SocketAddr,
}

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    /// The ticket printed by `keywire listen`.
    ticket: String,
    /// Local address to bind.
    #[arg(long, default_value = "[::]:0")]
    bind: SocketAddr,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Listener,
    Connector,
}

pub async fn listen(opts: &NodeOptions, args: &ListenArgs) -> anyhow::Result<()> {
    let endpoint = opts.endpoint(args.bind, PIPE_ALPN)?;
    let node_addr = endpoint
        .node_addr()
        .context("cannot list local addresses")?;
    let ticket = Ticket::new(node_addr.clone()).context("cannot make a ticket for this node")?;
    if opts.json {
        output::event(serde_json::json!({
            "event": "listening",
            "node_id": endpoint.node_id().to_string(),
            "ticket": ticket.to_string(),
            "direct_addrs": node_addr.direct_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        }));
    } else {
        output::err_line(&ticket.to_string());
        output::err_line(&format!(
            "keywire: listening as {}; on the other side run: keywire connect <the ticket above>",
            endpoint.node_id()
        ));
    }
    let conn = endpoint
        .accept()
        .await
        .context("the endpoint closed before anyone connected")?;
    // This command serves one connection; tell later callers so instead of leaving them waiting.
    let turn_away = endpoint.clone();
    tokio::spawn(async move {
        while let Some(other) = turn_away.accept().await {
            other.close(
                VarInt::from_u32(close_code::BUSY),
                b"this listener serves one connection",
            );
        }
    });
    let (send, mut recv) = conn
        .accept_bi()
        .await
        .context("the peer left before opening the pipe")?;
    let version = recv
        .read_u8()
        .await
        .context("the peer left before opening the pipe")?;
    if version != PIPE_VERSION {
        bail!("the peer speaks pipe version {version}, this keywire speaks {PIPE_VERSION}");
    }
    report_connected(opts, &conn, None);
    let stats = pipe(&conn, send, recv, Side::Listener).await?;
    report_done(opts, &conn, stats);
    endpoint.wait_idle().await;
    Ok(())
}

pub async fn connect(opts: &NodeOptions, args: &ConnectArgs) -> anyhow::Result<()> {
    let ticket: Ticket = args.ticket.parse()?;
    let endpoint = opts.endpoint(args.bind, PIPE_ALPN)?;
    let started = Instant::now();
    let conn = endpoint.connect(&ticket.node, PIPE_ALPN).await?;
    let connect_time = started.elapsed();
    let (mut send, recv) = conn
        .open_bi()
        .await
        .context("cannot open the pipe stream")?;
    send.write_all(&[PIPE_VERSION])
        .await
        .context("cannot open the pipe stream")?;
    report_connected(opts, &conn, Some(connect_time));
    let stats = pipe(&conn, send, recv, Side::Connector).await?;
    conn.close(VarInt::from_u32(close_code::DONE), b"done");
    report_done(opts, &conn, stats);
    endpoint.wait_idle().await;
    Ok(())
}

struct PipeStats {
    sent: u64,
    received: u64,
    elapsed: Duration,
}

async fn pipe(
    conn: &Connection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    side: Side,
) -> anyhow::Result<PipeStats> {
    let started = Instant::now();
    let upload = async {
        let mut stdin = BufReader::with_capacity(COPY_BUFFER, tokio::io::stdin());
        let sent = tokio::io::copy_buf(&mut stdin, &mut send)
            .await
            .context("sending stdin")?;
        send.finish().context("finishing the stream")?;
        anyhow::Ok(sent)
    };
    let download = async {
        let mut stdout = BufWriter::with_capacity(COPY_BUFFER, tokio::io::stdout());
        let mut recv = BufReader::with_capacity(COPY_BUFFER, recv);
        let received = tokio::io::copy_buf(&mut recv, &mut stdout)
            .await
            .context("receiving to stdout")?;
        stdout.flush().await.context("writing stdout")?;
        if side == Side::Listener {
            // Step 3: everything the connector sent is written out.
            let mut signal = conn.open_uni().await.context("confirming receipt")?;
            signal.finish().context("confirming receipt")?;
        }
        anyhow::Ok(received)
    };
    let (sent, received) = tokio::try_join!(upload, download).map_err(|e| explain(conn, e))?;
    match side {
        Side::Connector => {
            // Step 4: wait for the listener's confirmation before closing.
            let mut signal = conn
                .accept_uni()
                .await
                .map_err(|e| explain(conn, e.into()))?;
            signal
                .read_to_end(0)
                .await
                .map_err(|e| explain(conn, e.into()))?;
        }
        Side::Listener => {
            let reason = conn.closed().await;
            let clean = matches!(&reason, quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code == VarInt::from_u32(close_code::DONE));
            if !clean {
                bail!("the connection ended before the peer confirmed: {reason}");
            }
        }
    }
    Ok(PipeStats {
        sent,
        received,
        elapsed: started.elapsed(),
    })
}

/// Prefers the connection's close reason over a stream error that merely follows from it.
fn explain(conn: &Connection, error: anyhow::Error) -> anyhow::Error {
    match conn.close_reason() {
        Some(reason) => error.context(format!("connection lost: {reason}")),
        None => error,
    }
}

fn report_connected(opts: &NodeOptions, conn: &Connection, connect_time: Option<Duration>) {
    if opts.json {
        output::event(serde_json::json!({
            "event": "connected",
            "remote_node_id": conn.remote_node_id().to_string(),
            "remote_addr": keywire::proto::ticket::canonical_addr(conn.remote_address()).to_string(),
            "path": "direct",
            "connect_ms": connect_time.map(|t| t.as_secs_f64() * 1e3),
            "rtt_ms": conn.rtt().as_secs_f64() * 1e3,
        }));
    }
}

fn report_done(opts: &NodeOptions, conn: &Connection, stats: PipeStats) {
    if opts.json {
        let quic = conn.stats();
        output::event(serde_json::json!({
            "event": "done",
            "bytes_sent": stats.sent,
            "bytes_received": stats.received,
            "seconds": stats.elapsed.as_secs_f64(),
            "rtt_ms": conn.rtt().as_secs_f64() * 1e3,
            "udp_datagrams_sent": quic.udp_tx.datagrams,
            "udp_datagrams_received": quic.udp_rx.datagrams,
            "lost_packets": quic.path.lost_packets,
        }));
    }
}
