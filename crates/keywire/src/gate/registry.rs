//! The endpoint's own gate registrations, and dialing a ticket: directly and through the gates
//! it names, at once, the first connection to complete winning.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keywire_proto::nat::NatReport;
use keywire_proto::ticket::MAX_TICKET_GATES;
use keywire_proto::{NodeAddr, NodeId, Ticket};

use super::{GateClient, GateError};
use crate::metrics::Metrics;
use crate::socket::paths::{PathTable, Route};
use crate::{ConnectError, Connection, Endpoint};

/// Peers whose tickets' gates are remembered, for moving to another gate.
const REMEMBERED_PEERS: usize = 256;

/// Gates this endpoint is registered with (at most [`MAX_TICKET_GATES`]), and the gates of
/// the tickets it dialed.
#[derive(Debug, Default)]
pub(crate) struct GateRegistry {
    joined: Mutex<Vec<Joined>>,
    known: Mutex<VecDeque<(NodeId, Vec<NodeAddr>)>>,
    /// Gates whose registration died (at most [`MAX_TICKET_GATES`], by the gate's address): the
    /// gate may be alive — a stream link broken by a proxy dropping a long tunnel, or our NAT
    /// forgetting our mapping so that we now come from an address the gate's connection does
    /// not migrate to —, so [`Endpoint::reroute`] may join them again, after every other gate.
    broken_links: Mutex<VecDeque<(SocketAddr, NodeAddr)>>,
}

#[derive(Debug)]
struct Joined {
    addr: NodeAddr,
    client: Arc<GateClient>,
    /// Applies the introductions the gate sends us (see [`follow_introductions`]).
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl GateRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Joined>> {
        self.joined.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The registrations whose gate is alive (the others are dropped: a registration whose
    /// gate died is no registration).
    fn live(&self) -> std::sync::MutexGuard<'_, Vec<Joined>> {
        let mut joined = self.lock();
        let mut broken = Vec::new();
        joined.retain(|j| {
            let alive = j.client.is_alive();
            // Remembered for one more try (`reroute`): a broken stream link, or a NAT that
            // moved us to an address the gate does not know (its connections do not migrate),
            // may be all that died, and a new registration mends it.
            if !alive {
                broken.push((j.client.gate_addr(), j.addr.clone()));
            }
            alive
        });
        if !broken.is_empty() {
            let mut list = self.broken_links();
            for entry in broken {
                list.retain(|(addr, _)| *addr != entry.0);
                if list.len() >= MAX_TICKET_GATES {
                    list.pop_front();
                }
                list.push_back(entry);
            }
        }
        joined
    }

    fn broken_links(&self) -> std::sync::MutexGuard<'_, VecDeque<(SocketAddr, NodeAddr)>> {
        self.broken_links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gate at `addr`, if our registration there died (its stream link broke, or our
    /// address changed under it).
    fn broken_link(&self, addr: SocketAddr) -> Option<NodeAddr> {
        self.broken_links()
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, gate)| gate.clone())
    }

    fn find(&self, gate: NodeId) -> Option<Arc<GateClient>> {
        self.live()
            .iter()
            .find(|j| j.addr.node_id == gate)
            .map(|j| j.client.clone())
    }

    /// Remembers the gates of `peer`'s ticket.
    fn remember(&self, peer: NodeId, gates: &[NodeAddr]) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|(p, _)| *p != peer);
        if known.len() >= REMEMBERED_PEERS {
            known.pop_front();
        }
        known.push_back((peer, gates.to_vec()));
    }

    fn gates_of(&self, peer: NodeId) -> Vec<NodeAddr> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .iter()
            .find(|(p, _)| *p == peer)
            .map(|(_, gates)| gates.clone())
            .unwrap_or_default()
    }
}

/// Applies each introduction `client`'s gate sends: when a peer we have a relayed connection
/// with introduces itself through this gate while our relay to it goes through another, the
/// peer is moving (its gate or ours died): the relay moves here too.
async fn follow_introductions(
    client: Arc<GateClient>,
    paths: Arc<PathTable>,
    metrics: Arc<Metrics>,
) {
    let gate = client.gate_addr();
    while let Some(introduction) = client.next_introduction().await {
        let Some(v) = paths.path_of_node(&introduction.peer) else {
            continue;
        };
        let route = Route::Relayed {
            gate,
            channel: introduction.channel,
        };
        // Through another gate, or through this one on another channel: the gate keeps one
        // channel per pair of sessions, so a new one means the peer registered again (its gate
        // died, or its link to this one broke) and the old channel is gone.
        let elsewhere =
            matches!(paths.relay_of(&v), Some(old @ Route::Relayed { .. }) if old != route);
        if elsewhere && paths.move_relay(v, route, Instant::now()) {
            Metrics::inc(&metrics.gate_failovers);
        }
    }
}

impl Endpoint {
    /// Registers with `gate` (or returns the live registration already made) and accepts
    /// relayed connections through it; the gate then appears in [`Endpoint::ticket`]. At most
    /// four gates at once.
    pub async fn join_gate(&self, gate: &NodeAddr) -> Result<Arc<GateClient>, GateError> {
        let registry = self.gate_registry();
        if let Some(client) = registry.find(gate.node_id) {
            return Ok(client);
        }
        let client = Arc::new(GateClient::register(self, gate).await?);
        let mut joined = registry.live();
        if let Some(existing) = joined.iter().find(|j| j.addr.node_id == gate.node_id) {
            // Another task registered meanwhile; keep one registration.
            return Ok(existing.client.clone());
        }
        if joined.len() >= MAX_TICKET_GATES {
            return Err(GateError::TooManyGates(MAX_TICKET_GATES));
        }
        self.use_gate(&client);
        registry
            .broken_links()
            .retain(|(_, g)| g.node_id != gate.node_id);
        let follower = tokio::spawn(follow_introductions(
            client.clone(),
            self.path_table().clone(),
            self.metrics_handle().clone(),
        ));
        joined.push(Joined {
            addr: gate.clone(),
            client: client.clone(),
            follower,
        });
        Ok(client)
    }

    /// Leaves a gate joined with [`Endpoint::join_gate`]; false if not joined.
    pub fn leave_gate(&self, gate: NodeId) -> bool {
        let mut joined = self.gate_registry().lock();
        let Some(index) = joined.iter().position(|j| j.addr.node_id == gate) else {
            return false;
        };
        let gone = joined.remove(index);
        self.forget_gate(&gone.client);
        true
    }

    /// The gates joined and alive, as they go in a ticket.
    pub fn joined_gates(&self) -> Vec<NodeAddr> {
        self.gate_registry()
            .live()
            .iter()
            .map(|j| j.addr.clone())
            .collect()
    }

    /// A ticket for this node: its direct addresses and the gates it joined. Fails as
    /// [`Endpoint::node_addr`] does (the interfaces could not be listed), or with the
    /// [`keywire_proto::TicketError`] (as the error's source) if no ticket can carry them.
    pub fn ticket(&self) -> std::io::Result<Ticket> {
        let node = self.node_addr()?;
        Ticket::with_gates(node, self.joined_gates()).map_err(std::io::Error::other)
    }

    /// Connects to the node of `ticket`: its direct addresses (Happy Eyeballs) and, at the same
    /// time, through each of its gates in turn (joining the gate first); the first connection
    /// to complete wins and the other attempts are dropped. A relayed connection then moves to
    /// a direct path when one works (see [`Connection::path_events`]).
    pub async fn connect_ticket(
        &self,
        ticket: &Ticket,
        alpn: &[u8],
    ) -> Result<Connection, ConnectError> {
        let node = &ticket.node;
        if ticket.gates.is_empty() {
            return self.connect(node, alpn).await;
        }
        self.gate_registry().remember(node.node_id, &ticket.gates);
        let direct = async {
            if node.direct_addrs.is_empty() {
                Err(ConnectError::NoAddresses(node.node_id))
            } else {
                self.connect(node, alpn).await
            }
        };
        let relayed = async {
            let mut failures = Vec::new();
            for gate in &ticket.gates {
                let attempt = async {
                    let client = self
                        .join_gate(gate)
                        .await
                        .map_err(|e| ConnectError::Gate(Box::new(e)))?;
                    self.connect_via(node.node_id, alpn, &client).await
                };
                match attempt.await {
                    Ok(conn) => return Ok(conn),
                    Err(e) => failures.push((gate_addr_of(gate), e)),
                }
            }
            Err(failures)
        };
        tokio::pin!(direct, relayed);
        let (mut direct_error, mut relayed_errors) = (None, None);
        loop {
            tokio::select! {
                result = &mut direct, if direct_error.is_none() => match result {
                    Ok(conn) => return Ok(conn),
                    Err(e) => direct_error = Some(e),
                },
                result = &mut relayed, if relayed_errors.is_none() => match result {
                    Ok(conn) => return Ok(conn),
                    Err(e) => relayed_errors = Some(e),
                },
            }
            if let (Some(direct), Some(gates)) = (&mut direct_error, &mut relayed_errors) {
                return Err(ConnectError::NoRoute {
                    node: node.node_id,
                    direct: Box::new(std::mem::replace(direct, ConnectError::EndpointClosed)),
                    gates: std::mem::take(gates),
                });
            }
        }
    }
}

impl Endpoint {
    /// What kind of NAT this node is behind, from its first live gate reached over UDP: the
    /// address the gate's main port saw at registration, and the one its observation port sees
    /// now. `None` without such a gate (a gate reached over TCP sees a TCP mapping, which says
    /// nothing about UDP).
    pub async fn nat_report(&self) -> Option<NatReport> {
        let client = self
            .gate_registry()
            .live()
            .iter()
            .find(|j| !j.client.over_stream_link())?
            .client
            .clone();
        let second = self
            .upgrades_handle()
            .observe(client.observation_addr())
            .await;
        let local = self.node_addr().map(|a| a.direct_addrs).unwrap_or_default();
        Some(keywire_proto::nat::classify(
            &local,
            Some(client.observed_addr()),
            second,
        ))
    }

    /// Finds another relay to `peer` than the dead gate at `dead`: through a gate we joined or
    /// one of the peer's ticket, joining it if needed, and asking it for an introduction. Last,
    /// through `dead` again with a new registration: only our stream link to it may have
    /// broken, or our NAT may have moved us to an address it does not know.
    pub(crate) async fn reroute(&self, peer: NodeId, dead: SocketAddr) -> Option<Route> {
        let mut gates = self.joined_gates();
        for gate in self.gate_registry().gates_of(peer) {
            if !gates.iter().any(|g| g.node_id == gate.node_id) {
                gates.push(gate);
            }
        }
        let candidates = self.local_candidates();
        let again = self.gate_registry().broken_link(dead);
        let others = gates
            .into_iter()
            .filter(|g| !g.direct_addrs.contains(&dead))
            .map(|g| (g, false));
        for (gate, rejoin) in others.chain(again.map(|g| (g, true))) {
            let Ok(client) = self.join_gate(&gate).await else {
                continue;
            };
            if client.gate_addr() == dead && !rejoin {
                continue;
            }
            if let Ok(introduction) = client.introduce(peer, candidates.clone()).await {
                return Some(Route::Relayed {
                    gate: client.gate_addr(),
                    channel: introduction.channel,
                });
            }
        }
        None
    }
}

fn gate_addr_of(gate: &NodeAddr) -> SocketAddr {
    gate.direct_addrs
        .first()
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}
