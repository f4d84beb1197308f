//! Registering with a gate and asking it for introductions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keywire_proto::gate::message::{
    GateMessage, MessageError, RefusalCode, GATE_PROTOCOL_VERSION, MAX_MESSAGE_LEN,
};
use keywire_proto::{NodeAddr, NodeId};
use tokio::sync::{mpsc, oneshot};

use crate::{ConnectError, Connection, Endpoint};

/// How long a gate may take to answer a registration or an introduction.
const GATE_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a client pings its gate.
const PING_EVERY: Duration = Duration::from_millis(500);
/// A gate that answered no ping for this long counts as dead (its relayed connections move to
/// another gate), whether or not its QUIC connection has timed out yet.
pub(crate) const GATE_SILENT_LIMIT: Duration = Duration::from_secs(2);
/// Introductions others asked for, waiting for [`GateClient::next_introduction`]; more are
/// dropped (the asking side times out and may ask again).
const INTRODUCTION_QUEUE: usize = 16;

/// Why talking to a gate failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// The gate could not be reached.
    #[error("cannot reach the gate: {0}")]
    Connect(#[from] ConnectError),
    /// The gate refused this client.
    #[error("the gate refused us: {}", describe(.code))]
    Refused {
        /// Why.
        code: RefusalCode,
        /// When the gate suggests trying again.
        retry_after: Duration,
    },
    /// The peer asked for is not registered with this gate.
    #[error("{0} is not a client of this gate")]
    NoSuchPeer(NodeId),
    /// The gate sent something keywire does not accept.
    #[error("gate protocol error: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("the gate did not answer within {0:?}")]
    TimedOut(Duration),
    /// The connection to the gate is gone.
    #[error("the connection to the gate closed")]
    Closed,
    /// The node asked to introduce runs no gate service (it did not agree to introduce).
    #[error("{0} does not introduce others (it runs no gate service)")]
    NotIntroducing(NodeId),
    /// The connection to the node asked to introduce is relayed: it cannot be joined as a gate.
    #[error("the connection to {0} is relayed; only a node reached directly can introduce")]
    NotDirect(NodeId),
    /// A stream link (TCP or WebSocket) to the gate could not be opened.
    #[error("cannot open a TCP link to the gate: {0}")]
    Link(#[from] crate::LinkError),
    /// Neither UDP nor a stream link reached the gate.
    #[error("cannot reach the gate over UDP ({udp}) nor over TCP ({tcp})")]
    Unreachable {
        /// What UDP gave.
        udp: Box<ConnectError>,
        /// What the stream link gave.
        tcp: Box<GateError>,
    },
    /// The endpoint already joined as many gates as it may.
    #[error("already joined {0} gates, the most an endpoint may")]
    TooManyGates(usize),
}

fn describe(code: &RefusalCode) -> String {
    match code {
        RefusalCode::GateFull => "GateFull (it serves as many clients as it may)".into(),
        RefusalCode::RateLimited => "RateLimited (too many registrations; wait)".into(),
        RefusalCode::NotAllowed => "NotAllowed (this key is not on its allowlist)".into(),
        other => format!("{other:?}"),
    }
}

/// An introduction: a relay channel to `peer`, and the peer's candidate addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introduction {
    /// The relay channel the gate set up for the pair.
    pub channel: u32,
    /// The other client.
    pub peer: NodeId,
    /// Its candidates: what it announced, then its address as the gate sees it.
    pub candidates: Vec<SocketAddr>,
}

type Pending = Arc<Mutex<HashMap<NodeId, oneshot::Sender<Result<Introduction, GateError>>>>>;

/// A registration with a gate, alive as long as this value (and its connection).
pub struct GateClient {
    conn: Connection,
    send: Arc<tokio::sync::Mutex<quinn::SendStream>>,
    pending: Pending,
    introductions: tokio::sync::Mutex<mpsc::Receiver<Introduction>>,
    session: u64,
    observed: SocketAddr,
    observation_addr: SocketAddr,
    relay_bytes_per_second: u32,
    /// Whether the gate answered a ping lately (shared with the path table).
    alive: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
    /// The stream link the connection runs over, when UDP to the gate got no answer.
    link: Option<super::link_fallback::LinkTask>,
    /// While on a link: checks whether UDP works now (see `watch_udp`).
    udp_watch: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for GateClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.heartbeat.abort();
        if let Some(watch) = &self.udp_watch {
            watch.abort();
        }
        self.conn.close(0u32.into(), b"leaving the gate");
    }
}

impl std::fmt::Debug for GateClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateClient")
            .field("gate", &self.conn.remote_node_id())
            .field("observed", &self.observed)
            .finish()
    }
}

impl GateClient {
    /// Connects to `gate` and registers.
    pub async fn register(endpoint: &Endpoint, gate: &NodeAddr) -> Result<Self, GateError> {
        let (conn, link) = endpoint.connect_gate(gate).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|_| GateError::Closed)?;
        write_message(
            &mut send,
            &GateMessage::Register {
                version: GATE_PROTOCOL_VERSION,
            },
        )
        .await?;
        let answer = tokio::time::timeout(GATE_ANSWER_TIMEOUT, read_message(&mut recv))
            .await
            .map_err(|_| GateError::TimedOut(GATE_ANSWER_TIMEOUT))??;
        let (session, observed, port, rate) = match answer {
            GateMessage::Registered {
                session,
                observed,
                observation_port,
                relay_bytes_per_second,
            } => (session, observed, observation_port, relay_bytes_per_second),
            GateMessage::Refused {
                code,
                retry_after_ms,
            } => {
                return Err(GateError::Refused {
                    code,
                    retry_after: Duration::from_millis(retry_after_ms.into()),
                })
            }
            other => {
                return Err(GateError::Protocol(format!(
                    "expected Registered, got {other:?}"
                )))
            }
        };
        let pending: Pending = Arc::default();
        let (queue, introductions) = mpsc::channel(INTRODUCTION_QUEUE);
        let last_pong = Arc::new(Mutex::new(Instant::now()));
        let alive = Arc::new(AtomicBool::new(true));
        let reader = tokio::spawn(read_answers(
            recv,
            pending.clone(),
            queue,
            last_pong.clone(),
        ));
        let send = Arc::new(tokio::sync::Mutex::new(send));
        let heartbeat = tokio::spawn(heartbeat(
            conn.quinn().clone(),
            send.clone(),
            last_pong,
            alive.clone(),
        ));
        let observation_addr = SocketAddr::new(conn.remote_address().ip(), port);
        let udp_watch = link.as_ref().map(|_| {
            tokio::spawn(watch_udp(
                endpoint.upgrades_handle().clone(),
                observation_addr,
                endpoint.gate_link_config().udp_recheck,
            ))
        });
        Ok(Self {
            observation_addr,
            udp_watch,
            conn,
            send,
            alive,
            heartbeat,
            pending,
            introductions: tokio::sync::Mutex::new(introductions),
            session,
            observed,
            relay_bytes_per_second: rate,
            reader,
            link,
        })
    }

    /// Whether the gate is alive: its connection is up and it answered a ping within the
    /// last two seconds.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && self.conn.close_reason().is_none()
    }

    /// The liveness flag the heartbeat keeps current.
    pub(crate) fn alive_flag(&self) -> Arc<AtomicBool> {
        self.alive.clone()
    }

    /// The session id relay frames must carry.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// This client's address as the gate's main port saw it (its reflexive address).
    pub fn observed_addr(&self) -> SocketAddr {
        self.observed
    }

    /// The gate's second (observation) port.
    pub fn observation_addr(&self) -> SocketAddr {
        self.observation_addr
    }

    /// The gate's main address (where relay frames go).
    pub fn gate_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Whether this registration runs over a stream link (TCP or WebSocket) instead of UDP.
    pub fn over_stream_link(&self) -> bool {
        self.link.is_some()
    }

    /// Bytes per second this client may relay.
    pub fn relay_bytes_per_second(&self) -> u32 {
        self.relay_bytes_per_second
    }

    /// Asks the gate to introduce this client to `peer` (another of its clients), passing on
    /// `candidates`; returns the relay channel and the peer's candidates.
    pub async fn introduce(
        &self,
        peer: NodeId,
        candidates: Vec<SocketAddr>,
    ) -> Result<Introduction, GateError> {
        let (answer, wait) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, answer);
        write_message(
            &mut *self.send.lock().await,
            &GateMessage::Introduce { peer, candidates },
        )
        .await?;
        match tokio::time::timeout(GATE_ANSWER_TIMEOUT, wait).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(GateError::Closed),
            Err(_) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&peer);
                Err(GateError::TimedOut(GATE_ANSWER_TIMEOUT))
            }
        }
    }

    /// The next introduction another client asked for; `None` once the gate is gone.
    pub async fn next_introduction(&self) -> Option<Introduction> {
        self.introductions.lock().await.recv().await
    }
}

/// While a gate is reached over TCP: every `every`, asks its observation port (over UDP) where
/// it sees us; when an answer comes after none did, UDP works now, and relayed connections
/// search for a direct UDP path again (their probes to silent candidates had stopped).
async fn watch_udp(upgrades: Arc<crate::upgrade::Upgrades>, observer: SocketAddr, every: Duration) {
    let mut worked = false;
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let works = upgrades.observe(observer).await.is_some();
        if works && !worked {
            upgrades.udp_works_again();
        }
        worked = works;
    }
}

/// Pings the gate every [`PING_EVERY`] and keeps `alive` current: false once no pong came for
/// [`GATE_SILENT_LIMIT`] or the connection closed. Ends with the connection.
async fn heartbeat(
    conn: quinn::Connection,
    send: Arc<tokio::sync::Mutex<quinn::SendStream>>,
    last_pong: Arc<Mutex<Instant>>,
    alive: Arc<AtomicBool>,
) {
    let mut nonce = 0u64;
    let mut ticks = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            _ = conn.closed() => break,
            _ = ticks.tick() => {}
        }
        nonce += 1;
        // A stream that cannot take 11 bytes within a ping interval is as good as a silent gate.
        let ping =
            async { write_message(&mut *send.lock().await, &GateMessage::Ping { nonce }).await };
        let _ = tokio::time::timeout(PING_EVERY, ping).await;
        let silent = last_pong
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        alive.store(silent < GATE_SILENT_LIMIT, Ordering::Release);
    }
    alive.store(false, Ordering::Release);
}

async fn read_answers(
    mut recv: quinn::RecvStream,
    pending: Pending,
    queue: mpsc::Sender<Introduction>,
    last_pong: Arc<Mutex<Instant>>,
) {
    while let Ok(message) = read_message(&mut recv).await {
        let take = |peer: &NodeId| {
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(peer)
        };
        match message {
            GateMessage::Introduction {
                channel,
                peer,
                candidates,
            } => {
                let introduction = Introduction {
                    channel,
                    peer,
                    candidates,
                };
                match take(&peer) {
                    Some(waiting) => {
                        let _ = waiting.send(Ok(introduction));
                    }
                    None => {
                        let _ = queue.try_send(introduction);
                    }
                }
            }
            GateMessage::NoSuchPeer { peer } => {
                if let Some(waiting) = take(&peer) {
                    let _ = waiting.send(Err(GateError::NoSuchPeer(peer)));
                }
            }
            GateMessage::Pong { .. } => {
                *last_pong.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            }
            _ => break,
        }
    }
}

/// Reads one framed gate message.
pub(crate) async fn read_message(recv: &mut quinn::RecvStream) -> Result<GateMessage, GateError> {
    let mut buf = [0u8; 2 + MAX_MESSAGE_LEN];
    recv.read_exact(&mut buf[..2])
        .await
        .map_err(|_| GateError::Closed)?;
    let total = GateMessage::framed_len(&buf[..2])
        .map_err(protocol)?
        .ok_or_else(|| GateError::Protocol("short length prefix".into()))?;
    recv.read_exact(&mut buf[2..total])
        .await
        .map_err(|_| GateError::Closed)?;
    GateMessage::decode(&buf[..total]).map_err(protocol)
}

/// Writes one framed gate message.
pub(crate) async fn write_message(
    send: &mut quinn::SendStream,
    message: &GateMessage,
) -> Result<(), GateError> {
    let mut out = Vec::with_capacity(64);
    message.encode(&mut out);
    send.write_all(&out).await.map_err(|_| GateError::Closed)
}

fn protocol(error: MessageError) -> GateError {
    GateError::Protocol(error.to_string())
}
