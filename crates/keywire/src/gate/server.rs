//! The gate's serving side: registrations, introductions, and the observation port.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keywire_proto::gate::message::{GateMessage, RefusalCode, GATE_PROTOCOL_VERSION};
use keywire_proto::gate::observe::Observe;
use keywire_proto::gate::GATE_ALPN;
use keywire_proto::NodeId;
use tokio::sync::mpsc;

use super::client::{read_message, write_message};
use super::limits::ByteBucket;
use super::relay;
use super::stream_listener;
use crate::{Connection, ControlKind, Endpoint};

/// Limits of a gate. Every table is bounded by them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GateConfig {
    /// Most clients registered at once; more are refused with `GateFull`.
    pub max_clients: usize,
    /// Bytes per second each client may relay (token bucket).
    pub relay_bytes_per_second: u32,
    /// Bytes a client may relay in one burst.
    pub relay_burst: u32,
    /// If set, only these keys may register (`NotAllowed` for others).
    pub allow: Option<HashSet<NodeId>>,
    /// Most relay channels one client may take part in.
    pub max_channels_per_client: usize,
    /// Relay frames waiting for the relay loop; more are dropped and counted.
    pub relay_queue: usize,
    /// Registrations one IP address may make in a burst, refilled one per 6 s; more are
    /// refused with `RateLimited`.
    pub registrations_per_ip: u32,
    /// Whether to accept stream links (TCP and WebSocket, for clients whose networks block
    /// UDP) on the same port number as the UDP port. Default on. If that TCP port is taken,
    /// `Gate::spawn` fails — unless the operating system picked the UDP port (bound with port
    /// 0), in which case the gate runs without TCP there (see [`Gate::link_addrs`]).
    pub stream_links: bool,
    /// More addresses to accept stream links on (e.g. port 443, or behind a reverse proxy).
    pub extra_link_addrs: Vec<SocketAddr>,
    /// Most stream links open at once, over all link addresses; more are closed at once and
    /// counted.
    pub max_links: usize,
    /// Most stream links open at once from one IP address (an IPv6 /64), so one host cannot
    /// hold every slot. Generous: a hotel or office NAT hides many clients behind one address.
    /// Behind a reverse proxy every client has the proxy's address: raise it there.
    pub max_links_per_ip: usize,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            max_clients: 1024,
            relay_bytes_per_second: 4 << 20,
            relay_burst: 512 << 10,
            allow: None,
            max_channels_per_client: 64,
            relay_queue: 4096,
            registrations_per_ip: 10,
            stream_links: true,
            extra_link_addrs: Vec::new(),
            max_links: 1024,
            max_links_per_ip: 128,
        }
    }
}

crate::metrics::counter_set! {
    /// Live counters of a gate.
    live Counters;
    /// A gate's counters at one moment.
    snapshot GateMetrics;
    /// Clients registered.
    registered,
    /// Registrations refused: gate full.
    refused_full,
    /// Registrations refused: key not allowed.
    refused_not_allowed,
    /// Registrations refused: too many from one IP address.
    refused_rate_limited,
    /// Introductions made (one per pair).
    introductions,
    /// Introductions asked for a peer that is not registered.
    no_such_peer,
    /// Frames relayed.
    frames_relayed,
    /// Payload bytes relayed.
    bytes_relayed,
    /// Frames dropped: malformed.
    frames_malformed,
    /// Frames dropped: unknown session, or not from the address the session registered from.
    frames_unregistered,
    /// Frames dropped: the channel does not exist or does not include the sender.
    frames_unknown_channel,
    /// Frames dropped: the sender's relay budget is spent.
    frames_rate_limited,
    /// Observation requests answered on the second port.
    observations,
    /// Stream links (TCP or WebSocket) accepted.
    links_accepted,
    /// Stream links refused: over `max_links` or `max_links_per_ip`, or not a link (wrong
    /// preamble, bad upgrade, too slow to start).
    links_refused,
}

impl Counters {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) struct Session {
    pub(crate) node: NodeId,
    pub(crate) addr: SocketAddr,
    pub(crate) bucket: ByteBucket,
    notify: mpsc::Sender<GateMessage>,
    channels: Vec<u32>,
    /// Whether the client reaches us over a stream link: its address then is the link's, no
    /// candidate for anyone's UDP.
    over_link: bool,
}

impl Session {
    /// The address to hand to peers as a candidate for reaching this client directly.
    fn candidate(&self) -> Option<SocketAddr> {
        (!self.over_link).then_some(self.addr)
    }
}

/// Two sessions joined by the gate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Channel {
    pub(crate) a: u64,
    pub(crate) b: u64,
}

#[derive(Default)]
pub(crate) struct Sessions {
    pub(crate) by_id: HashMap<u64, Session>,
    by_node: HashMap<NodeId, u64>,
    pub(crate) channels: HashMap<u32, Channel>,
    next_channel: u32,
    registrations: HashMap<IpAddr, ByteBucket>,
}

pub(crate) struct State {
    pub(crate) config: GateConfig,
    pub(crate) sessions: Mutex<Sessions>,
    pub(crate) counters: Counters,
}

impl State {
    pub(crate) fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // Updates keep the tables consistent before anything can panic.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running gate. Dropping it stops the relay loop and the observation port.
pub struct Gate {
    state: Arc<State>,
    observation_addr: SocketAddr,
    link_addrs: Vec<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Gate {
    /// Makes `endpoint` a gate: it accepts registrations (ALPN `keywire/gate/1`), relays frames
    /// on its UDP port, and answers observation requests on a second UDP port (the next port
    /// number if free, else any).
    pub async fn spawn(endpoint: &Endpoint, config: GateConfig) -> std::io::Result<Self> {
        let main = endpoint.local_addr()?;
        let ip = main.ip();
        let observer =
            match tokio::net::UdpSocket::bind(SocketAddr::new(ip, main.port().wrapping_add(1)))
                .await
            {
                Ok(socket) => socket,
                Err(_) => tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0)).await?,
            };
        let observation_addr = observer.local_addr()?;
        let state = Arc::new(State {
            config,
            sessions: Mutex::default(),
            counters: Counters::default(),
        });
        let relay_channel = endpoint.control_channel(ControlKind::Relay, state.config.relay_queue);
        let mut tasks = vec![tokio::spawn(relay::run(state.clone(), relay_channel))];
        tasks.push(tokio::spawn(observe(state.clone(), observer)));
        let mut link_addrs = Vec::new();
        if state.config.stream_links {
            let limits = Arc::new(stream_listener::LinkLimits::new(state.config.max_links));
            let mut addrs = vec![main];
            addrs.extend(state.config.extra_link_addrs.iter().copied());
            for addr in addrs {
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(listener) => listener,
                    // The OS picked the UDP port, and that number is taken for TCP (by any
                    // outgoing connection, say): no TCP links on it. Nobody chose the port, so
                    // no ticket promised TCP there; a gate meant for UDP-blocked clients runs
                    // on a fixed port.
                    Err(e) if addr == main && endpoint.has_ephemeral_port() => {
                        tracing::warn!(%addr, error = %e, "no TCP links on the gate's OS-picked port");
                        continue;
                    }
                    // A chosen port: failing loudly beats a gate that silently serves no one
                    // behind a UDP block.
                    Err(e) => {
                        return Err(std::io::Error::new(
                            e.kind(),
                            format!(
                                "cannot accept TCP links on {addr} (GateConfig::stream_links): {e}"
                            ),
                        ))
                    }
                };
                link_addrs.push(listener.local_addr()?);
                let socket = endpoint.socket_handle().clone();
                tasks.push(tokio::spawn(stream_listener::listen(
                    state.clone(),
                    socket,
                    listener,
                    limits.clone(),
                )));
            }
        }
        let serving = state.clone();
        let links = endpoint.socket_handle().links.clone();
        let port = observation_addr.port();
        endpoint
            .register(GATE_ALPN.to_vec(), move |conn: Connection| {
                let state = serving.clone();
                let links = links.clone();
                async move { serve_client(state, conn, port, &links).await }
            })
            .map_err(std::io::Error::other)?;
        Ok(Self {
            state,
            observation_addr,
            link_addrs,
            tasks,
        })
    }

    /// Counters.
    pub fn metrics(&self) -> GateMetrics {
        self.state.counters.snapshot()
    }

    /// The second port's address.
    pub fn observation_addr(&self) -> SocketAddr {
        self.observation_addr
    }

    /// Where stream links (TCP and WebSocket) are accepted; empty if they are off.
    pub fn link_addrs(&self) -> &[SocketAddr] {
        &self.link_addrs
    }

    /// Clients registered now.
    pub fn clients(&self) -> usize {
        self.state.sessions().by_id.len()
    }
}

/// Answers observation requests; the reply is never larger than the request.
async fn observe(state: Arc<State>, socket: tokio::net::UdpSocket) {
    let mut buf = [0u8; 128];
    while let Ok((len, from)) = socket.recv_from(&mut buf).await {
        if let Some(Observe::Request { nonce }) = Observe::decode(&buf[..len]) {
            let reply = Observe::Reply {
                nonce,
                observed: keywire_proto::ticket::canonical_addr(from),
            }
            .encode();
            if reply.len() <= len {
                Counters::inc(&state.counters.observations);
                let _ = socket.send_to(&reply, from).await;
            }
        }
    }
}

/// Serves one registered client for the life of its connection.
/// Requests from one client read but not yet handled; the reader waits when it is full.
const CLIENT_REQUEST_QUEUE: usize = 8;

async fn serve_client(
    state: Arc<State>,
    conn: Connection,
    observation_port: u16,
    links: &crate::socket::links::Links,
) {
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let Ok(GateMessage::Register {
        version: GATE_PROTOCOL_VERSION,
    }) = read_message(&mut recv).await
    else {
        return;
    };
    let node = conn.remote_node_id();
    let addr = conn.remote_address();
    // A client over a stream link is seen at the TCP connection's far end.
    let link_peer = links.peer_of(&addr);
    let seen = link_peer.unwrap_or(addr);
    let (notify, mut introductions) = mpsc::channel(16);
    let client = Client {
        node,
        addr,
        seen_ip: seen.ip(),
        over_link: link_peer.is_some(),
    };
    let session = match admit(&state, client, notify) {
        Ok(session) => session,
        Err(code) => {
            let _ = write_message(
                &mut send,
                &GateMessage::Refused {
                    code,
                    retry_after_ms: 6000,
                },
            )
            .await;
            let _ = send.finish();
            let _ = send.stopped().await;
            return;
        }
    };
    let registered = GateMessage::Registered {
        session,
        observed: seen,
        observation_port,
        relay_bytes_per_second: state.config.relay_bytes_per_second,
    };
    if write_message(&mut send, &registered).await.is_ok() {
        // Reading a message is not cancel-safe (a half-read frame would be lost), so it runs
        // on its own task and hands whole messages over.
        let (requests_tx, mut requests) = mpsc::channel(CLIENT_REQUEST_QUEUE);
        let reader = tokio::spawn(async move {
            while let Ok(message) = read_message(&mut recv).await {
                if requests_tx.send(message).await.is_err() {
                    break;
                }
            }
        });
        loop {
            let out = tokio::select! {
                message = requests.recv() => match message {
                    Some(GateMessage::Introduce { peer, candidates }) => {
                        introduce(&state, session, peer, candidates);
                        continue;
                    }
                    Some(GateMessage::Ping { nonce }) => GateMessage::Pong { nonce },
                    _ => break,
                },
                Some(out) = introductions.recv() => out,
            };
            if write_message(&mut send, &out).await.is_err() {
                break;
            }
        }
        reader.abort();
    }
    leave(&state, session);
}

/// Who asks to register.
struct Client {
    node: NodeId,
    /// Where its datagrams come from (for a stream link, the link's address).
    addr: SocketAddr,
    /// Its IP address as seen (for a stream link, the TCP connection's), for the rate limit.
    seen_ip: IpAddr,
    over_link: bool,
}

fn admit(
    state: &State,
    client: Client,
    notify: mpsc::Sender<GateMessage>,
) -> Result<u64, RefusalCode> {
    let Client {
        node,
        addr,
        seen_ip,
        over_link,
    } = client;
    let config = &state.config;
    let counters = &state.counters;
    if config
        .allow
        .as_ref()
        .is_some_and(|allow| !allow.contains(&node))
    {
        Counters::inc(&counters.refused_not_allowed);
        return Err(RefusalCode::NotAllowed);
    }
    let now = Instant::now();
    let mut sessions = state.sessions();
    // Bound the per-IP table: when full, forget every bucket (a burst of new IPs then gets
    // fresh budgets, which the client cap still bounds).
    if sessions.registrations.len() >= 4 * config.max_clients {
        sessions.registrations.clear();
    }
    let burst = config.registrations_per_ip.max(1);
    let bucket = sessions
        .registrations
        .entry(seen_ip)
        .or_insert_with(|| ByteBucket::new(1, burst * 6, now));
    // One "byte" per 6 s of refill: `burst` registrations, then one every 6 s.
    if !bucket.take(6, now) {
        Counters::inc(&counters.refused_rate_limited);
        return Err(RefusalCode::RateLimited);
    }
    // A client registering again replaces its old session.
    if let Some(old) = sessions.by_node.get(&node).copied() {
        drop(sessions);
        leave(state, old);
        sessions = state.sessions();
    }
    if sessions.by_id.len() >= config.max_clients {
        Counters::inc(&counters.refused_full);
        return Err(RefusalCode::GateFull);
    }
    let mut id: u64 = rand::random();
    while id == 0 || sessions.by_id.contains_key(&id) {
        id = rand::random();
    }
    let bucket = ByteBucket::new(config.relay_bytes_per_second, config.relay_burst, now);
    sessions.by_id.insert(
        id,
        Session {
            node,
            addr,
            bucket,
            notify,
            channels: Vec::new(),
            over_link,
        },
    );
    sessions.by_node.insert(node, id);
    Counters::inc(&counters.registered);
    Ok(id)
}

/// Sets up (or finds) the channel between `asking` and `peer` and introduces each to the other.
fn introduce(state: &State, asking: u64, peer: NodeId, candidates: Vec<SocketAddr>) {
    let mut sessions = state.sessions();
    let Some(peer_id) = sessions.by_node.get(&peer).copied() else {
        if let Some(s) = sessions.by_id.get(&asking) {
            let _ = s.notify.try_send(GateMessage::NoSuchPeer { peer });
        }
        Counters::inc(&state.counters.no_such_peer);
        return;
    };
    let (Some(a), Some(b)) = (sessions.by_id.get(&asking), sessions.by_id.get(&peer_id)) else {
        return;
    };
    let limit = state.config.max_channels_per_client;
    if peer_id == asking || a.channels.len() >= limit || b.channels.len() >= limit {
        return;
    }
    let existing = a.channels.iter().copied().find(|c| b.channels.contains(c));
    let (a_node, a_addr, b_node, b_addr) = (a.node, a.candidate(), b.node, b.candidate());
    let channel = match existing {
        Some(channel) => channel,
        None => {
            let channel = loop {
                sessions.next_channel = sessions.next_channel.wrapping_add(1);
                let c = sessions.next_channel;
                if c != 0 && !sessions.channels.contains_key(&c) {
                    break c;
                }
            };
            sessions.channels.insert(
                channel,
                Channel {
                    a: asking,
                    b: peer_id,
                },
            );
            for id in [asking, peer_id] {
                if let Some(s) = sessions.by_id.get_mut(&id) {
                    s.channels.push(channel);
                }
            }
            channel
        }
    };
    Counters::inc(&state.counters.introductions);
    // Each side learns the other's announced candidates, then its reflexive address as seen here.
    let mut for_peer = candidates;
    for_peer.extend(a_addr);
    let to_peer = GateMessage::Introduction {
        channel,
        peer: a_node,
        candidates: for_peer,
    };
    let to_asking = GateMessage::Introduction {
        channel,
        peer: b_node,
        candidates: b_addr.into_iter().collect(),
    };
    if let Some(s) = sessions.by_id.get(&peer_id) {
        let _ = s.notify.try_send(to_peer);
    }
    if let Some(s) = sessions.by_id.get(&asking) {
        let _ = s.notify.try_send(to_asking);
    }
}

/// Forgets a session and every channel it was part of.
fn leave(state: &State, session: u64) {
    let mut sessions = state.sessions();
    let Some(gone) = sessions.by_id.remove(&session) else {
        return;
    };
    if sessions.by_node.get(&gone.node) == Some(&session) {
        sessions.by_node.remove(&gone.node);
    }
    for channel in gone.channels {
        if let Some(pair) = sessions.channels.remove(&channel) {
            let other = if pair.a == session { pair.b } else { pair.a };
            if let Some(s) = sessions.by_id.get_mut(&other) {
                s.channels.retain(|c| *c != channel);
            }
        }
    }
}
