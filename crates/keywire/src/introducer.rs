//! Introducers: whoever puts two nodes in touch so they can punch a hole to each other.
//!
//! An introduction gives the dialer a first, relayed way to the peer; over it the two ends swap
//! their candidate addresses (in the handshake), their NAT kinds and the start signal of each
//! punching attempt (punch signals through the relay, `upgrade`), then go direct where the NATs
//! allow. Any relay carries that, so an introducer only has to set one up:
//!
//! - [`GateIntroducer`]: a gate both nodes joined ([`Endpoint::connect_via`]);
//! - [`PeerIntroducer`]: any node we are connected to that agreed to introduce (it runs a gate
//!   service, [`crate::gate::Gate::spawn`], and the peer joined it): "everyone is connected to
//!   someone". It relays under the same limits as a gate until the path goes direct.
//!
//! The DHT and the MQTT pool implement the same trait: [`crate::discovery::DhtIntroducer`],
//! [`crate::discovery::MqttIntroducer`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::gate::{GateClient, GateError};
use crate::{AttemptFailure, ConnectError, Connection, Endpoint, NodeAddr, NodeId, Path};

/// What an introducer's [`Introducer::connect`] returns.
pub type IntroductionFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Connection, ConnectError>> + Send + 'a>>;

/// Puts this node in touch with another (see the module documentation).
pub trait Introducer: Send + Sync {
    /// Connects `endpoint` to `node` for `alpn` through this introducer. The connection may
    /// start relayed; it goes direct on its own when the NATs allow.
    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        node: NodeId,
        alpn: &'a [u8],
    ) -> IntroductionFuture<'a>;
}

/// A gate both nodes joined.
#[derive(Debug, Clone)]
pub struct GateIntroducer(pub Arc<GateClient>);

impl Introducer for GateIntroducer {
    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        node: NodeId,
        alpn: &'a [u8],
    ) -> IntroductionFuture<'a> {
        Box::pin(endpoint.connect_via(node, alpn, &self.0))
    }
}

/// A node we are connected to that introduces others (it runs a gate service).
#[derive(Debug, Clone)]
pub struct PeerIntroducer(pub Connection);

impl Introducer for PeerIntroducer {
    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        node: NodeId,
        alpn: &'a [u8],
    ) -> IntroductionFuture<'a> {
        Box::pin(endpoint.connect_through(node, alpn, &self.0))
    }
}

impl Endpoint {
    /// Connects to `node` through `via`, a node we are connected to that agreed to introduce
    /// (it runs [`crate::gate::Gate::spawn`]) and that `node` joined as a gate: we join it too
    /// (over the address `via` runs on, which must be direct), it introduces us and relays until
    /// the path goes direct. Fails with [`GateError::NotIntroducing`] if `via` does not
    /// introduce, [`GateError::NoSuchPeer`] if `node` did not join it.
    pub async fn connect_through(
        &self,
        node: NodeId,
        alpn: &[u8],
        via: &Connection,
    ) -> Result<Connection, ConnectError> {
        let introducer = via.remote_node_id();
        let gate_error = |e| ConnectError::Gate(Box::new(e));
        let Path::Direct(addr) = via.path() else {
            return Err(gate_error(GateError::NotDirect(introducer)));
        };
        let gate = NodeAddr {
            node_id: introducer,
            direct_addrs: vec![addr],
        };
        let client = self.join_gate(&gate).await.map_err(|e| {
            if refused_the_gate_protocol(&e) {
                gate_error(GateError::NotIntroducing(introducer))
            } else {
                gate_error(e)
            }
        })?;
        self.connect_via(node, alpn, &client).await
    }
}

/// Whether joining failed because the node answered but speaks no gate protocol (over UDP; its
/// TCP side, if tried, then failed too).
fn refused_the_gate_protocol(error: &GateError) -> bool {
    let udp = match error {
        GateError::Connect(e) => e,
        GateError::Unreachable { udp, .. } => udp,
        _ => return false,
    };
    matches!(udp, ConnectError::Unreachable { attempts, .. }
        if attempts.iter().any(|a| a.failure == AttemptFailure::NoCommonProtocol))
}
