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
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keywire_proto::datagram::{ControlKind, ControlPacket};
use keywire_proto::probe::{
    tag_of, ConnTag, Decision, ProbeKeys, Prober, ProberConfig, PROBE_EXPORTER_LABEL,
};
use keywire_proto::Role;
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::socket::paths::{PathTable, Route};
use crate::socket::{ControlDatagram, KeywireSocket};

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
    connections: Mutex<HashMap<ConnTag, mpsc::Sender<ControlDatagram>>>,
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
            connections: Mutex::default(),
        }
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
        observed.retain(|a| !addrs.contains(a));
        observed.truncate(crate::handshake::MAX_CANDIDATES / 2);
        // Room for every reflexive address: behind a NAT it is the one that works.
        addrs.truncate(crate::handshake::MAX_CANDIDATES - observed.len());
        addrs.extend(observed);
        addrs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnTag, mpsc::Sender<ControlDatagram>>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands each incoming probe to its connection's task, until the socket's queue closes.
    pub(crate) async fn dispatch(self: Arc<Self>, mut incoming: mpsc::Receiver<ControlDatagram>) {
        while let Some(datagram) = incoming.recv().await {
            let queue = tag_of(&datagram.payload).and_then(|tag| self.lock().get(&tag).cloned());
            let delivered = queue.is_some_and(|q| q.try_send(datagram).is_ok());
            if !delivered {
                Metrics::inc(&self.metrics.probes_refused);
            }
        }
    }

    /// Starts probing for `conn` if it is relayed and `peer_candidates` gives something to try.
    /// Returns the guard the connection keeps.
    pub(crate) fn start(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        role: Role,
        peer_candidates: &[SocketAddr],
    ) -> Option<UpgradeGuard> {
        if !self.enabled {
            return None;
        }
        let virtual_addr = conn.remote_address();
        let relay @ Route::Relayed { .. } = self.paths.route_of(&virtual_addr)? else {
            return None;
        };
        if peer_candidates.is_empty() {
            return None;
        }
        let mut exported = [0u8; 32];
        conn.export_keying_material(&mut exported, PROBE_EXPORTER_LABEL, b"")
            .ok()?;
        let keys = ProbeKeys::from_exported(exported);
        let tag = keys.tag();
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        let prober = Prober::new(
            keys,
            role,
            self.config.clone(),
            peer_candidates,
            Instant::now(),
            seed,
        );
        let (queue, inbox) = mpsc::channel(PER_CONNECTION_QUEUE);
        self.lock().insert(tag, queue);
        let (stop, stopped) = oneshot::channel();
        let task = Task {
            upgrades: self.clone(),
            tag,
            conn: conn.clone(),
            virtual_addr,
            relay,
            prober,
            inbox,
        };
        tokio::spawn(async move {
            task.run(stopped).await;
        });
        Some(UpgradeGuard { _stop: stop })
    }
}

struct Task {
    upgrades: Arc<Upgrades>,
    tag: ConnTag,
    conn: quinn::Connection,
    virtual_addr: SocketAddr,
    relay: Route,
    prober: Prober,
    inbox: mpsc::Receiver<ControlDatagram>,
}

impl Task {
    async fn run(mut self, mut stopped: oneshot::Receiver<()>) {
        loop {
            self.flush().await;
            let wake = self.prober.poll_timeout();
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stopped => break,
                _ = self.conn.closed() => break,
                datagram = self.inbox.recv() => {
                    let Some(datagram) = datagram else { break };
                    let counter = match self.prober.handle(datagram.from, &datagram.payload, Instant::now()) {
                        Ok(()) => &self.upgrades.metrics.probes_accepted,
                        Err(_) => &self.upgrades.metrics.probes_refused,
                    };
                    Metrics::inc(counter);
                }
                () = sleep => self.prober.handle_timeout(Instant::now()),
            }
        }
        self.upgrades.lock().remove(&self.tag);
    }

    /// Sends the probes and applies the decisions the prober has queued.
    async fn flush(&mut self) {
        let up = &self.upgrades;
        while let Some(decision) = self.prober.poll_decision() {
            let now = Instant::now();
            match decision {
                Decision::UseDirect(addr) => {
                    if up.paths.switch(self.virtual_addr, Route::Direct(addr), now) {
                        Metrics::inc(&up.metrics.path_upgrades);
                    }
                }
                Decision::UseRelay => {
                    if up.paths.switch(self.virtual_addr, self.relay, now) {
                        Metrics::inc(&up.metrics.path_fallbacks);
                    }
                }
                Decision::AcceptFrom(addr) => {
                    up.paths.accept_from(self.virtual_addr, Route::Direct(addr));
                }
            }
        }
        while let Some((to, payload)) = self.prober.poll_transmit() {
            let mut packet = Vec::with_capacity(payload.len() + 2);
            ControlPacket {
                kind: ControlKind::Probe,
                payload: &payload,
            }
            .encode(&mut packet);
            // A probe that cannot go out now is as good as lost; the prober retries.
            if up.socket.send_control(to, &packet).await.is_ok() {
                Metrics::inc(&up.metrics.probes_sent);
            }
        }
    }
}
