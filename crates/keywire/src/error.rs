//! Errors an application can act on.

use std::fmt;
use std::net::SocketAddr;

use keywire_proto::NodeId;

/// Application close codes keywire itself uses (QUIC CONNECTION_CLOSE, application space).
pub mod close_code {
    /// Normal close: the application is done.
    pub const DONE: u32 = 0;
    /// The peer belongs to another network id.
    pub const NETWORK_MISMATCH: u32 = 0x6b77_0001;
    /// The peer's network proof was malformed, missing or late.
    pub const PROTOCOL_VIOLATION: u32 = 0x6b77_0002;
    /// The accepting node had no room for another connection.
    pub const BUSY: u32 = 0x6b77_0003;
    /// The endpoint is shutting down.
    pub const ENDPOINT_CLOSING: u32 = 0x6b77_0004;
}

/// Why [`crate::Endpoint::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The UDP socket could not be created or bound.
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Socket {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built (a bug in keywire if it ever happens).
    #[error("cannot build TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The configuration contradicts itself.
    #[error("invalid endpoint configuration: {0}")]
    InvalidConfig(String),
    /// `bind` was called outside a tokio runtime.
    #[error("Endpoint::bind must be called from within a tokio runtime")]
    NoRuntime,
}

/// Why one address attempt of a dial failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptFailure {
    /// The far end proved a different key than the one dialed.
    WrongPeer,
    /// The far end refused our key (its allow or deny list).
    Refused,
    /// The far end belongs to another network id.
    NetworkMismatch,
    /// The far end offers none of the requested protocols (ALPN).
    NoCommonProtocol,
    /// No answer in time.
    TimedOut,
    /// The address cannot be used from this socket (e.g. IPv6 on an IPv4-only socket).
    UnusableAddress,
    /// The far end sent something keywire does not accept.
    ProtocolViolation(String),
    /// Any other transport failure, as QUIC reported it.
    Transport(String),
}

impl fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongPeer => f.write_str("the peer proved a different key"),
            Self::Refused => f.write_str("the peer refused our key"),
            Self::NetworkMismatch => f.write_str("the peer is on another network id"),
            Self::NoCommonProtocol => {
                f.write_str("the peer does not speak the requested protocol (ALPN)")
            }
            Self::TimedOut => f.write_str("timed out"),
            Self::UnusableAddress => f.write_str("address unusable from this socket"),
            Self::ProtocolViolation(why) => write!(f, "protocol violation: {why}"),
            Self::Transport(why) => write!(f, "{why}"),
        }
    }
}

/// One failed address attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// The address tried.
    pub addr: SocketAddr,
    /// What went wrong there.
    pub failure: AttemptFailure,
}

/// Why [`crate::Endpoint::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The node id dialed is this endpoint's own.
    #[error("cannot dial this node's own id")]
    DialSelf,
    /// The node address carries no address to try.
    #[error("no address to dial {0}")]
    NoAddresses(NodeId),
    /// Our own allow or deny list forbids this key.
    #[error("node {0} is refused by this endpoint's allow/deny list")]
    Denied(NodeId),
    /// The far end proved a key other than the one dialed.
    #[error("wrong peer at {addr}: expected {expected}, but it proved another key")]
    WrongPeer {
        /// The key that was dialed.
        expected: NodeId,
        /// Where the impostor answered.
        addr: SocketAddr,
    },
    /// The far end is on another network id.
    #[error("{node} at {addr} is on another network id")]
    NetworkMismatch {
        /// The node dialed.
        node: NodeId,
        /// Where it answered.
        addr: SocketAddr,
    },
    /// The far end refused our key (its allow or deny list).
    #[error("{node} at {addr} refused our key")]
    Refused {
        /// The node dialed.
        node: NodeId,
        /// Where it answered.
        addr: SocketAddr,
    },
    /// The ALPN is not 1 to 255 bytes.
    #[error("invalid ALPN: must be 1 to 255 bytes (RFC 7301)")]
    InvalidAlpn,
    /// Every address failed; one reason per address.
    #[error("could not reach {node}: {}", DisplayAttempts(.attempts))]
    Unreachable {
        /// The node dialed.
        node: NodeId,
        /// What happened at each address, in the order tried.
        attempts: Vec<AttemptError>,
    },
    /// The gate could not introduce us (not registered there, peer unknown, no answer).
    #[error("gate: {0}")]
    Gate(Box<crate::gate::GateError>),
    /// The endpoint was closed.
    #[error("the endpoint is closed")]
    EndpointClosed,
    /// Neither the ticket's direct addresses nor any of its gates led to the node.
    #[error("could not reach {node} directly ({direct}) nor through its gates ({})", DisplayGates(.gates))]
    NoRoute {
        /// The node dialed.
        node: NodeId,
        /// Why the direct attempt failed.
        direct: Box<ConnectError>,
        /// Why each gate failed: its address and the error.
        gates: Vec<(SocketAddr, ConnectError)>,
    },
    /// No channel of the endpoint's discovery led to the node (dialing a bare key).
    #[error("could not find {node} by its key: {}", DisplayChannels(.failures))]
    NotFound {
        /// The node dialed.
        node: NodeId,
        /// Why each channel failed, in the order they gave up.
        failures: Vec<(
            crate::discovery::IntroChannel,
            crate::discovery::ChannelFailure,
        )>,
    },
}

struct DisplayChannels<'a>(
    &'a [(
        crate::discovery::IntroChannel,
        crate::discovery::ChannelFailure,
    )],
);

impl std::fmt::Display for DisplayChannels<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no channel answered in time");
        }
        for (i, (channel, why)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{channel}: {why}")?;
        }
        Ok(())
    }
}

struct DisplayGates<'a>(&'a [(SocketAddr, ConnectError)]);

impl fmt::Display for DisplayGates<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (gate, error)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "gate {gate}: {error}")?;
        }
        Ok(())
    }
}

struct DisplayAttempts<'a>(&'a [AttemptError]);

impl fmt::Display for DisplayAttempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, attempt) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", attempt.addr, attempt.failure)?;
        }
        Ok(())
    }
}
