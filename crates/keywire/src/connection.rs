//! A QUIC connection whose far end proved its key and its network id.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use keywire_proto::NodeId;

use crate::error::AttemptFailure;
use crate::socket::paths::{PathLease, PathTable, Route};
use crate::upgrade::UpgradeGuard;

/// How a connection's packets travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Path {
    /// Straight to the peer at this address.
    Direct(SocketAddr),
    /// Relayed by the gate at this address.
    Relayed {
        /// The gate.
        gate: SocketAddr,
        /// How this node reaches the gate.
        link: RelayLink,
    },
}

/// How a node reaches the gate that relays its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayLink {
    /// Over UDP, as every other path.
    Udp,
    /// Over TCP (raw or WebSocket), because UDP to the gate got no answer (or was turned off).
    Tcp,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct(addr) => write!(f, "direct to {addr}"),
            Self::Relayed {
                gate,
                link: RelayLink::Udp,
            } => write!(f, "relayed via gate {gate}"),
            Self::Relayed {
                gate,
                link: RelayLink::Tcp,
            } => write!(f, "relayed (tcp) via gate {gate}"),
        }
    }
}

impl Path {
    /// The path of `route`; `over_stream`: its next hop is reached over a stream link.
    pub(crate) fn from_route(route: Route, over_stream: bool) -> Self {
        match route {
            Route::Relayed { gate, .. } => Path::Relayed {
                gate,
                link: if over_stream {
                    RelayLink::Tcp
                } else {
                    RelayLink::Udp
                },
            },
            Route::Direct(addr) => Path::Direct(addr),
        }
    }

    /// A short name for reports: `direct`, `relayed` or `relayed (tcp)`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Direct(_) => "direct",
            Self::Relayed {
                link: RelayLink::Udp,
                ..
            } => "relayed",
            Self::Relayed {
                link: RelayLink::Tcp,
                ..
            } => "relayed (tcp)",
        }
    }
}

/// The path changes of one connection, from [`Connection::path_events`].
#[derive(Debug)]
pub struct PathEvents {
    watch: Option<tokio::sync::watch::Receiver<Route>>,
    paths: Arc<PathTable>,
    /// The path last reported (at first, the one the connection was established over).
    last: Route,
}

impl PathEvents {
    /// Waits for the path to differ from the one last reported and returns it; `None` once the
    /// connection's path is gone (the connection ended long ago). Changes in quick succession
    /// may be seen as one: this always returns the latest path.
    pub async fn next(&mut self) -> Option<Path> {
        let watch = self.watch.as_mut()?;
        loop {
            let current = *watch.borrow_and_update();
            if current != self.last {
                self.last = current;
                return Some(self.paths.path_of_route(current));
            }
            watch.changed().await.ok()?;
        }
    }
}

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
    paths: Arc<PathTable>,
    peer_candidates: Arc<[SocketAddr]>,
    /// The route the handshake ran over.
    opened_on: Route,
    /// Ends the probing task when the last clone goes.
    _upgrade: Option<Arc<UpgradeGuard>>,
    /// Marks the path as in use while any clone lives.
    _lease: Arc<PathLease>,
}

impl Connection {
    pub(crate) fn new(
        inner: quinn::Connection,
        remote: NodeId,
        alpn: Vec<u8>,
        paths: Arc<PathTable>,
        peer_candidates: Vec<SocketAddr>,
        opened_on: Route,
        upgrade: Option<UpgradeGuard>,
    ) -> Self {
        let lease = Arc::new(paths.lease(&inner));
        Self {
            inner,
            remote,
            alpn,
            paths,
            peer_candidates: peer_candidates.into(),
            opened_on,
            _upgrade: upgrade.map(Arc::new),
            _lease: lease,
        }
    }

    /// The addresses the peer told us it may be reached at directly (its bound, announced and
    /// gate-observed addresses). A relayed connection probes them to go direct.
    pub fn peer_candidates(&self) -> &[SocketAddr] {
        &self.peer_candidates
    }

    /// The path the connection was established over (a relayed connection may already have
    /// gone direct by the time the caller looks at [`Connection::path`]).
    pub fn initial_path(&self) -> Path {
        self.paths.path_of_route(self.opened_on)
    }

    /// Every change of [`Connection::path`] since the connection was established: relayed to
    /// direct, back to the relay. A change made before this call is reported first.
    pub fn path_events(&self) -> PathEvents {
        PathEvents {
            watch: self
                .paths
                .switch_signal(&self.inner.remote_address())
                .map(|s| s.subscribe()),
            paths: self.paths.clone(),
            last: self.opened_on,
        }
    }

    /// The real address the peer is reached at right now.
    ///
    /// Shadows [`quinn::Connection::remote_address`], which reports the virtual address quinn
    /// sees (see `docs/socket.md`); use [`Connection::virtual_address`] for that.
    pub fn remote_address(&self) -> SocketAddr {
        let virtual_addr = self.inner.remote_address();
        self.paths.real_for(&virtual_addr).unwrap_or(virtual_addr)
    }

    /// How packets travel right now: directly, or relayed through a gate.
    pub fn path(&self) -> Path {
        match self.paths.route_of(&self.inner.remote_address()) {
            Some(route) => self.paths.path_of_route(route),
            // The path was evicted: only possible once the connection is long dead.
            None => Path::Direct(self.inner.remote_address()),
        }
    }

    /// The stable virtual address quinn uses for this peer.
    pub fn virtual_address(&self) -> SocketAddr {
        self.inner.remote_address()
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

    /// Waits until the connection ends and says why, in the terms `connect` uses.
    ///
    /// `connect` returns after one round trip, as QUIC does, once the peer proved its key and
    /// its network; the peer checks *our* key and network proof half a round trip later. So a
    /// peer whose allow or deny list refuses us closes the connection just after `connect`
    /// returned: streams then fail with a connection error, and this returns
    /// [`AttemptFailure::Refused`] (or [`AttemptFailure::NetworkMismatch`] if the peer found
    /// our network proof wrong). The peer's application never sees such a connection.
    pub async fn close_cause(&self) -> AttemptFailure {
        crate::handshake::classify(&self.inner.closed().await)
    }
}

impl Deref for Connection {
    type Target = quinn::Connection;

    fn deref(&self) -> &quinn::Connection {
        &self.inner
    }
}
