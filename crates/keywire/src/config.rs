//! Endpoint configuration with defaults a public node can run with.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use keywire_proto::{NetworkId, SecretKey};

use crate::tls::PeerPolicy;

/// How an [`crate::Endpoint`] is set up. Start from [`EndpointConfig::new`] and change what you
/// need; every field has a working default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// The node's identity.
    pub secret_key: SecretKey,
    /// Where to bind the UDP socket. Default `[::]:0`: every interface, IPv6 and IPv4 on one
    /// socket, a port chosen by the OS (IPv4 only where the host has no IPv6).
    pub bind_addr: SocketAddr,
    /// Nodes complete connections only with nodes of the same network id. Default: the public
    /// keywire network.
    pub network: NetworkId,
    /// Allow and deny lists of peer keys.
    pub policy: PeerPolicy,
    /// Protocols (ALPN) accepted from incoming connections, besides those with a handler.
    pub alpns: Vec<Vec<u8>>,
    /// A connection with no traffic for this long is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// Keep-alive interval; must be under half the idle timeout so one lost keep-alive does not
    /// kill an idle connection. Default 10 s.
    pub keep_alive: Duration,
    /// How long one address attempt (handshake and network proof) may take. Default 10 s.
    pub connect_timeout: Duration,
    /// Accepted connections waiting for [`crate::Endpoint::accept`]. Default 64; when full, new
    /// connections are closed with `BUSY` (see [`crate::close_code`]).
    pub accept_queue: usize,
    /// Incoming handshakes in progress at once; more are refused. Default 256.
    pub max_pending_handshakes: usize,
    /// Open connections at once; more incoming ones are refused. Default 4096.
    pub max_connections: usize,
    /// Extra addresses peers may reach this node at (e.g. a port forwarded on the router), told
    /// to peers with the node's own; at most [`MAX_ANNOUNCED_ADDRS`]. Default none.
    pub announce_addrs: Vec<SocketAddr>,
    /// Whether a relayed connection probes the peer's candidate addresses and moves to a direct
    /// path when one answers (and back to the relay when it dies). Default on.
    pub upgrade_to_direct: bool,
    /// How gates are reached when UDP to them gets no answer (TCP or WebSocket, maybe through
    /// an HTTP proxy). Default: UDP, then TCP after 2 s of silence.
    pub gate_link: crate::GateLinkConfig,
}

/// Most addresses [`EndpointConfig::announce_addrs`] may hold.
pub const MAX_ANNOUNCED_ADDRS: usize = 4;

impl EndpointConfig {
    /// A configuration with the given identity and defaults for everything else.
    pub fn new(secret_key: SecretKey) -> Self {
        Self {
            secret_key,
            bind_addr: SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
            network: NetworkId::public(),
            policy: PeerPolicy::default(),
            alpns: Vec::new(),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            accept_queue: 64,
            max_pending_handshakes: 256,
            max_connections: 4096,
            announce_addrs: Vec::new(),
            upgrade_to_direct: true,
            gate_link: crate::GateLinkConfig::default(),
        }
    }

    /// Sets the bind address.
    pub fn bind_addr(mut self, addr: SocketAddr) -> Self {
        self.bind_addr = addr;
        self
    }

    /// Sets the network id.
    pub fn network(mut self, network: NetworkId) -> Self {
        self.network = network;
        self
    }

    /// Sets the allow and deny lists.
    pub fn policy(mut self, policy: PeerPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Adds a protocol accepted from incoming connections (delivered by `accept()`).
    pub fn alpn(mut self, alpn: impl Into<Vec<u8>>) -> Self {
        let alpn = alpn.into();
        if !self.alpns.contains(&alpn) {
            self.alpns.push(alpn);
        }
        self
    }

    /// Adds an address to announce to peers besides the bound one (see
    /// [`EndpointConfig::announce_addrs`]).
    pub fn announce(mut self, addr: SocketAddr) -> Self {
        if !self.announce_addrs.contains(&addr) {
            self.announce_addrs.push(addr);
        }
        self
    }

    /// Turns moving relayed connections to direct paths on or off (see
    /// [`EndpointConfig::upgrade_to_direct`]).
    pub fn upgrade_to_direct(mut self, on: bool) -> Self {
        self.upgrade_to_direct = on;
        self
    }

    /// Sets how gates are reached (see [`EndpointConfig::gate_link`]).
    pub fn gate_link(mut self, gate_link: crate::GateLinkConfig) -> Self {
        self.gate_link = gate_link;
        self
    }

    /// Checks the settings that can contradict each other.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.keep_alive * 2 >= self.idle_timeout {
            return Err(format!(
                "keep_alive ({:?}) must be under half of idle_timeout ({:?})",
                self.keep_alive, self.idle_timeout
            ));
        }
        if self.accept_queue == 0 || self.max_pending_handshakes == 0 || self.max_connections == 0 {
            return Err(
                "accept_queue, max_pending_handshakes and max_connections must be > 0".into(),
            );
        }
        if self.announce_addrs.len() > MAX_ANNOUNCED_ADDRS {
            return Err(format!(
                "at most {MAX_ANNOUNCED_ADDRS} announced addresses, got {}",
                self.announce_addrs.len()
            ));
        }
        if let Some(bad) = self
            .announce_addrs
            .iter()
            .find(|a| a.port() == 0 || a.ip().is_unspecified())
        {
            return Err(format!(
                "announced address {bad} is not reachable (port 0 or unspecified IP)"
            ));
        }
        if self.alpns.iter().any(|a| a.is_empty() || a.len() > 255) {
            return Err("every ALPN must be 1 to 255 bytes (RFC 7301)".into());
        }
        Ok(())
    }
}
