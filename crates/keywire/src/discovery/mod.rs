//! Dialing a bare key (issue 11): [`Endpoint::connect`] with a [`NodeId`] and no address.
//!
//! A [`Discovery`] attached to an endpoint ([`Endpoint::set_discovery`]) gives it channels to
//! find nodes by key and to be found:
//!
//! - an **address book** ([`AddressBook`], SQLite): where nodes were reached before;
//! - the **DHT** ([`Dht`]): a node's signed address record (its addresses and gates), and an
//!   introduction topic per node (`keywire_proto::intro`) that the node subscribes to;
//! - the **MQTT pool** ([`SignalNode`]): introductions sealed to the node, answered with its
//!   addresses.
//!
//! Dialing races every configured channel at once; the first connection to complete wins and
//! the other attempts are dropped. An introduction asks the node to *nudge* us: it sends a
//! small packet to each of our addresses, which opens its NAT toward us (a port-restricted NAT
//! lets our handshake in only after that) and tells us which of its addresses is open; we dial
//! that one at once. Where no direct path opens, a record's gates relay, and the usual hole
//! punching takes over (`docs/holepunch.md`). TLS proves the key on every path, so a forged
//! address, record annotation or nudge can waste a dial but never redirect the connection.
//!
//! The node side ([`Discovery::advertise`], on by default) keeps its record fresh in the DHT,
//! listens on its introduction topic and its MQTT topic, and answers introductions. Wire
//! formats and limits: `docs/discovery.md`.

mod advertise;
mod resolve;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::address_book::AddressBook;
use crate::dht::{Dht, DhtError};
use crate::signal::{SignalError, SignalNode};
use crate::{ConnectError, Connection, Endpoint, Introducer, IntroductionFuture, NodeId};

pub(crate) use state::DiscoveryState;

/// How long a dial by key may take in all, every channel included.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The channels an endpoint uses to find nodes by key and to be found. Build it, then hand it
/// to [`Endpoint::set_discovery`].
#[derive(Default)]
pub struct Discovery {
    pub(crate) dht: Option<Arc<Dht>>,
    pub(crate) mqtt: Option<Arc<SignalNode>>,
    pub(crate) book: Option<Arc<AddressBook>>,
    pub(crate) observer: Option<SocketAddr>,
    pub(crate) quiet: bool,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("dht", &self.dht.is_some())
            .field("mqtt", &self.mqtt.is_some())
            .field("address_book", &self.book.is_some())
            .field("observer", &self.observer)
            .field("advertise", &!self.quiet)
            .finish()
    }
}

impl Discovery {
    /// No channel yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Finds nodes through the DHT (records and introductions), and is found there. The DHT
    /// must run on the same endpoint ([`Dht::spawn`]).
    pub fn dht(mut self, dht: Arc<Dht>) -> Self {
        self.dht = Some(dht);
        self
    }

    /// Finds nodes through the MQTT pool, and is found there. The discovery takes over the
    /// node's received messages ([`SignalNode::recv`]): give it a node of its own. The node
    /// must use the endpoint's key.
    pub fn mqtt(mut self, node: Arc<SignalNode>) -> Self {
        self.mqtt = Some(node);
        self
    }

    /// Remembers where nodes were reached, and tries those addresses first next time.
    pub fn address_book(mut self, book: Arc<AddressBook>) -> Self {
        self.book = Some(book);
        self
    }

    /// A gate's observation address (`keywire gate` prints it) to learn our public address
    /// from, without using that gate as a relay.
    pub fn observer(mut self, addr: SocketAddr) -> Self {
        self.observer = Some(addr);
        self
    }

    /// Whether to advertise this node (publish its record, answer introductions); on by
    /// default. A node that only dials may turn it off.
    pub fn advertise(mut self, yes: bool) -> Self {
        self.quiet = !yes;
        self
    }
}

/// The channel that led to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IntroChannel {
    /// An address from the address book.
    AddressBook,
    /// The node's DHT record (an address, or one of its gates).
    DhtRecord,
    /// An introduction over the DHT, answered by a nudge.
    DhtIntro,
    /// An introduction over the MQTT pool, answered by a reply or a nudge.
    MqttIntro,
}

impl IntroChannel {
    /// A short stable name (`address-book`, `dht-record`, `dht-intro`, `mqtt-intro`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AddressBook => "address-book",
            Self::DhtRecord => "dht-record",
            Self::DhtIntro => "dht-intro",
            Self::MqttIntro => "mqtt-intro",
        }
    }
}

impl std::fmt::Display for IntroChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one channel did not lead to the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelFailure {
    /// The address book knows no address of the node.
    #[error("no address known")]
    NothingKnown,
    /// The DHT holds no record of the node, and no nudge came.
    #[error("no record found and no answer to the introduction")]
    NoRecord,
    /// The introduction got no answer.
    #[error("no answer to the introduction")]
    NoAnswer,
    /// The DHT failed.
    #[error("DHT: {0}")]
    Dht(#[from] DhtError),
    /// The MQTT pool failed.
    #[error("MQTT: {0}")]
    Mqtt(#[from] SignalError),
    /// The addresses found did not lead to the node.
    #[error("{0}")]
    Dial(#[from] ConnectError),
}

/// A connection made by key, with how it was found.
#[derive(Debug)]
pub struct KeyConnection {
    /// The connection.
    pub connection: Connection,
    /// The channel whose addresses won.
    pub introduced_by: IntroChannel,
    /// When each channel answered, from the call.
    pub timings: ResolveTimings,
}

/// When each channel answered (from the call to [`Endpoint::connect_by_key`]); `None`: not
/// used, or no answer before the connection was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResolveTimings {
    /// The address book had addresses.
    pub book: Option<Duration>,
    /// The DHT lookup returned a record.
    pub dht_record: Option<Duration>,
    /// The first nudge answering our DHT introduction.
    pub dht_nudge: Option<Duration>,
    /// The MQTT reply (or its nudge, whichever came first).
    pub mqtt_answer: Option<Duration>,
}

crate::metrics::counter_set! {
    /// Live discovery counters.
    live Counters;
    /// A point-in-time copy of an endpoint's discovery counters.
    snapshot DiscoveryMetrics;
    /// Introductions accepted over the DHT.
    intros_accepted_dht,
    /// Introductions accepted over the MQTT pool.
    intros_accepted_mqtt,
    /// Introductions refused: malformed, for another node, stale, replayed, an unasked reply.
    intros_rejected,
    /// Introductions dropped because too many arrived at once (rate limit).
    intros_rate_limited,
    /// Nudges sent.
    nudges_sent,
    /// Nudges not sent because of the rate limit.
    nudges_rate_limited,
    /// Nudges received that answered one of our introductions.
    nudges_matched,
    /// Nudges received that answered nothing (late, forged or malformed).
    nudges_unmatched,
    /// Address records published (or refreshed) in the DHT.
    records_published,
}

/// Why discovery could not be attached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The endpoint already has one.
    #[error("this endpoint already has a discovery attached")]
    AlreadySet,
    /// Not called inside a tokio runtime (the discovery runs tasks).
    #[error("discovery must be attached inside a tokio runtime")]
    NoRuntime,
    /// The MQTT node uses another key than the endpoint.
    #[error("the MQTT node's key ({mqtt}) is not the endpoint's ({endpoint})")]
    KeyMismatch {
        /// The endpoint's key.
        endpoint: NodeId,
        /// The MQTT node's key.
        mqtt: NodeId,
    },
}

impl Endpoint {
    /// Attaches `discovery`: from now on [`Endpoint::connect`] with no address finds the node
    /// through it, and (unless turned off) this node advertises itself through it. Must be
    /// called inside a tokio runtime; once per endpoint.
    pub fn set_discovery(&self, discovery: Discovery) -> Result<(), DiscoveryError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(DiscoveryError::NoRuntime);
        }
        if let Some(mqtt) = &discovery.mqtt {
            if mqtt.node_id() != self.node_id() {
                return Err(DiscoveryError::KeyMismatch {
                    endpoint: self.node_id(),
                    mqtt: mqtt.node_id(),
                });
            }
        }
        let state = DiscoveryState::new(self, discovery);
        self.discovery_cell()
            .set(state.clone())
            .map_err(|_| DiscoveryError::AlreadySet)?;
        advertise::start(self, &state);
        Ok(())
    }

    /// Discovery's counters; `None` without [`Endpoint::set_discovery`].
    pub fn discovery_metrics(&self) -> Option<DiscoveryMetrics> {
        self.discovery_cell().get().map(|d| d.counters.snapshot())
    }

    /// Connects to `node` knowing only its key, through the attached discovery (see the
    /// module documentation), and says which channel led to it. Without discovery, fails with
    /// [`ConnectError::NoAddresses`].
    pub async fn connect_by_key(
        &self,
        node: NodeId,
        alpn: &[u8],
    ) -> Result<KeyConnection, ConnectError> {
        let Some(state) = self.discovery_cell().get().cloned() else {
            return Err(ConnectError::NoAddresses(node));
        };
        resolve::connect(self, &state, node, alpn, resolve::Use::ALL).await
    }

    /// [`Endpoint::connect_by_key`] through one channel (the introducers below).
    async fn connect_through_channel(
        &self,
        node: NodeId,
        alpn: &[u8],
        channels: resolve::Use,
    ) -> Result<Connection, ConnectError> {
        let Some(state) = self.discovery_cell().get().cloned() else {
            return Err(ConnectError::NoAddresses(node));
        };
        Ok(resolve::connect(self, &state, node, alpn, channels)
            .await?
            .connection)
    }

    /// Remembers that `conn` works (its direct address) in the attached address book. Blocks
    /// for one short SQLite write (longer if another process holds the file's write lock).
    pub fn remember(&self, conn: &Connection) {
        if let Some(state) = self.discovery_cell().get() {
            state.remember(conn);
        }
    }
}

/// The DHT as an [`Introducer`]: the node's record and an introduction on its topic (the
/// endpoint's discovery must include the DHT, [`Discovery::dht`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct DhtIntroducer;

/// The MQTT pool as an [`Introducer`]: an introduction sealed to the node (the endpoint's
/// discovery must include the pool, [`Discovery::mqtt`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct MqttIntroducer;

impl Introducer for DhtIntroducer {
    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        node: NodeId,
        alpn: &'a [u8],
    ) -> IntroductionFuture<'a> {
        Box::pin(endpoint.connect_through_channel(node, alpn, resolve::Use::DHT))
    }
}

impl Introducer for MqttIntroducer {
    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        node: NodeId,
        alpn: &'a [u8],
    ) -> IntroductionFuture<'a> {
        Box::pin(endpoint.connect_through_channel(node, alpn, resolve::Use::MQTT))
    }
}
