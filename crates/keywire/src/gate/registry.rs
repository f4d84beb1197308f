//! The endpoint's own gate registrations, and dialing a ticket: directly and through the gates
//! it names, at once, the first connection to complete winning.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use keywire_proto::ticket::MAX_TICKET_GATES;
use keywire_proto::{NodeAddr, NodeId, Ticket, TicketError};

use super::{GateClient, GateError};
use crate::{ConnectError, Connection, Endpoint};

/// Gates this endpoint is registered with (at most [`MAX_TICKET_GATES`]).
#[derive(Debug, Default)]
pub(crate) struct GateRegistry {
    joined: Mutex<Vec<(NodeAddr, Arc<GateClient>)>>,
}

impl GateRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(NodeAddr, Arc<GateClient>)>> {
        self.joined.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, gate: NodeId) -> Option<Arc<GateClient>> {
        let mut joined = self.lock();
        // A registration whose connection died is no registration.
        joined.retain(|(_, client)| client.is_alive());
        joined
            .iter()
            .find(|(addr, _)| addr.node_id == gate)
            .map(|(_, client)| client.clone())
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
        let mut joined = registry.lock();
        if let Some((_, existing)) = joined.iter().find(|(a, _)| a.node_id == gate.node_id) {
            // Another task registered meanwhile; keep one registration.
            return Ok(existing.clone());
        }
        if joined.len() >= MAX_TICKET_GATES {
            return Err(GateError::TooManyGates(MAX_TICKET_GATES));
        }
        self.use_gate(&client);
        joined.push((gate.clone(), client.clone()));
        Ok(client)
    }

    /// Leaves a gate joined with [`Endpoint::join_gate`]; false if not joined.
    pub fn leave_gate(&self, gate: NodeId) -> bool {
        let mut joined = self.gate_registry().lock();
        let Some(index) = joined.iter().position(|(a, _)| a.node_id == gate) else {
            return false;
        };
        let (_, client) = joined.remove(index);
        self.forget_gate(&client);
        true
    }

    /// The gates joined and alive, as they go in a ticket.
    pub fn joined_gates(&self) -> Vec<NodeAddr> {
        let registry = self.gate_registry();
        let mut joined = registry.lock();
        joined.retain(|(_, client)| client.is_alive());
        joined.iter().map(|(addr, _)| addr.clone()).collect()
    }

    /// A ticket for this node: its direct addresses and the gates it joined.
    pub fn ticket(&self) -> Result<Ticket, TicketError> {
        let node = self.node_addr().map_err(|_| TicketError::NoAddress)?;
        Ticket::with_gates(node, self.joined_gates())
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

fn gate_addr_of(gate: &NodeAddr) -> SocketAddr {
    gate.direct_addrs
        .first()
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}
