//! Moving relayed connections to direct paths, and back when a direct path dies.
//!
//! The protocol and its timing live in [`keywire_proto::probe`] (sans-IO). Here, each relayed
//! connection gets a task that feeds its [`Prober`] with time and with the probe packets for its
//! connection tag, sends what it asks to send, and applies its decisions to the path table:
//! `UseDirect` and `UseRelay` switch the route quinn's packets take (quinn never notices; the
//! congestion controller restarts, see `socket::congestion`), `AcceptFrom` lets packets the peer
//! sends from a proven address in. One dispatcher task per endpoint hands incoming probe
//! packets to the task of their connection.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keywire_proto::datagram::{ControlKind, ControlPacket};
use keywire_proto::gate::observe::Observe;
use keywire_proto::nat::NatReport;
use keywire_proto::probe::punch::PunchConfig;
use keywire_proto::probe::signal::is_signal;
use keywire_proto::probe::{
    is_path_probe, tag_of, ConnTag, Decision, ProbeKeys, Prober, ProberConfig, PROBE_EXPORTER_LABEL,
};
use keywire_proto::{NodeId, Role};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

mod punching;

use crate::metrics::Metrics;
use crate::socket::paths::{PathTable, Route};
use crate::socket::{ControlDatagram, KeywireSocket};

/// Observation requests sent before giving up, and the wait for each reply.
const OBSERVE_TRIES: usize = 3;
const OBSERVE_WAIT: Duration = Duration::from_millis(500);
/// Observations in flight at once.
const MAX_OBSERVATIONS: usize = 64;
/// Probe packets waiting for one connection's task; more are dropped (the prober retries).
const PER_CONNECTION_QUEUE: usize = 32;
/// Probe packets waiting for the dispatcher.
pub(crate) const DISPATCH_QUEUE: usize = 256;

/// The endpoint's probing: which connection tag belongs to which task.
#[derive(Debug)]
pub(crate) struct Upgrades {
    socket: Arc<KeywireSocket>,
    paths: Arc<PathTable>,
    metrics: Arc<Metrics>,
    config: ProberConfig,
    /// Addresses to tell peers besides the bound ones.
    pub(crate) announce: Vec<SocketAddr>,
    enabled: bool,
    rerouter: RerouterCell,
    /// Address observations waiting for their reply, by nonce.
    observations: Mutex<HashMap<u64, oneshot::Sender<SocketAddr>>>,
    connections: Mutex<HashMap<ConnTag, mpsc::Sender<ControlDatagram>>>,
    /// Bumped when UDP starts working for a node that reached a gate over TCP: every relayed
    /// connection searches for a direct path again (see [`Prober::network_changed`]).
    udp_works_again: tokio::sync::watch::Sender<u64>,
    punch_config: PunchConfig,
    /// One birthday attempt per node at a time (either side): its permit.
    birthday_permit: Arc<tokio::sync::Semaphore>,
    /// Birthday attempts per peer key, over all its connections.
    birthday_budget: punching::PeerBudget,
    nat_source: NatSourceCell,
    /// The latest NAT report and when it was made.
    nat_cache: tokio::sync::Mutex<Option<(Instant, NatReport)>>,
    /// Our public addresses as discovery learned them (an observer, the DHT's votes): told to
    /// peers with the gates' observations.
    discovered_reflexive: Mutex<Vec<SocketAddr>>,
}

/// How long a NAT report is reused before asking the gate again.
const NAT_REPORT_FRESH: Duration = Duration::from_secs(60);
/// Longest wait for a NAT report.
const NAT_REPORT_LIMIT: Duration = Duration::from_secs(5);

/// Finds out this node's NAT kind (the endpoint provides it: `Endpoint::nat_report`).
pub(crate) type NatSource =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<NatReport>> + Send>> + Send + Sync>;

#[derive(Default)]
struct NatSourceCell(std::sync::OnceLock<NatSource>);

impl std::fmt::Debug for NatSourceCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatSource")
    }
}

/// Kept by every clone of a [`crate::Connection`]; when the last one goes, the connection's
/// probing task ends (and with it its handle on the QUIC connection, so quinn can close it).
#[derive(Debug)]
pub(crate) struct UpgradeGuard {
    _stop: oneshot::Sender<()>,
}

impl Upgrades {
    pub(crate) fn new(
        socket: Arc<KeywireSocket>,
        paths: Arc<PathTable>,
        metrics: Arc<Metrics>,
        announce: Vec<SocketAddr>,
        enabled: bool,
    ) -> Self {
        Self {
            socket,
            paths,
            metrics,
            config: ProberConfig::default(),
            announce,
            enabled,
            rerouter: RerouterCell::default(),
            observations: Mutex::default(),
            connections: Mutex::default(),
            udp_works_again: tokio::sync::watch::Sender::new(0),
            punch_config: PunchConfig::default(),
            birthday_permit: Arc::new(tokio::sync::Semaphore::new(1)),
            birthday_budget: punching::PeerBudget::default(),
            nat_source: NatSourceCell::default(),
            nat_cache: tokio::sync::Mutex::default(),
            discovered_reflexive: Mutex::default(),
        }
    }

    /// Sets how this node finds out its NAT kind (the endpoint provides it).
    pub(crate) fn set_nat_source(&self, source: NatSource) {
        let _ = self.nat_source.0.set(source);
    }

    /// This node's NAT report: the cached one while fresh, else a new one (bounded in time;
    /// `None` without a gate reached over UDP).
    pub(crate) async fn local_nat(&self) -> Option<NatReport> {
        let mut cache = self.nat_cache.lock().await;
        if let Some((at, report)) = cache.as_ref() {
            if at.elapsed() < NAT_REPORT_FRESH {
                return Some(report.clone());
            }
        }
        let source = self.nat_source.0.get()?.clone();
        let report = tokio::time::timeout(NAT_REPORT_LIMIT, source())
            .await
            .ok()??;
        *cache = Some((Instant::now(), report.clone()));
        Some(report)
    }

    /// UDP works again where it did not (a gate reached over TCP answered over UDP): relayed
    /// connections search for a direct path anew, candidates that stayed silent included.
    pub(crate) fn udp_works_again(&self) {
        self.udp_works_again.send_modify(|n| *n += 1);
    }

    /// Our candidate addresses, for the peer of a new connection: announced, bound or
    /// interface addresses, then our addresses as our gates see them.
    pub(crate) fn local_candidates(&self) -> Vec<SocketAddr> {
        let mut addrs = self
            .socket
            .real_local_addr()
            .and_then(|local| crate::endpoint::direct_addrs(local, &self.announce))
            .unwrap_or_default();
        let mut observed = self.paths.gate_observed_addrs();
        for addr in self.discovered_reflexive() {
            if !observed.contains(&addr) {
                observed.push(addr);
            }
        }
        observed.retain(|a| !addrs.contains(a));
        observed.truncate(crate::handshake::MAX_CANDIDATES / 2);
        // Room for every reflexive address: behind a NAT it is the one that works.
        addrs.truncate(crate::handshake::MAX_CANDIDATES - observed.len());
        addrs.extend(observed);
        addrs
    }

    /// Replaces the public addresses discovery learned (at most a handful; see
    /// `discovery::advertise`).
    pub(crate) fn set_discovered_reflexive(&self, addrs: Vec<SocketAddr>) {
        *self
            .discovered_reflexive
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = addrs;
    }

    pub(crate) fn discovered_reflexive(&self) -> Vec<SocketAddr> {
        self.discovered_reflexive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnTag, mpsc::Sender<ControlDatagram>>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands each incoming probe to its connection's task, until the socket's queue closes.
    pub(crate) async fn dispatch(self: Arc<Self>, mut incoming: mpsc::Receiver<ControlDatagram>) {
        while let Some(datagram) = incoming.recv().await {
            if !is_path_probe(&datagram.payload) {
                // The other user of the kind: a gate's answer to an address observation.
                if !self.observation_answered(&datagram.payload) {
                    Metrics::inc(&self.metrics.probes_refused);
                }
                continue;
            }
            let queue = tag_of(&datagram.payload).and_then(|tag| self.lock().get(&tag).cloned());
            let delivered = queue.is_some_and(|q| q.try_send(datagram).is_ok());
            if !delivered {
                Metrics::inc(&self.metrics.probes_refused);
            }
        }
    }

    /// Hands an observation reply to whoever waits for its nonce; false if nobody does.
    fn observation_answered(&self, payload: &[u8]) -> bool {
        let datagram = probe_packet(payload);
        let Some(Observe::Reply { nonce, observed }) = Observe::decode(&datagram) else {
            return false;
        };
        let waiter = self
            .observations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&nonce);
        waiter.is_some_and(|w| w.send(observed).is_ok())
    }

    /// Asks the observer at `to` (a gate's observation port) which address it sees us at, from
    /// our one socket: up to [`OBSERVE_TRIES`] requests, [`OBSERVE_WAIT`] apart.
    pub(crate) async fn observe(&self, to: SocketAddr) -> Option<SocketAddr> {
        let nonce: u64 = rand::random();
        let (answer, mut wait) = oneshot::channel();
        {
            let mut waiting = self.observations.lock().unwrap_or_else(|p| p.into_inner());
            if waiting.len() >= MAX_OBSERVATIONS {
                return None;
            }
            waiting.insert(nonce, answer);
        }
        let request = Observe::Request { nonce }.encode();
        let mut result = None;
        for _ in 0..OBSERVE_TRIES {
            let _ = self.socket.send_control(to, &request).await;
            if let Ok(Ok(observed)) = tokio::time::timeout(OBSERVE_WAIT, &mut wait).await {
                result = Some(observed);
                break;
            }
        }
        self.observations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&nonce);
        result
    }

    /// Sets how a connection whose gate died finds another (the endpoint provides it).
    pub(crate) fn set_rerouter(&self, rerouter: Rerouter) {
        let _ = self.rerouter.0.set(rerouter);
    }

    /// For a relayed `conn`: starts the task that probes `peer_candidates` to go direct (when
    /// enabled) and moves the connection to another gate when its gate dies. Returns the guard
    /// the connection keeps; `None` for a direct connection.
    pub(crate) fn start(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        role: Role,
        peer: NodeId,
        peer_candidates: &[SocketAddr],
    ) -> Option<UpgradeGuard> {
        let virtual_addr = conn.remote_address();
        let Route::Relayed { .. } = self.paths.route_of(&virtual_addr)? else {
            return None;
        };
        // Candidates our socket cannot send to (the other address family) are left out.
        let local = self.socket.real_local_addr().ok();
        let peer_candidates: Vec<SocketAddr> = peer_candidates
            .iter()
            .copied()
            .filter(|c| local.is_none_or(|l| can_reach(l, *c)))
            .collect();
        let peer_candidates = &peer_candidates[..];
        // Even with no candidate to try, the prober answers the peer's probes (and checks where
        // they come from), so the peer can find the way.
        let (prober, punching) = if self.enabled {
            let mut exported = [0u8; 32];
            conn.export_keying_material(&mut exported, PROBE_EXPORTER_LABEL, b"")
                .ok()?;
            let keys = ProbeKeys::from_exported(exported);
            let mut seed = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut seed);
            let punching = punching::Punching::new(self, keys.clone(), role, peer, peer_candidates);
            let prober = Prober::new(
                keys,
                role,
                self.config.clone(),
                peer_candidates,
                Instant::now(),
                seed,
            );
            (Some(prober), Some(punching))
        } else {
            (None, None)
        };
        let (queue, inbox) = mpsc::channel(PER_CONNECTION_QUEUE);
        let tag = prober.as_ref().map(|p| p.tag());
        if let Some(tag) = tag {
            self.lock().insert(tag, queue);
        }
        let (stop, stopped) = oneshot::channel();
        let task = Task {
            upgrades: self.clone(),
            tag,
            conn: conn.clone(),
            peer,
            virtual_addr,
            prober,
            punching,
            inbox,
            last_reroute: None,
            rerouting: None,
            udp_works_again: self.udp_works_again.subscribe(),
        };
        tokio::spawn(async move {
            task.run(stopped).await;
        });
        Some(UpgradeGuard { _stop: stop })
    }
}

/// A control packet of the probe kind around `payload` (a path probe, a punch signal, or an
/// address observation).
pub(crate) fn probe_packet(payload: &[u8]) -> Vec<u8> {
    let mut packet =
        Vec::with_capacity(payload.len() + keywire_proto::datagram::CONTROL_HEADER_LEN);
    ControlPacket {
        kind: ControlKind::Probe,
        payload,
    }
    .encode(&mut packet);
    packet
}

/// Whether a socket bound at `local` can send to `to`: an IPv4 socket only to IPv4, a socket on
/// a specific IPv6 address only to IPv6, a dual-stack one (`[::]`) to both.
pub(crate) fn can_reach(local: SocketAddr, to: SocketAddr) -> bool {
    match local {
        SocketAddr::V4(_) => to.is_ipv4(),
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => true,
        SocketAddr::V6(_) => to.is_ipv6(),
    }
}

/// Finds another relay to `peer` when the gate at the given address died: joins another gate
/// and asks it for an introduction. Returns the new route, if any gate could.
pub(crate) type Rerouter = Arc<
    dyn Fn(NodeId, SocketAddr) -> Pin<Box<dyn Future<Output = Option<Route>> + Send>> + Send + Sync,
>;

/// Holds the [`Rerouter`] once the endpoint has set it.
#[derive(Default)]
struct RerouterCell(std::sync::OnceLock<Rerouter>);

impl std::fmt::Debug for RerouterCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Rerouter"
        } else {
            "NoRerouter"
        })
    }
}

/// How often a relayed connection checks that its gate is alive.
const GATE_CHECK_EVERY: Duration = Duration::from_millis(500);
/// Least time between two attempts to move to another gate.
const REROUTE_BACKOFF: Duration = Duration::from_secs(2);

struct Task {
    upgrades: Arc<Upgrades>,
    tag: Option<ConnTag>,
    conn: quinn::Connection,
    peer: NodeId,
    virtual_addr: SocketAddr,
    /// `None` when going direct is off (then the task only watches the gate).
    prober: Option<Prober>,
    /// NAT kinds and birthday probing; `None` when going direct is off.
    punching: Option<punching::Punching>,
    inbox: mpsc::Receiver<ControlDatagram>,
    last_reroute: Option<Instant>,
    /// The background search for another relay, while one runs.
    rerouting: Option<oneshot::Receiver<Option<Route>>>,
    udp_works_again: tokio::sync::watch::Receiver<u64>,
}

impl Task {
    async fn run(mut self, mut stopped: oneshot::Receiver<()>) {
        let mut gate_check = tokio::time::interval(GATE_CHECK_EVERY);
        loop {
            self.flush().await;
            let punch_wake = self.punching.as_ref().and_then(|p| p.poll_timeout());
            let wake = match (
                self.prober.as_ref().and_then(|p| p.poll_timeout()),
                punch_wake,
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let rerouting = async {
                match self.rerouting.as_mut() {
                    Some(answer) => answer.await,
                    None => std::future::pending().await,
                }
            };
            let punch_event = async {
                match self.punching.as_mut() {
                    Some(punching) => punching.next_event().await,
                    None => std::future::pending().await,
                }
            };
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stopped => break,
                _ = self.conn.closed() => break,
                event = punch_event => {
                    if let Some(punching) = self.punching.as_mut() {
                        punching.on_event(&self.upgrades, event, Instant::now());
                    }
                }
                datagram = self.inbox.recv(), if self.prober.is_some() => {
                    let Some(datagram) = datagram else { break };
                    let accepted = self.handle_probe(datagram);
                    let up = &self.upgrades.metrics;
                    Metrics::inc(if accepted { &up.probes_accepted } else { &up.probes_refused });
                }
                () = sleep => {
                    let now = Instant::now();
                    if let Some(prober) = self.prober.as_mut() {
                        prober.handle_timeout(now);
                    }
                    if let Some(punching) = self.punching.as_mut() {
                        punching.on_timeout(now);
                    }
                }
                _ = gate_check.tick() => self.check_gate(),
                found = rerouting => self.rerouted(found.ok().flatten()),
                Ok(()) = self.udp_works_again.changed() => {
                    if let Some(prober) = self.prober.as_mut() {
                        prober.network_changed(Instant::now());
                    }
                }
            }
        }
        if let Some(tag) = self.tag {
            self.upgrades.lock().remove(&tag);
        }
    }

    /// Hands a probe or punch signal to its state machine; false if refused. Signals count
    /// only through the relay (they arrive under the path's virtual address), probes only
    /// from real addresses.
    fn handle_probe(&mut self, datagram: ControlDatagram) -> bool {
        let now = Instant::now();
        let through_relay = datagram.from == self.virtual_addr;
        if is_signal(&datagram.payload) {
            return through_relay
                && self
                    .punching
                    .as_mut()
                    .is_some_and(|p| p.on_signal(&datagram.payload, now));
        }
        if through_relay {
            return false;
        }
        self.prober
            .as_mut()
            .is_some_and(|p| p.handle(datagram.from, &datagram.payload, now).is_ok())
    }

    /// If the gate of our relay died, starts looking for another relay in the background (the
    /// task goes on probing and keeping its direct path alive meanwhile; see
    /// [`Task::rerouted`]).
    fn check_gate(&mut self) {
        if self.rerouting.is_some() {
            return;
        }
        let up = self.upgrades.clone();
        let Some(Route::Relayed { gate, .. }) = up.paths.relay_of(&self.virtual_addr) else {
            return;
        };
        if up.paths.gate_alive(&gate) {
            return;
        }
        if self
            .last_reroute
            .is_some_and(|at| at.elapsed() < REROUTE_BACKOFF)
        {
            return;
        }
        self.last_reroute = Some(Instant::now());
        let Some(rerouter) = up.rerouter.0.get().cloned() else {
            return;
        };
        let (answer, rerouting) = oneshot::channel();
        let peer = self.peer;
        tokio::spawn(async move {
            // Bounded: joining a gate and an introduction each give up after a few seconds.
            let found = tokio::time::timeout(REROUTE_LIMIT, rerouter(peer, gate)).await;
            let _ = answer.send(found.ok().flatten());
        });
        self.rerouting = Some(rerouting);
    }

    /// Moves the relay (and the connection with it, if it is relayed right now) to the route
    /// the background search found.
    fn rerouted(&mut self, found: Option<Route>) {
        self.rerouting = None;
        let up = &self.upgrades;
        if let Some(route) = found {
            if up
                .paths
                .move_relay(self.virtual_addr, route, Instant::now())
            {
                Metrics::inc(&up.metrics.gate_failovers);
            }
        }
    }

    /// Sends the probes and applies the decisions the prober has queued.
    async fn flush(&mut self) {
        let up = &self.upgrades;
        let Some(prober) = self.prober.as_mut() else {
            return;
        };
        while let Some(decision) = prober.poll_decision() {
            let now = Instant::now();
            match decision {
                Decision::UseDirect(addr) => {
                    if up.paths.switch(self.virtual_addr, Route::Direct(addr), now) {
                        Metrics::inc(&up.metrics.path_upgrades);
                    }
                }
                Decision::UseRelay => {
                    let relay = up.paths.relay_of(&self.virtual_addr);
                    if relay.is_some_and(|r| up.paths.switch(self.virtual_addr, r, now)) {
                        Metrics::inc(&up.metrics.path_fallbacks);
                    }
                }
                Decision::AcceptFrom(addr) => {
                    up.paths.accept_from(self.virtual_addr, Route::Direct(addr));
                }
            }
        }
        if let Some(punching) = self.punching.as_mut() {
            punching.set_direct(prober.direct().is_some(), Instant::now());
            punching
                .flush(up, self.virtual_addr, prober, self.conn.rtt())
                .await;
        }
        while let Some((to, payload)) = prober.poll_transmit() {
            let packet = probe_packet(&payload);
            // A probe that cannot go out now is as good as lost; the prober retries.
            if up.socket.send_control(to, &packet).await.is_ok() {
                Metrics::inc(&up.metrics.probes_sent);
            }
        }
    }
}

/// Most time one attempt to move to another gate may take.
const REROUTE_LIMIT: Duration = Duration::from_secs(8);
