//! The accept driver: takes incoming QUIC connections, runs the handshake and the network-id
//! check on a task per connection (at most `max_pending_handshakes` at once), then hands each
//! connection to its ALPN's handler or to the accept queue (see [`crate::router`]).

use std::sync::Arc;
use std::time::Duration;

use keywire_proto::{NetworkId, NodeId, Role};
use quinn::VarInt;
use tokio::sync::{mpsc, Semaphore};

use crate::error::close_code;
use crate::handshake::{self, CheckError};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::socket::paths::PathTable;
use crate::transport::TransportSettings;
use crate::upgrade::Upgrades;
use crate::Connection;
use std::sync::Mutex;

/// What the accept driver needs; deliberately not the `Endpoint` itself, so that dropping the
/// last `Endpoint` handle can stop the driver.
pub(crate) struct AcceptDriver {
    pub(crate) quinn: quinn::Endpoint,
    /// Our own node id (the acceptor token names it).
    pub(crate) me: NodeId,
    pub(crate) network: NetworkId,
    pub(crate) router: Router,
    pub(crate) queue: mpsc::Sender<Connection>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) paths: Arc<PathTable>,
    pub(crate) upgrades: Arc<Upgrades>,
    /// The current server configuration (ALPNs change at run time).
    pub(crate) server_config: Arc<Mutex<quinn::ServerConfig>>,
    pub(crate) transport: TransportSettings,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_pending_handshakes: usize,
    pub(crate) max_connections: usize,
}

impl AcceptDriver {
    pub(crate) async fn run(self) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.max_pending_handshakes));
        while let Some(incoming) = this.quinn.accept().await {
            // Under load (half the handshake slots taken), an unvalidated source must first echo
            // a Retry token (RFC 9000 §8.1.2): a spoofed flood then costs one small packet each
            // instead of a handshake slot and up to three times its size in replies.
            let under_load = permits.available_permits() < this.max_pending_handshakes / 2;
            if under_load && !incoming.remote_address_validated() && incoming.may_retry() {
                Metrics::inc(&this.metrics.incoming_retried);
                // Fails only if a Retry is not allowed for it, which may_retry excluded.
                let _ = incoming.retry();
                continue;
            }
            // open_connections counts this one too.
            let permit = if this.quinn.open_connections() > this.max_connections {
                None
            } else {
                permits.clone().try_acquire_owned().ok()
            };
            let Some(permit) = permit else {
                Metrics::inc(&this.metrics.incoming_refused_busy);
                incoming.refuse();
                continue;
            };
            let driver = this.clone();
            tokio::spawn(async move {
                let checked =
                    tokio::time::timeout(driver.handshake_timeout, driver.check(incoming)).await;
                drop(permit);
                match checked {
                    Ok(Some(connection)) => driver.dispatch(connection).await,
                    Ok(None) => Metrics::inc(&driver.metrics.incoming_failed),
                    Err(_elapsed) => Metrics::inc(&driver.metrics.incoming_failed),
                }
            });
        }
    }

    /// Completes the handshake and the network-id check; `None` if either failed.
    async fn check(&self, incoming: quinn::Incoming) -> Option<Connection> {
        // Each connection gets its own transport configuration, so that its congestion controller
        // follows switches of its own path.
        let virtual_addr = incoming.remote_address();
        // Keeps the path from being retired while the handshake runs (see `PathTable`).
        let _handshaking = self.paths.handshake_lease(virtual_addr);
        let signal = self.paths.switch_signal(&virtual_addr);
        let mut config = self
            .server_config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        config.transport_config(Arc::new(self.transport.build(signal).ok()?));
        let connecting = incoming.accept_with(Arc::new(config)).ok()?;
        // 0.5-RTT: our network token and candidates leave with the handshake flight, so the
        // dialer can check them when its handshake completes, without another round trip.
        // Nothing else is sent before the dialer is authenticated.
        let (conn, handshake_done) = connecting.into_0rtt().ok()?;
        let candidates = self.upgrades.local_candidates();
        let announced =
            match handshake::announce_acceptor(&conn, &self.network, &self.me, &candidates).await {
                Ok(stream) => stream,
                Err(_) => return None,
            };
        // Resolves when the handshake completes or fails; its value says whether *0-RTT* was
        // accepted (never: it is off), not whether the handshake succeeded.
        let _ = handshake_done.await;
        if let Some(reason) = conn.close_reason() {
            // A dialer that found our token wrong closes at once, maybe before its proof left.
            if handshake::classify(&reason) == crate::AttemptFailure::NetworkMismatch {
                Metrics::inc(&self.metrics.network_mismatch);
            }
            return None;
        }
        let Some(peer) = handshake::peer_node_id(&conn) else {
            conn.close(
                VarInt::from_u32(close_code::PROTOCOL_VIOLATION),
                b"no node key",
            );
            return None;
        };
        let alpn = handshake::negotiated_alpn(&conn).unwrap_or_default();
        match handshake::check_dialer(&conn, &self.network, announced, self.handshake_timeout).await
        {
            Ok(candidates) => {
                self.paths.bind(virtual_addr, peer);
                let opened_on = self.paths.route_of(&virtual_addr)?;
                let guard = self
                    .upgrades
                    .start(&conn, Role::Acceptor, peer, &candidates);
                Some(Connection::new(
                    conn,
                    peer,
                    alpn,
                    self.paths.clone(),
                    candidates,
                    opened_on,
                    guard,
                ))
            }
            Err(CheckError::NetworkMismatch) => {
                Metrics::inc(&self.metrics.network_mismatch);
                None
            }
            Err(CheckError::Malformed(_) | CheckError::TimedOut) => {
                Metrics::inc(&self.metrics.network_proof_malformed);
                None
            }
            Err(CheckError::Connection(_)) => None,
        }
    }

    async fn dispatch(&self, connection: Connection) {
        Metrics::inc(&self.metrics.incoming_accepted);
        if let Some(handler) = self.router.get(connection.alpn()) {
            handler.handle(connection).await;
            return;
        }
        match self.queue.try_send(connection) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(connection)) => {
                Metrics::inc(&self.metrics.accept_queue_full);
                connection.close(VarInt::from_u32(close_code::BUSY), b"accept queue full");
            }
            Err(mpsc::error::TrySendError::Closed(connection)) => {
                connection.close(
                    VarInt::from_u32(close_code::ENDPOINT_CLOSING),
                    b"endpoint closing",
                );
            }
        }
    }
}
