//! Reaching a gate when UDP does not: the gate's QUIC connection over a stream link (TCP or
//! WebSocket to the same host and port), opened when UDP stays unanswered for
//! [`GateLinkConfig::fallback_after`] or always ([`GateLinkMode::TcpOnly`]). The link stands
//! for the gate's address in the socket, so everything sent to the gate (registration, relay
//! frames) takes it, and relayed connections through the gate report `relayed (tcp)`.

use std::net::SocketAddr;

use keywire_proto::gate::GATE_ALPN;
use keywire_proto::NodeAddr;

use super::GateError;
use crate::link::{self, GateLinkConfig, GateLinkMode, LinkError};
use crate::{Connection, Endpoint};

/// A stream link opened for a gate registration; dropping it closes the link (the gate's
/// address goes back to UDP).
#[derive(Debug)]
pub(crate) struct LinkTask(tokio::task::JoinHandle<()>);

impl Drop for LinkTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Endpoint {
    /// Connects to `gate` (ALPN `keywire/gate/1`) over UDP or a stream link, as the endpoint's
    /// [`GateLinkConfig`] says; returns the link too if one was opened (keep it as long as the
    /// connection).
    pub(crate) async fn connect_gate(
        &self,
        gate: &NodeAddr,
    ) -> Result<(Connection, Option<LinkTask>), GateError> {
        let config = self.gate_link_config().clone();
        match config.mode {
            GateLinkMode::UdpOnly => Ok((self.connect(gate, GATE_ALPN).await?, None)),
            GateLinkMode::TcpOnly => {
                let (link, addr) = self.open_gate_link(gate, &config).await?;
                let conn = self.connect_linked(gate, addr).await?;
                Ok((conn, Some(link)))
            }
            _ => self.connect_gate_udp_then_tcp(gate, &config).await,
        }
    }

    async fn connect_gate_udp_then_tcp(
        &self,
        gate: &NodeAddr,
        config: &GateLinkConfig,
    ) -> Result<(Connection, Option<LinkTask>), GateError> {
        let udp = self.connect(gate, GATE_ALPN);
        tokio::pin!(udp);
        let udp_error = tokio::select! {
            result = &mut udp => match result {
                Ok(conn) => return Ok((conn, None)),
                Err(e) => Some(e),
            },
            _ = tokio::time::sleep(config.fallback_after) => None,
        };
        let unreachable = |udp, tcp| GateError::Unreachable {
            udp: Box::new(udp),
            tcp: Box::new(tcp),
        };
        // UDP failed outright or stayed silent: open a link; a UDP handshake still running
        // may yet complete (its retransmissions now take the link too).
        let opening = self.open_gate_link(gate, config);
        tokio::pin!(opening);
        let (link, addr) = match udp_error {
            Some(udp_error) => match opening.await {
                Ok(opened) => opened,
                Err(tcp) => return Err(unreachable(udp_error, tcp)),
            },
            None => tokio::select! {
                result = &mut udp => match result {
                    Ok(conn) => return Ok((conn, None)),
                    Err(udp_error) => match opening.await {
                        Ok(opened) => opened,
                        Err(tcp) => return Err(unreachable(udp_error, tcp)),
                    },
                },
                result = &mut opening => match result {
                    Ok(opened) => opened,
                    Err(tcp) => return udp.await.map(|c| (c, None)).map_err(|udp| unreachable(udp, tcp)),
                },
            },
        };
        let over_link = self.connect_linked(gate, addr);
        tokio::pin!(over_link);
        // Whichever handshake completes first wins; either way it runs over the link now.
        let conn = tokio::select! {
            result = &mut over_link => match result {
                Ok(conn) => conn,
                Err(_) => udp.await?,
            },
            result = &mut udp => match result {
                Ok(conn) => conn,
                Err(_) => over_link.await?,
            },
        };
        Ok((conn, Some(link)))
    }

    /// The gate's QUIC connection to `addr`, which a link now carries.
    async fn connect_linked(
        &self,
        gate: &NodeAddr,
        addr: SocketAddr,
    ) -> Result<Connection, crate::ConnectError> {
        self.connect(&NodeAddr::new(gate.node_id, [addr]), GATE_ALPN)
            .await
    }

    /// Opens a link to the first of `gate`'s addresses that takes one, and makes the socket
    /// send that address's datagrams over it.
    async fn open_gate_link(
        &self,
        gate: &NodeAddr,
        config: &GateLinkConfig,
    ) -> Result<(LinkTask, SocketAddr), GateError> {
        let mut failures = Vec::new();
        for addr in crate::dial::order(&gate.direct_addrs) {
            let addr = keywire_proto::ticket::canonical_addr(addr);
            match link::dial::dial(addr, config).await {
                Ok((stream, framing)) => {
                    let task = tokio::spawn(link::run(
                        self.socket_handle().clone(),
                        addr,
                        stream,
                        framing,
                    ));
                    return Ok((LinkTask(task), addr));
                }
                Err(e) => failures.push((addr, e)),
            }
        }
        Err(GateError::Link(if failures.is_empty() {
            LinkError::NoAddress
        } else {
            LinkError::Attempts(failures)
        }))
    }
}
