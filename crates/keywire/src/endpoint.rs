//! The endpoint: one UDP socket, one identity, QUIC connections to and from other nodes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use keywire_proto::ticket::canonical_addr;
use keywire_proto::{NetworkId, NodeAddr, NodeId, Role, SecretKey};
use quinn::VarInt;
use tokio::sync::mpsc;

use crate::accept::AcceptDriver;
use crate::config::EndpointConfig;
use crate::error::{close_code, AttemptError, AttemptFailure, BindError, ConnectError};
use crate::gate::registry::GateRegistry;
use crate::gate::GateClient;
use crate::handshake::{self};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::router::{ProtocolHandler, Router};
use crate::socket::paths::{PathTable, Route};
use crate::socket::{ControlChannel, KeywireSocket};
use crate::tls::{self, PeerPolicy};
use crate::transport::TransportSettings;
use crate::upgrade::{self, Upgrades};
use crate::{dial, udp, Connection};
use keywire_proto::datagram::ControlKind;

use std::time::Instant;

/// Most distinct ALPNs whose client configuration is cached.
const CLIENT_CONFIG_CACHE: usize = 64;

/// A keywire node's endpoint. Cheap to clone; all clones are the same endpoint.
///
/// Must be created inside a tokio runtime. Dropping the last clone stops accepting new
/// connections; connections already handed out keep working until closed.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    quinn: quinn::Endpoint,
    /// The port was left to the operating system (bind address port 0).
    ephemeral_port: bool,
    secret_key: SecretKey,
    node_id: NodeId,
    network: NetworkId,
    policy: Arc<PeerPolicy>,
    metrics: Arc<Metrics>,
    transport: TransportSettings,
    socket: Arc<KeywireSocket>,
    paths: Arc<PathTable>,
    client_tls: rustls::ClientConfig,
    client_configs: Mutex<HashMap<Vec<u8>, Arc<quinn::crypto::rustls::QuicClientConfig>>>,
    server_alpns: Mutex<Vec<Vec<u8>>>,
    server_config: Arc<Mutex<quinn::ServerConfig>>,
    router: Router,
    accept_queue: tokio::sync::Mutex<mpsc::Receiver<Connection>>,
    accept_task: tokio::task::JoinHandle<()>,
    probe_task: tokio::task::JoinHandle<()>,
    upgrades: Arc<Upgrades>,
    gates: GateRegistry,
    connect_timeout: std::time::Duration,
    gate_link: crate::GateLinkConfig,
    /// Set once by [`Endpoint::set_discovery`].
    discovery: std::sync::OnceLock<Arc<crate::discovery::DiscoveryState>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.probe_task.abort();
        if let Some(discovery) = self.discovery.get() {
            discovery.stop();
        }
        self.quinn.set_server_config(None);
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("node_id", &self.inner.node_id)
            .field("local_addr", &self.local_addr().ok())
            .finish()
    }
}

/// An endpoint that a background task may use without keeping it alive.
#[derive(Clone)]
pub(crate) struct WeakEndpoint(std::sync::Weak<Inner>);

impl WeakEndpoint {
    /// The endpoint, if some clone of it is still held.
    pub(crate) fn upgrade(&self) -> Option<Endpoint> {
        self.0.upgrade().map(|inner| Endpoint { inner })
    }
}

impl Endpoint {
    pub(crate) fn downgrade(&self) -> WeakEndpoint {
        WeakEndpoint(Arc::downgrade(&self.inner))
    }

    /// Whether the UDP port was picked by the operating system (bound with port 0).
    pub(crate) fn has_ephemeral_port(&self) -> bool {
        self.inner.ephemeral_port
    }

    /// Binds the UDP socket and starts accepting connections.
    pub fn bind(config: EndpointConfig) -> Result<Self, BindError> {
        config.validate().map_err(BindError::InvalidConfig)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BindError::NoRuntime)?;
        let metrics = Arc::new(Metrics::default());
        let policy = Arc::new(config.policy.clone());

        let transport = TransportSettings {
            idle_timeout: config.idle_timeout,
            keep_alive: config.keep_alive,
        };
        transport.build(None).map_err(BindError::InvalidConfig)?;

        let client_tls = tls::client_config(&config.secret_key, policy.clone(), metrics.clone())?;
        let server_alpns = config.alpns.clone();
        let server_config = server_config(
            &config.secret_key,
            &policy,
            &metrics,
            &transport,
            server_alpns.clone(),
        )?;
        let server_config_shared = Arc::new(Mutex::new(server_config.clone()));

        let socket = udp::bind(config.bind_addr).map_err(|source| BindError::Socket {
            addr: config.bind_addr,
            source,
        })?;
        // Room for every connection plus every handshake in progress; a path idle for twice the
        // idle timeout has no connection left.
        let paths = Arc::new(PathTable::new(
            config.max_connections + config.max_pending_handshakes,
            config.idle_timeout * 2,
        ));
        let socket = {
            let _guard = runtime.enter();
            Arc::new(
                KeywireSocket::new(socket, paths.clone(), metrics.clone()).map_err(|source| {
                    BindError::Socket {
                        addr: config.bind_addr,
                        source,
                    }
                })?,
            )
        };
        let mut endpoint_config = quinn::EndpointConfig::default();
        // Every keywire endpoint keeps the QUIC bit set, so that a first byte with the two top
        // bits clear can carry keywire's own control packets on the same port (DESIGN.md).
        endpoint_config.grease_quic_bit(false);
        let quinn = {
            let _guard = runtime.enter();
            quinn::Endpoint::new_with_abstract_socket(
                endpoint_config,
                Some(server_config),
                socket.clone(),
                Arc::new(quinn::TokioRuntime),
            )
            .map_err(|source| BindError::Socket {
                addr: config.bind_addr,
                source,
            })?
        };

        let upgrades = Arc::new(Upgrades::new(
            socket.clone(),
            paths.clone(),
            metrics.clone(),
            config.announce_addrs.clone(),
            config.upgrade_to_direct,
        ));
        let probes = socket
            .control
            .register(ControlKind::Probe, upgrade::DISPATCH_QUEUE);
        let probe_task = runtime.spawn(upgrades.clone().dispatch(probes));

        let router = Router::default();
        let (queue_tx, queue_rx) = mpsc::channel(config.accept_queue);
        let driver = AcceptDriver {
            quinn: quinn.clone(),
            me: config.secret_key.node_id(),
            network: config.network,
            router: router.clone(),
            queue: queue_tx,
            metrics: metrics.clone(),
            paths: paths.clone(),
            upgrades: upgrades.clone(),
            server_config: server_config_shared.clone(),
            transport: transport.clone(),
            handshake_timeout: config.connect_timeout,
            max_pending_handshakes: config.max_pending_handshakes,
            max_connections: config.max_connections,
        };
        let accept_task = runtime.spawn(driver.run());

        let endpoint = Self {
            inner: Arc::new(Inner {
                quinn,
                ephemeral_port: config.bind_addr.port() == 0,
                node_id: config.secret_key.node_id(),
                secret_key: config.secret_key,
                network: config.network,
                policy,
                metrics,
                transport,
                socket,
                paths,
                client_tls,
                client_configs: Mutex::new(HashMap::new()),
                server_alpns: Mutex::new(server_alpns),
                server_config: server_config_shared,
                router,
                accept_queue: tokio::sync::Mutex::new(queue_rx),
                accept_task,
                probe_task,
                upgrades,
                gates: GateRegistry::default(),
                connect_timeout: config.connect_timeout,
                gate_link: config.gate_link.clone(),
                discovery: std::sync::OnceLock::new(),
            }),
        };
        // A relayed connection whose gate died asks the endpoint for another gate; a weak
        // handle, so that connections never keep a dropped endpoint alive.
        let weak = Arc::downgrade(&endpoint.inner);
        endpoint
            .inner
            .upgrades
            .set_rerouter(Arc::new(move |peer, dead| {
                let weak = weak.clone();
                Box::pin(async move {
                    let endpoint = Endpoint {
                        inner: weak.upgrade()?,
                    };
                    endpoint.reroute(peer, dead).await
                })
            }));
        let weak = Arc::downgrade(&endpoint.inner);
        endpoint.inner.upgrades.set_nat_source(Arc::new(move || {
            let weak = weak.clone();
            Box::pin(async move {
                let endpoint = Endpoint {
                    inner: weak.upgrade()?,
                };
                endpoint.nat_report().await
            })
        }));
        Ok(endpoint)
    }

    pub(crate) fn gate_registry(&self) -> &GateRegistry {
        &self.inner.gates
    }

    pub(crate) fn socket_handle(&self) -> &Arc<KeywireSocket> {
        &self.inner.socket
    }

    pub(crate) fn gate_link_config(&self) -> &crate::GateLinkConfig {
        &self.inner.gate_link
    }

    pub(crate) fn path_table(&self) -> &Arc<PathTable> {
        &self.inner.paths
    }

    pub(crate) fn metrics_handle(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub(crate) fn upgrades_handle(&self) -> &Arc<Upgrades> {
        &self.inner.upgrades
    }

    pub(crate) fn local_candidates(&self) -> Vec<SocketAddr> {
        self.inner.upgrades.local_candidates()
    }

    /// This node's id (its public key).
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The bound socket address (`[::]:port` on a dual-stack socket).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.socket.real_local_addr()
    }

    /// How peers can reach this node directly: the bound address, or, when bound to a wildcard,
    /// the address of every interface (loopback last). IPv6 link-local addresses are left out:
    /// they need a scope id that means nothing on another host.
    ///
    /// Addresses from [`EndpointConfig::announce_addrs`] come first.
    pub fn node_addr(&self) -> std::io::Result<NodeAddr> {
        let addrs = direct_addrs(self.local_addr()?, &self.inner.upgrades.announce)?;
        Ok(NodeAddr::new(self.inner.node_id, addrs))
    }

    /// Counters: dials, accepted and refused connections, rejected handshakes.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// Connects to `node` speaking `alpn`: a [`NodeAddr`] (or a reference to one), or a bare
    /// [`NodeId`].
    ///
    /// Tries every direct address, IPv6 first and the next one 250 ms later or as soon as the
    /// previous failed (RFC 8305); the first to complete the handshake *and* prove the dialed key
    /// and our network id wins. Fails with one reason per address.
    ///
    /// With no address, the node is found through the endpoint's discovery
    /// ([`Endpoint::set_discovery`]; [`Endpoint::connect_by_key`] says which channel led to
    /// it); without one, this fails with [`ConnectError::NoAddresses`].
    pub async fn connect(
        &self,
        node: impl Into<NodeAddr>,
        alpn: &[u8],
    ) -> Result<Connection, ConnectError> {
        let node = node.into();
        if node.direct_addrs.is_empty() && self.discovery_cell().get().is_some() {
            return Ok(self.connect_by_key(node.node_id, alpn).await?.connection);
        }
        let conn = self.connect_direct(&node, alpn).await?;
        if let Some(state) = self.discovery_cell().get() {
            state.remember_later(&conn);
        }
        Ok(conn)
    }

    pub(crate) fn discovery_cell(
        &self,
    ) -> &std::sync::OnceLock<Arc<crate::discovery::DiscoveryState>> {
        &self.inner.discovery
    }

    /// [`Endpoint::connect`] to the addresses given, and nowhere else.
    pub(crate) async fn connect_direct(
        &self,
        node: &NodeAddr,
        alpn: &[u8],
    ) -> Result<Connection, ConnectError> {
        Metrics::inc(&self.inner.metrics.dials);
        let result = self.connect_inner(node, alpn).await;
        let counter = match &result {
            Ok(_) => &self.inner.metrics.dials_succeeded,
            Err(_) => &self.inner.metrics.dials_failed,
        };
        Metrics::inc(counter);
        result
    }

    /// What every dial checks before sending anything: not ourselves, allowed by our policy,
    /// a valid ALPN.
    pub(crate) fn check_dial(&self, node: NodeId, alpn: &[u8]) -> Result<(), ConnectError> {
        if node == self.inner.node_id {
            return Err(ConnectError::DialSelf);
        }
        if !self.inner.policy.permits(&node) {
            return Err(ConnectError::Denied(node));
        }
        if alpn.is_empty() || alpn.len() > 255 {
            return Err(ConnectError::InvalidAlpn);
        }
        Ok(())
    }

    async fn connect_inner(
        &self,
        node: &NodeAddr,
        alpn: &[u8],
    ) -> Result<Connection, ConnectError> {
        let expected = node.node_id;
        self.check_dial(expected, alpn)?;
        if node.direct_addrs.is_empty() {
            return Err(ConnectError::NoAddresses(expected));
        }
        let client_config = self.client_config(alpn);
        let this = self.clone();
        let alpn = alpn.to_vec();
        let attempts = dial::race(
            dial::order(&node.direct_addrs),
            dial::ATTEMPT_DELAY,
            move |addr| {
                let this = this.clone();
                let client_config = client_config.clone();
                let alpn = alpn.clone();
                async move {
                    let attempt =
                        this.attempt(Route::Direct(addr), expected, client_config, alpn, &[]);
                    tokio::time::timeout(this.inner.connect_timeout, attempt)
                        .await
                        .unwrap_or(Err(AttemptFailure::TimedOut))
                }
            },
        )
        .await;
        attempts.map_err(|failures| self.summarize(expected, failures))
    }

    /// Connects to `node` through a gate both are registered with: the gate introduces the two
    /// and relays their (end-to-end encrypted) packets. The connection starts relayed; see
    /// [`Connection::path`].
    pub async fn connect_via(
        &self,
        node: NodeId,
        alpn: &[u8],
        gate: &GateClient,
    ) -> Result<Connection, ConnectError> {
        Metrics::inc(&self.inner.metrics.dials);
        let result = self.connect_via_inner(node, alpn, gate).await;
        let counter = match &result {
            Ok(_) => &self.inner.metrics.dials_succeeded,
            Err(_) => &self.inner.metrics.dials_failed,
        };
        Metrics::inc(counter);
        result
    }

    async fn connect_via_inner(
        &self,
        node: NodeId,
        alpn: &[u8],
        gate: &GateClient,
    ) -> Result<Connection, ConnectError> {
        self.check_dial(node, alpn)?;
        self.use_gate(gate);
        // Our own candidates travel with the introduction, for going direct later.
        let candidates = self.node_addr().map(|a| a.direct_addrs).unwrap_or_default();
        let introduction = gate
            .introduce(node, candidates)
            .await
            .map_err(|e| ConnectError::Gate(Box::new(e)))?;
        let route = Route::Relayed {
            gate: gate.gate_addr(),
            channel: introduction.channel,
        };
        let attempt = self.attempt(
            route,
            node,
            self.client_config(alpn),
            alpn.to_vec(),
            &introduction.candidates,
        );
        tokio::time::timeout(self.inner.connect_timeout, attempt)
            .await
            .unwrap_or(Err(AttemptFailure::TimedOut))
            .map_err(|failure| self.summarize(node, vec![(gate.gate_addr(), failure)]))
    }

    /// Accepts relayed connections arriving through `gate` (a registration of this endpoint);
    /// [`Endpoint::connect_via`] does this itself.
    pub fn use_gate(&self, gate: &GateClient) {
        // Where a gate sees us over TCP is no candidate for UDP.
        let observed = (!gate.over_stream_link()).then(|| gate.observed_addr());
        self.inner.paths.add_gate(
            gate.gate_addr(),
            gate.session(),
            observed,
            gate.alive_flag(),
        );
    }

    /// Stops using `gate`: its relayed paths can no longer send.
    pub fn forget_gate(&self, gate: &GateClient) {
        self.inner.paths.remove_gate(&gate.gate_addr());
    }

    async fn attempt(
        &self,
        route: Route,
        expected: NodeId,
        client_config: Arc<quinn::crypto::rustls::QuicClientConfig>,
        alpn: Vec<u8>,
        introduced_candidates: &[SocketAddr],
    ) -> Result<Connection, AttemptFailure> {
        Metrics::inc(&self.inner.metrics.dial_attempts);
        // `_dialing` keeps the path ours until the connection holds its own lease.
        let (virtual_addr, _dialing) = self
            .inner
            .paths
            .for_dial_route(route, Instant::now())
            .map_err(|_| AttemptFailure::Transport("path table full".into()))?;
        let signal = self.inner.paths.switch_signal(&virtual_addr);
        let transport = self
            .inner
            .transport
            .build(signal)
            .map_err(AttemptFailure::Transport)?;
        let mut client_config = quinn::ClientConfig::new(client_config);
        client_config.transport_config(Arc::new(transport));
        let server_name = tls::server_name_for(&expected);
        let connecting = self
            .inner
            .quinn
            .connect_with(client_config, virtual_addr, &server_name.to_str())
            .map_err(|e| match e {
                quinn::ConnectError::InvalidRemoteAddress(_) => AttemptFailure::UnusableAddress,
                other => AttemptFailure::Transport(other.to_string()),
            })?;
        let conn = connecting.await.map_err(|e| handshake::classify(&e))?;
        // The verifier already checked the key; checking again here covers resumed sessions and
        // any future change to the TLS layer.
        if handshake::peer_node_id(&conn) != Some(expected) {
            Metrics::inc(&self.inner.metrics.handshakes_wrong_peer);
            conn.close(
                VarInt::from_u32(close_code::PROTOCOL_VIOLATION),
                b"wrong peer",
            );
            return Err(AttemptFailure::WrongPeer);
        }
        let timeout = self.inner.connect_timeout;
        let upgrades = &self.inner.upgrades;
        match handshake::check_acceptor(
            &conn,
            &self.inner.network,
            &expected,
            &upgrades.local_candidates(),
            timeout,
        )
        .await
        {
            Ok(mut candidates) => {
                self.inner.paths.bind(virtual_addr, expected);
                // The gate's view of the peer (its reflexive address) joins what it told us.
                for extra in introduced_candidates {
                    if !candidates.contains(extra) {
                        candidates.push(*extra);
                    }
                }
                let guard = upgrades.start(&conn, Role::Dialer, expected, &candidates);
                Ok(Connection::new(
                    conn,
                    expected,
                    alpn,
                    self.inner.paths.clone(),
                    candidates,
                    route,
                    guard,
                ))
            }
            Err(e) => {
                let failure = e.into_failure();
                if failure == AttemptFailure::NetworkMismatch {
                    Metrics::inc(&self.inner.metrics.network_mismatch);
                }
                Err(failure)
            }
        }
    }

    /// Turns per-address failures into one error, the most telling first: an impostor or a
    /// foreign network says more than a timeout.
    fn summarize(&self, node: NodeId, failures: Vec<(SocketAddr, AttemptFailure)>) -> ConnectError {
        let find =
            |wanted: &AttemptFailure| failures.iter().find(|(_, f)| f == wanted).map(|(a, _)| *a);
        if let Some(addr) = find(&AttemptFailure::WrongPeer) {
            return ConnectError::WrongPeer {
                expected: node,
                addr,
            };
        }
        if let Some(addr) = find(&AttemptFailure::NetworkMismatch) {
            return ConnectError::NetworkMismatch { node, addr };
        }
        if let Some(addr) = find(&AttemptFailure::Refused) {
            return ConnectError::Refused { node, addr };
        }
        if failures.iter().any(
            |(_, f)| matches!(f, AttemptFailure::Transport(t) if t.contains("endpoint stopping")),
        ) {
            return ConnectError::EndpointClosed;
        }
        let attempts = failures
            .into_iter()
            .map(|(addr, failure)| AttemptError { addr, failure })
            .collect();
        ConnectError::Unreachable { node, attempts }
    }

    fn client_config(&self, alpn: &[u8]) -> Arc<quinn::crypto::rustls::QuicClientConfig> {
        let mut cache = self
            .inner
            .client_configs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(config) = cache.get(alpn) {
            return config.clone();
        }
        if cache.len() >= CLIENT_CONFIG_CACHE {
            cache.clear();
        }
        let mut tls = self.inner.client_tls.clone();
        tls.alpn_protocols = vec![alpn.to_vec()];
        let crypto = Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                .expect("the ring provider has TLS_AES_128_GCM_SHA256, QUIC's initial suite"),
        );
        cache.insert(alpn.to_vec(), crypto.clone());
        crypto
    }

    /// The next accepted connection whose ALPN has no registered handler; `None` once the
    /// endpoint is closed.
    pub async fn accept(&self) -> Option<Connection> {
        self.inner.accept_queue.lock().await.recv().await
    }

    /// Accepts `alpn` from now on and hands its connections to `handler`, each on its own task.
    /// Replaces an earlier handler of the same ALPN.
    pub fn register(
        &self,
        alpn: impl Into<Vec<u8>>,
        handler: impl ProtocolHandler,
    ) -> Result<(), ConnectError> {
        let alpn = alpn.into();
        if alpn.is_empty() || alpn.len() > 255 {
            return Err(ConnectError::InvalidAlpn);
        }
        self.inner.router.insert(alpn.clone(), Arc::new(handler));
        self.accept_alpn(alpn);
        Ok(())
    }

    /// Removes the handler of `alpn`; its connections go to [`Endpoint::accept`] again.
    pub fn unregister(&self, alpn: &[u8]) -> bool {
        self.inner.router.remove(alpn)
    }

    /// Accepts `alpn` from incoming connections (delivered by [`Endpoint::accept`]).
    pub fn accept_alpn(&self, alpn: impl Into<Vec<u8>>) {
        let alpn = alpn.into();
        let mut alpns = self
            .inner
            .server_alpns
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if alpns.contains(&alpn) {
            return;
        }
        alpns.push(alpn);
        let inner = &self.inner;
        if let Ok(config) = server_config(
            &inner.secret_key,
            &inner.policy,
            &inner.metrics,
            &inner.transport,
            alpns.clone(),
        ) {
            *inner
                .server_config
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = config.clone();
            inner.quinn.set_server_config(Some(config));
        }
    }

    /// This node's secret key, for protocols that sign (the DHT's records).
    pub(crate) fn secret_key(&self) -> &SecretKey {
        &self.inner.secret_key
    }

    /// Claims control packets of `kind` on this endpoint's UDP port, for a protocol that runs
    /// beside QUIC (probes, relay frames, DHT). At most `queue` packets wait; more are dropped
    /// and counted (`control_queue_full`). A later claim of the same kind replaces this one.
    pub fn control_channel(&self, kind: ControlKind, queue: usize) -> ControlChannel {
        let receiver = self.inner.socket.control.register(kind, queue);
        ControlChannel {
            kind,
            receiver,
            socket: self.inner.socket.clone(),
        }
    }

    /// Closes every connection and the socket, waiting (up to 3 s) for peers to be told.
    pub async fn close(&self) {
        self.inner.accept_task.abort();
        if let Some(discovery) = self.discovery_cell().get() {
            discovery.stop();
        }
        self.inner.quinn.close(
            VarInt::from_u32(close_code::ENDPOINT_CLOSING),
            b"endpoint closing",
        );
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            self.inner.quinn.wait_idle(),
        )
        .await;
    }

    /// Waits until every connection is closed and its close frame sent (or 3 s pass).
    pub async fn wait_idle(&self) {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            self.inner.quinn.wait_idle(),
        )
        .await;
    }
}

fn server_config(
    secret: &SecretKey,
    policy: &Arc<PeerPolicy>,
    metrics: &Arc<Metrics>,
    transport: &TransportSettings,
    alpns: Vec<Vec<u8>>,
) -> Result<quinn::ServerConfig, rustls::Error> {
    let tls = tls::server_config(secret, policy.clone(), metrics.clone(), alpns)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .expect("the ring provider has TLS_AES_128_GCM_SHA256, QUIC's initial suite");
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // Validated by `bind` before this is called.
    let transport = transport.build(None).map_err(rustls::Error::General)?;
    config.transport_config(Arc::new(transport));
    // Paths change under the virtual addresses, never in quinn's view: a known connection's
    // packet from another address is dropped (and counted by the socket), not migrated.
    config.migration(false);
    Ok(config)
}

/// The addresses a node bound at `local` can be reached at directly: `announce` first, then
/// the bound address, or every interface's address when bound to a wildcard (loopback last).
pub(crate) fn direct_addrs(
    local: SocketAddr,
    announce: &[SocketAddr],
) -> std::io::Result<Vec<SocketAddr>> {
    let port = local.port();
    let mut addrs: Vec<SocketAddr> = announce.iter().map(|a| canonical_addr(*a)).collect();
    if local.ip().is_unspecified() {
        let dual_stack = local.is_ipv6();
        let mut interfaces: Vec<SocketAddr> = if_addrs::get_if_addrs()?
            .into_iter()
            .map(|iface| iface.ip())
            .filter(|ip| dual_stack || ip.is_ipv4())
            .filter(|ip| !is_link_local_v6(ip))
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        interfaces.sort_by_key(|a| a.ip().is_loopback());
        addrs.extend(interfaces);
    } else {
        addrs.push(canonical_addr(local));
    }
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|a| seen.insert(*a));
    Ok(addrs)
}

fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}
