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
use keywire::{close_code, Connection, Path, Ticket};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};

use crate::discover::{introductions_json, resolve_json, DiscoveryArgs};
use crate::node::NodeOptions;
use crate::output;

/// The ALPN of the pipe protocol.
pub const PIPE_ALPN: &[u8] = b"keywire/pipe/1";
const PIPE_VERSION: u8 = 1;
const COPY_BUFFER: usize = 256 << 10;
/// How long a connection may take to open the pipe before the listener moves on to the next.
const PIPE_OPEN_WAIT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct ListenArgs {
    /// Local address to bind (default: every interface, IPv6 and IPv4, a free port).
    #[arg(long, default_value = "[::]:0")]
    bind: SocketAddr,
    /// Register with this gate (its ticket, as `keywire gate` prints it) and put it in the
    /// ticket, so that peers who cannot reach this node directly go through the gate. Repeat
    /// for up to four gates.
    #[arg(long = "gate", value_name = "GATE_TICKET")]
    gates: Vec<String>,
    /// Also tell peers this address (e.g. a port forwarded on the router). Repeatable.
    #[arg(long = "announce", value_name = "ADDR")]
    announce: Vec<SocketAddr>,
    /// Also introduce others ("connect via"): run a gate service on this node's port, with a
    /// gate's default limits, so peers connected to it can join it (`--gate` this node's
    /// ticket) and reach each other through it until they go direct.
    #[arg(long)]
    introduce: bool,
    #[command(flatten)]
    discovery: DiscoveryArgs,
}

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    /// The ticket printed by `keywire listen`, or just its node id (kw1...) to find it by key
    /// (`--dht`, `--brokers`, or the address book).
    ticket: String,
    /// Local address to bind.
    #[arg(long, default_value = "[::]:0")]
    bind: SocketAddr,
    #[command(flatten)]
    discovery: DiscoveryArgs,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Listener,
    Connector,
}

pub async fn listen(opts: &NodeOptions, args: &ListenArgs) -> anyhow::Result<()> {
    let endpoint = opts.endpoint_announcing(args.bind, PIPE_ALPN, &args.announce)?;
    // Kept for as long as this command runs: dropping it stops the service.
    let _introducing = if args.introduce {
        let config = keywire::gate::GateConfig::default();
        Some(
            keywire::gate::Gate::spawn(&endpoint, config)
                .await
                .context("cannot start the gate service (--introduce)")?,
        )
    } else {
        None
    };
    let attached = args.discovery.attach(opts, &endpoint, true)?;
    for text in &args.gates {
        let gate: Ticket = text
            .parse()
            .with_context(|| format!("--gate {text}: not a gate ticket"))?;
        endpoint
            .join_gate(&gate.node)
            .await
            .with_context(|| format!("cannot register with the gate {}", gate.node.node_id))?;
    }
    let node_addr = endpoint
        .node_addr()
        .context("cannot list local addresses")?;
    let ticket = Ticket::with_gates(node_addr.clone(), endpoint.joined_gates())
        .context("cannot make a ticket for this node")?;
    if opts.json {
        output::event(serde_json::json!({
            "event": "listening",
            "node_id": endpoint.node_id().to_string(),
            "ticket": ticket.to_string(),
            "direct_addrs": node_addr.direct_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "gates": ticket.gates.iter().map(|g| g.node_id.to_string()).collect::<Vec<_>>(),
            "introduces": args.introduce,
            "channels": attached.channels,
        }));
    } else {
        output::err_line(&ticket.to_string());
        output::err_line(&format!(
            "keywire: listening as {}; on the other side run: keywire connect <the ticket above>",
            endpoint.node_id()
        ));
    }
    if !ticket.gates.is_empty() {
        report_nat(opts, &endpoint);
    }
    // The first connection that opens the pipe is served. One that closes before (a dialer's
    // losing attempt when several raced, e.g. by key) is skipped.
    let (conn, send, mut recv) = loop {
        let conn = endpoint
            .accept()
            .await
            .context("the endpoint closed before anyone connected")?;
        // Bounded, so that a peer that connects and says nothing cannot hold the listener.
        match tokio::time::timeout(PIPE_OPEN_WAIT, conn.accept_bi()).await {
            Ok(Ok((send, recv))) => break (conn, send, recv),
            Ok(Err(e)) => tracing::debug!("a connection closed before opening the pipe: {e}"),
            Err(_) => conn.close(
                VarInt::from_u32(close_code::BUSY),
                b"no pipe opened in time",
            ),
        }
    };
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
    let version = recv
        .read_u8()
        .await
        .context("the peer left before opening the pipe")?;
    if version != PIPE_VERSION {
        bail!("the peer speaks pipe version {version}, this keywire speaks {PIPE_VERSION}");
    }
    let started = Instant::now();
    report_connected(opts, &conn, None, serde_json::json!({}));
    let watcher = PathWatcher::spawn(opts.json, &conn, started);
    let stats = pipe(&conn, send, recv, Side::Listener, started).await?;
    let extra = introductions_json(endpoint.discovery_metrics(), &attached);
    report_done(opts, &endpoint, &conn, stats, watcher.finish(), extra);
    endpoint.wait_idle().await;
    endpoint.close().await;
    drop(attached);
    Ok(())
}

pub async fn connect(opts: &NodeOptions, args: &ConnectArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.ticket)?;
    if matches!(target, Target::Key(_)) && !args.discovery.can_find() && args.discovery.no_book() {
        bail!("a bare node id needs a way to find it: --dht, --brokers or the address book");
    }
    let endpoint = opts.endpoint(args.bind, PIPE_ALPN)?;
    let attached = args.discovery.attach(opts, &endpoint, false)?;
    let started = Instant::now();
    let (conn, extra) = match &target {
        Target::Ticket(ticket) => (
            endpoint.connect_ticket(ticket, PIPE_ALPN).await?,
            serde_json::json!({}),
        ),
        Target::Key(node) => {
            let found = endpoint.connect_by_key(*node, PIPE_ALPN).await?;
            let extra = resolve_json(&found);
            (found.connection, extra)
        }
    };
    let connect_time = started.elapsed();
    if !endpoint.joined_gates().is_empty() {
        report_nat(opts, &endpoint);
    }
    let watcher = PathWatcher::spawn(opts.json, &conn, started);
    let (mut send, recv) = conn
        .open_bi()
        .await
        .context("cannot open the pipe stream")?;
    send.write_all(&[PIPE_VERSION])
        .await
        .context("cannot open the pipe stream")?;
    report_connected(opts, &conn, Some(connect_time), extra);
    let stats = pipe(&conn, send, recv, Side::Connector, started).await?;
    // A path that went direct later is worth remembering too.
    endpoint.remember(&conn);
    conn.close(VarInt::from_u32(close_code::DONE), b"done");
    report_done(
        opts,
        &endpoint,
        &conn,
        stats,
        watcher.finish(),
        serde_json::json!({}),
    );
    endpoint.wait_idle().await;
    endpoint.close().await;
    drop(attached);
    Ok(())
}

/// What `connect` was given.
enum Target {
    Ticket(Ticket),
    Key(keywire::NodeId),
}

impl Target {
    /// A node id (`kw1…`) is dialed by key; anything else must be a ticket, and its parse
    /// error says what is wrong with it.
    fn parse(text: &str) -> anyhow::Result<Self> {
        if text.starts_with("kw1") {
            return Ok(Self::Key(text.parse().context("not a valid node id")?));
        }
        Ok(Self::Ticket(text.parse()?))
    }
}

struct PipeStats {
    sent: u64,
    received: u64,
    elapsed: Duration,
    /// From `started` (the dial, or the listener's accept) to the first byte from the peer.
    first_byte: Option<Duration>,
}

async fn pipe(
    conn: &Connection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    side: Side,
    dialed_at: Instant,
) -> anyhow::Result<PipeStats> {
    let started = Instant::now();
    let mut first_byte = None;
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
        if !recv.fill_buf().await.context("receiving")?.is_empty() {
            first_byte = Some(dialed_at.elapsed());
        }
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
        first_byte,
    })
}

/// Prefers the connection's close reason over a stream error that merely follows from it.
fn explain(conn: &Connection, error: anyhow::Error) -> anyhow::Error {
    match conn.close_reason() {
        Some(reason) => error.context(format!("connection lost: {reason}")),
        None => error,
    }
}

fn report_connected(
    opts: &NodeOptions,
    conn: &Connection,
    connect_time: Option<Duration>,
    extra: serde_json::Value,
) {
    let path = conn.initial_path();
    if opts.json {
        let (kind, gate) = path_json(path);
        output::event(merged(
            serde_json::json!({
                "event": "connected",
                "remote_node_id": conn.remote_node_id().to_string(),
                "remote_addr": keywire::proto::ticket::canonical_addr(conn.remote_address()).to_string(),
                "path": kind,
                "gate": gate,
                "candidates": conn.peer_candidates().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "connect_ms": connect_time.map(|t| t.as_secs_f64() * 1e3),
                "rtt_ms": conn.rtt().as_secs_f64() * 1e3,
            }),
            extra,
        ));
    } else if let Some(by) = extra.get("introduced_by").and_then(|v| v.as_str()) {
        output::err_line(&format!("keywire: connected, {path}; found through {by}"));
    } else if matches!(path, Path::Relayed { .. }) {
        output::err_line(&format!(
            "keywire: connected, {path}; looking for a direct path"
        ));
    }
}

/// Reports (in the background, as a `nat` event) what kind of NAT this node is behind, as its
/// first gate's two ports see it.
fn report_nat(opts: &NodeOptions, endpoint: &keywire::Endpoint) {
    let (json, endpoint) = (opts.json, endpoint.clone());
    tokio::spawn(async move {
        let Some(report) = endpoint.nat_report().await else {
            return;
        };
        let observed = report.observed.map(|a| a.to_string());
        if json {
            output::event(serde_json::json!({
                "event": "nat",
                "mapping": report.mapping.as_str(),
                "port_preserving": report.port_preserving,
                "observed": observed,
                "observers": report.observers,
            }));
        } else {
            output::err_line(&format!(
                "keywire: NAT mapping {}{}, seen as {}",
                report.mapping.as_str(),
                if report.port_preserving {
                    ", port-preserving"
                } else {
                    ""
                },
                observed.as_deref().unwrap_or("?")
            ));
        }
    });
}

/// `("direct" | "relayed" | "relayed (tcp)", gate address or null)` for JSON output.
fn path_json(path: Path) -> (&'static str, serde_json::Value) {
    match path {
        Path::Relayed { gate, .. } => (path.kind(), gate.to_string().into()),
        _ => (path.kind(), serde_json::Value::Null),
    }
}

/// Reports every path change as it happens, and remembers when the path first went direct.
struct PathWatcher {
    task: tokio::task::JoinHandle<()>,
    summary: std::sync::Arc<std::sync::Mutex<PathSummary>>,
}

#[derive(Default, Clone, Copy)]
struct PathSummary {
    changes: u32,
    to_direct: Option<Duration>,
}

impl PathWatcher {
    fn spawn(json: bool, conn: &Connection, started: Instant) -> Self {
        let summary = std::sync::Arc::new(std::sync::Mutex::new(PathSummary {
            changes: 0,
            to_direct: matches!(conn.initial_path(), Path::Direct(_)).then(|| started.elapsed()),
        }));
        let mut events = conn.path_events();
        let shared = summary.clone();
        let task = tokio::spawn(async move {
            while let Some(path) = events.next().await {
                let at = started.elapsed();
                {
                    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                    s.changes += 1;
                    if matches!(path, Path::Direct(_)) && s.to_direct.is_none() {
                        s.to_direct = Some(at);
                    }
                }
                if json {
                    let (kind, gate) = path_json(path);
                    let addr = match path {
                        Path::Direct(addr) => serde_json::Value::from(addr.to_string()),
                        _ => serde_json::Value::Null,
                    };
                    output::event(serde_json::json!({
                        "event": "path",
                        "path": kind,
                        "gate": gate,
                        "addr": addr,
                        "ms": at.as_secs_f64() * 1e3,
                    }));
                } else {
                    output::err_line(&format!(
                        "keywire: path now {path} (at {:.0} ms)",
                        at.as_secs_f64() * 1e3
                    ));
                }
            }
        });
        Self { task, summary }
    }

    fn finish(self) -> PathSummary {
        self.task.abort();
        *self.summary.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn report_done(
    opts: &NodeOptions,
    endpoint: &keywire::Endpoint,
    conn: &Connection,
    stats: PipeStats,
    paths: PathSummary,
    extra: serde_json::Value,
) {
    if opts.json {
        let quic = conn.stats();
        // The endpoint's probe counters (this command serves one connection, so they are this
        // connection's): what hole punching cost, for the NAT lab's matrix.
        let metrics = endpoint.metrics();
        let (kind, gate) = path_json(conn.path());
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        output::event(merged(
            serde_json::json!({
                "event": "done",
                "bytes_sent": stats.sent,
                "bytes_received": stats.received,
                "seconds": stats.elapsed.as_secs_f64(),
                "first_byte_ms": ms(stats.first_byte),
                "path": kind,
                "gate": gate,
                "path_changes": paths.changes,
                "to_direct_ms": ms(paths.to_direct),
                "rtt_ms": conn.rtt().as_secs_f64() * 1e3,
                "udp_datagrams_sent": quic.udp_tx.datagrams,
                "udp_datagrams_received": quic.udp_rx.datagrams,
                "lost_packets": quic.path.lost_packets,
                "probes_sent": metrics.probes_sent,
                "birthday_probes_sent": metrics.birthday_probes_sent,
                "birthday_hits": metrics.birthday_hits,
            }),
            extra,
        ));
    }
}

/// `base` with `extra`'s fields added (both JSON objects).
fn merged(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(base), serde_json::Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}
