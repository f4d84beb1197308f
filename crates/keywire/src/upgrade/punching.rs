//! A relayed connection's hole punching beyond plain probing: it learns this node's NAT kind,
//! swaps NAT kinds with the peer over the relay, and runs birthday probing when the plan
//! (`keywire_proto::probe::punch`) says so — the hard side's extra sockets
//! ([`crate::birthday`]) or the easy side's spray, one attempt per node at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use keywire_proto::nat::NatReport;
use keywire_proto::probe::punch::{Action, Punch, Spray};
use keywire_proto::probe::{ProbeKeys, Prober};
use keywire_proto::{NodeId, Role};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::{probe_packet, Upgrades};
use crate::birthday::{ExtraSockets, Hit, SideSocket};
use crate::metrics::Metrics;

/// Extra sockets that received the peer's probe, waiting for the task (one wins; a second hit
/// of the same attempt waits until its sockets close).
const HITS_QUEUE: usize = 4;

/// One connection's punching state (see the module documentation).
pub(super) struct Punching {
    punch: Punch,
    keys: ProbeKeys,
    role: Role,
    peer: NodeId,
    /// This node's NAT report, while it is being found out.
    nat: Option<oneshot::Receiver<Option<NatReport>>>,
    hard: Option<(ExtraSockets, OwnedSemaphorePermit)>,
    hits: mpsc::Receiver<Hit>,
    hits_sender: mpsc::Sender<Hit>,
    /// The extra socket the connection's direct path may run over, kept for its lifetime.
    side_socket: Option<SideSocket>,
    spray: Option<(Spray, OwnedSemaphorePermit)>,
    /// A spray the plan asked for, waiting for this node's other attempt to end.
    waiting_spray: Option<std::net::IpAddr>,
}

/// How often a waiting spray checks whether this node's other attempt ended.
const SPRAY_PERMIT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

impl Punching {
    /// Starts punching for a connection whose probe keys are `keys`; finds out our NAT kind in
    /// the background.
    pub(super) fn new(
        upgrades: &Arc<Upgrades>,
        keys: ProbeKeys,
        role: Role,
        peer: NodeId,
        peer_candidates: &[SocketAddr],
    ) -> Self {
        let (answer, nat) = oneshot::channel();
        let up = upgrades.clone();
        tokio::spawn(async move {
            let _ = answer.send(up.local_nat().await);
        });
        let (hits_sender, hits) = mpsc::channel(HITS_QUEUE);
        let mut punch = Punch::new(keys.clone(), role, upgrades.punch_config.clone());
        punch.set_peer_candidates(peer_candidates, &upgrades.local_candidates());
        Self {
            punch,
            keys,
            role,
            peer,
            nat: Some(nat),
            hard: None,
            hits,
            hits_sender,
            side_socket: None,
            spray: None,
            waiting_spray: None,
        }
    }

    /// When [`Punching::on_timeout`] wants to run.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let spray = match self.waiting_spray {
            Some(_) => Some(Instant::now() + SPRAY_PERMIT_RETRY),
            None => self.spray.as_ref().and_then(|(s, _)| s.next_at()),
        };
        match (self.punch.poll_timeout(), spray) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn on_timeout(&mut self, now: Instant) {
        self.punch.handle_timeout(now);
    }

    /// Waits for this node's NAT report or an extra socket's hit; pending forever without.
    pub(super) async fn next_event(&mut self) -> Event {
        let (nat, hits) = (&mut self.nat, &mut self.hits);
        let report = async {
            match nat.as_mut() {
                Some(answer) => answer.await.ok().flatten(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            report = report => {
                *nat = None;
                Event::Nat(report)
            }
            Some(hit) = hits.recv() => Event::Hit(hit),
        }
    }

    pub(super) fn on_event(&mut self, up: &Arc<Upgrades>, event: Event, now: Instant) {
        match event {
            Event::Nat(Some(report)) => {
                self.punch.set_local(report.mapping, report.observed, now);
            }
            Event::Nat(None) => {}
            Event::Hit(hit) => {
                // The first hit of an attempt wins; its other sockets close now. A side socket
                // of an earlier attempt (whose path died) gives way to the new one.
                if self.hard.take().is_some() {
                    // Ours from an earlier attempt goes first: its link would block the new one.
                    self.side_socket = None;
                    if let Some(side) = SideSocket::adopt(&up.socket, hit) {
                        Metrics::inc(&up.metrics.birthday_hits);
                        self.side_socket = Some(side);
                    }
                }
            }
        }
    }

    /// Handles a punch signal that came through the relay.
    pub(super) fn on_signal(&mut self, payload: &[u8], now: Instant) -> bool {
        self.punch.handle(payload, now).is_ok()
    }

    /// Tells the plan whether the connection runs direct now.
    pub(super) fn set_direct(&mut self, direct: bool, now: Instant) {
        self.punch.set_direct(direct, now);
    }

    /// Carries out what the plan asks (the path probes' part on `prober`), and sends the spray
    /// probes that are due. `relay_rtt`: the connection's round trip (used while relayed).
    pub(super) async fn flush(
        &mut self,
        up: &Arc<Upgrades>,
        virtual_addr: SocketAddr,
        prober: &mut Prober,
        relay_rtt: std::time::Duration,
    ) {
        self.punch.set_relay_rtt(relay_rtt);
        while let Some(action) = self.punch.poll_action() {
            let now = Instant::now();
            match action {
                Action::Signal(signal) => {
                    let packet = probe_packet(&signal);
                    // A lost signal is repeated by the plan (hellos, go) or costs one attempt.
                    if up
                        .socket
                        .send_control_relayed(virtual_addr, &packet)
                        .is_ok()
                    {
                        Metrics::inc(&up.metrics.punch_signals_sent);
                    }
                }
                Action::OpenSockets {
                    attempt,
                    target,
                    sockets,
                    resend,
                } => {
                    // One attempt per node at a time: without the permit this one waits (no
                    // socket opened, no go sent; the plan tries again a moment later).
                    let Ok(permit) = up.birthday_permit.clone().try_acquire_owned() else {
                        self.punch.defer(attempt, now);
                        continue;
                    };
                    let Ok(local) = up.socket.real_local_addr() else {
                        self.punch.defer(attempt, now);
                        continue;
                    };
                    // Over this peer's budget: the attempt runs out its time unopened.
                    if !up.birthday_budget.try_spend(self.peer, now) {
                        continue;
                    }
                    Metrics::inc(&up.metrics.birthday_attempts);
                    let extra = ExtraSockets::open(
                        &self.keys,
                        self.role,
                        local.ip(),
                        target,
                        sockets,
                        resend,
                        self.hits_sender.clone(),
                        up.metrics.clone(),
                    );
                    if extra.opened > 0 {
                        self.hard = Some((extra, permit));
                        self.punch.sockets_open(attempt, now);
                    } else {
                        // No socket could be opened (out of file descriptors): the attempt
                        // runs out its time without a go and counts.
                        tracing::warn!("birthday probing: no extra socket could be opened");
                    }
                }
                Action::CloseSockets { .. } => self.hard = None,
                // The spray starts when this node's one attempt at a time is free, within the
                // attempt's time (StopSpray ends the wait too).
                Action::Spray { ip, .. } => self.waiting_spray = Some(ip),
                Action::StopSpray { .. } => {
                    self.spray = None;
                    self.waiting_spray = None;
                }
                Action::HoldBack => prober.hold_back(),
                Action::Retry => prober.retry(),
            }
        }
        if let Some(ip) = self.waiting_spray {
            if let Ok(permit) = up.birthday_permit.clone().try_acquire_owned() {
                self.waiting_spray = None;
                if !up.birthday_budget.try_spend(self.peer, Instant::now()) {
                    return;
                }
                Metrics::inc(&up.metrics.birthday_attempts);
                let mut seed = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut seed);
                let spray = Spray::new(ip, &up.punch_config, Instant::now(), seed);
                self.spray = Some((spray, permit));
            }
        }
        self.send_spray(up).await;
    }

    /// Sends the spray probes due now: path probe requests from the main socket, whose
    /// endpoint-independent mapping is the address the hard side's mappings wait for.
    async fn send_spray(&mut self, up: &Arc<Upgrades>) {
        let Some((spray, _)) = self.spray.as_mut() else {
            return;
        };
        for to in spray.poll_due(Instant::now()) {
            let packet = probe_packet(&self.keys.request(self.role, rand::random()));
            if up.socket.send_control(to, &packet).await.is_ok() {
                Metrics::inc(&up.metrics.birthday_probes_sent);
            }
        }
        if spray.next_at().is_none() {
            self.spray = None;
        }
    }
}

/// How long a side socket outlives its connection's task: the connection's last packets
/// (its CONNECTION_CLOSE, quinn's draining) still leave through it. Without it they would go
/// out of the main socket, whose mapping the peer's NAT filters.
const SIDE_SOCKET_LINGER: std::time::Duration = std::time::Duration::from_secs(3);

impl Drop for Punching {
    fn drop(&mut self) {
        if let (Some(side), Ok(runtime)) = (
            self.side_socket.take(),
            tokio::runtime::Handle::try_current(),
        ) {
            runtime.spawn(async move {
                tokio::time::sleep(SIDE_SOCKET_LINGER).await;
                drop(side);
            });
        }
    }
}

/// Birthday attempts one peer key may cause, over all its connections, per window: a peer that
/// opens connection after connection cannot keep this node spraying.
const PER_PEER_ATTEMPTS: u32 = 4;
const PER_PEER_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// Peers tracked at most; when full, expired entries go, and if none has, nobody new may try.
const PER_PEER_TRACKED: usize = 4096;

/// See [`PER_PEER_ATTEMPTS`].
#[derive(Debug, Default)]
pub(super) struct PeerBudget {
    spent: std::sync::Mutex<std::collections::HashMap<NodeId, (Instant, u32)>>,
}

impl PeerBudget {
    /// Takes one attempt from `peer`'s budget; false if it has none left.
    pub(super) fn try_spend(&self, peer: NodeId, now: Instant) -> bool {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < PER_PEER_WINDOW;
        if spent.len() >= PER_PEER_TRACKED && !spent.contains_key(&peer) {
            spent.retain(|_, (at, _)| fresh(at));
            if spent.len() >= PER_PEER_TRACKED {
                return false;
            }
        }
        let entry = spent.entry(peer).or_insert((now, 0));
        if !fresh(&entry.0) {
            *entry = (now, 0);
        }
        if entry.1 >= PER_PEER_ATTEMPTS {
            return false;
        }
        entry.1 += 1;
        true
    }
}

/// What [`Punching::next_event`] brings.
pub(super) enum Event {
    /// This node's NAT report (`None`: no gate to tell).
    Nat(Option<NatReport>),
    /// An extra socket received the peer's probe.
    Hit(Hit),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_four_attempts_per_ten_minutes_over_all_its_connections() {
        let budget = PeerBudget::default();
        let now = Instant::now();
        let key = || keywire_proto::SecretKey::generate(&mut rand::rngs::OsRng).node_id();
        let (peer, other) = (key(), key());
        for _ in 0..PER_PEER_ATTEMPTS {
            assert!(budget.try_spend(peer, now));
        }
        assert!(!budget.try_spend(peer, now), "over budget");
        assert!(budget.try_spend(other, now), "another peer has its own");
        assert!(
            budget.try_spend(peer, now + PER_PEER_WINDOW),
            "a new window"
        );
    }
}
