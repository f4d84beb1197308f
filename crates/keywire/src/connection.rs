//! A QUIC connection whose far end proved its key and its network id.

use std::ops::Deref;

use keywire_proto::NodeId;

/// An authenticated connection to a peer.
///
/// It dereferences to [`quinn::Connection`] for streams, datagrams and statistics; what keywire
/// adds is who is at the other end ([`Connection::remote_node_id`]) and the protocol spoken
/// ([`Connection::alpn`]).
#[derive(Debug, Clone)]
pub struct Connection {
    inner: quinn::Connection,
    remote: NodeId,
    alpn: Vec<u8>,
}

impl Connection {
    pub(crate) fn new(inner: quinn::Connection, remote: NodeId, alpn: Vec<u8>) -> Self {
        Self {
            inner,
            remote,
            alpn,
        }
    }

    /// The key the peer proved in the handshake.
    pub fn remote_node_id(&self) -> NodeId {
        self.remote
    }

    /// The application protocol (ALPN) of this connection.
    pub fn alpn(&self) -> &[u8] {
        &self.alpn
    }

    /// The underlying quinn connection.
    pub fn quinn(&self) -> &quinn::Connection {
        &self.inner
    }
}

impl Deref for Connection {
    type Target = quinn::Connection;

    fn deref(&self) -> &quinn::Connection {
        &self.inner
    }
}
