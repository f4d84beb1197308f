//! [`KadNode`]: the DHT core a driver feeds with datagrams and time.
//!
//! Inputs: [`KadNode::handle_datagram`], [`KadNode::handle_timeout`] and the commands
//! (`bootstrap`, `find_record`, `publish_record`, `subscribe`, `publish`). Outputs:
//! [`KadNode::poll_transmit`], [`KadNode::poll_event`], [`KadNode::poll_timeout`]. Incoming
//! RPCs are handled in `node_rpc.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;

use super::id::KadId;
use super::limits::{CookieJar, SourceLimiter, TokenBucket};
use super::lookup::{Lookup, LookupGoal};
use super::record::{AddressRecord, GateRef, Publication, RecordError};
use super::routing::{Contact, RoutingTable};
use super::rpc::{Cookie, Message};
use super::store::{RecordStore, SeenPublications, Subscriptions};
use super::Timestamp;
use crate::identity::{NodeId, SecretKey};

/// Transmits waiting for the driver; beyond this, new ones are dropped and counted (the
/// driver is not keeping up, and DHT traffic must give way rather than pile up).
pub const MAX_TRANSMITS: usize = 4096;
/// Events waiting for the driver; beyond this, new ones are dropped and counted.
pub const MAX_EVENTS: usize = 1024;
/// Lookups at once (user, maintenance and publication lookups together).
pub const MAX_LOOKUPS: usize = 64;
/// Requests awaiting a reply; beyond this, new requests are not sent.
pub const MAX_PENDING: usize = 1024;
/// Cookies we hold from peers; the oldest is forgotten first.
pub const MAX_PEER_COOKIES: usize = 2048;
/// Recently validated peers that may be asked to send reachability proofs.
pub const RECENT_PEERS: usize = 32;

/// Whether this node answers and stores for others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Publicly reachable: answers queries, stores records and subscriptions, and is handed
    /// out in other nodes' routing tables.
    Server,
    /// Not (known to be) reachable: only asks.
    Client,
}

/// How the mode is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeSetting {
    /// Start as a client; become a server once a third party reaches us unsolicited.
    Auto,
    /// Always a server (a gate, a bootstrap node).
    Server,
    /// Always a client.
    Client,
}

/// Tunables. Defaults follow the issue: records live 1 h and are republished every 20 min.
#[derive(Debug, Clone)]
pub struct KadConfig {
    /// Requests in flight per lookup (Kademlia's α).
    pub alpha: usize,
    /// How long to wait for a reply.
    pub request_timeout: Duration,
    /// Mode selection.
    pub mode: ModeSetting,
    /// Lifetime of our address record, and the most we accept from others.
    pub record_ttl: Duration,
    /// How often we republish our record (well before it expires).
    pub republish_interval: Duration,
    /// Buckets not looked into for this long are refreshed.
    pub refresh_interval: Duration,
    /// A full bucket's least recently seen entry is pinged if quiet this long.
    pub stale_after: Duration,
    /// Every maintenance tick, the quietest entry is pinged if quiet this long.
    pub liveness_interval: Duration,
    /// Period of the maintenance tick.
    pub maintenance_interval: Duration,
    /// Lifetime asked for our subscriptions (renewed at half).
    pub subscription_ttl: Duration,
    /// How many of the closest nodes hold a subscription (Mist: a few of the k closest).
    pub subscribe_fanout: usize,
    /// Publish candidate addresses in our record (false: gates only, so holders of our key
    /// do not learn where we are).
    pub publish_addresses: bool,
    /// In client mode, how often to ping the nodes holding our subscriptions, so that the
    /// NAT mapping they deliver publications through stays open (`None`: never). Many NATs
    /// forget an idle UDP mapping after 30 s.
    pub subscription_keepalive: Option<Duration>,
    /// Requests served per second per source address, and burst.
    pub source_rate: (u32, u32),
    /// Publications forwarded per second in total, and burst.
    pub forward_rate: (u32, u32),
}

impl Default for KadConfig {
    fn default() -> Self {
        Self {
            alpha: 3,
            request_timeout: Duration::from_millis(1000),
            mode: ModeSetting::Auto,
            record_ttl: Duration::from_secs(3600),
            republish_interval: Duration::from_secs(1200),
            refresh_interval: Duration::from_secs(900),
            stale_after: Duration::from_secs(120),
            liveness_interval: Duration::from_secs(900),
            maintenance_interval: Duration::from_secs(60),
            subscription_ttl: Duration::from_secs(600),
            subscribe_fanout: 4,
            publish_addresses: true,
            subscription_keepalive: Some(Duration::from_secs(15)),
            source_rate: (50, 100),
            forward_rate: (200, 400),
        }
    }
}

/// A datagram payload for the driver to send (the control header is the socket's job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// The encoded RPC.
    pub payload: Vec<u8>,
}

/// Identifies a user lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LookupId(pub u64);

/// What the core tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KadEvent {
    /// A lookup started with [`KadNode::find_record`] or [`KadNode::find_closest`] ended.
    LookupFinished {
        /// Which.
        id: LookupId,
        /// The freshest valid record found (record lookups only).
        record: Option<AddressRecord>,
        /// The closest nodes that answered.
        closest: Vec<Contact>,
        /// Sequential request rounds used.
        rounds: u32,
        /// Requests sent.
        messages: u32,
    },
    /// Our record (this sequence number) was offered to the closest nodes; `stored` accepted.
    RecordStored {
        /// The record's sequence number.
        seq: u64,
        /// How many nodes accepted it.
        stored: usize,
    },
    /// A publication arrived on a topic we subscribe to.
    Publication {
        /// The verified publication.
        publication: Publication,
        /// The publisher's address as the forwarding node saw it: NOT signed by the publisher,
        /// so treat it as an unconfirmed hint.
        observed: SocketAddr,
        /// The node that forwarded it.
        via: SocketAddr,
    },
    /// The join lookup finished: the routing table holds this many contacts.
    Bootstrapped {
        /// Routing-table size.
        contacts: usize,
    },
    /// Our mode changed (reachability learned from peers).
    ModeChanged(Mode),
    /// Most peers now agree on this address for us.
    AddressObserved(SocketAddr),
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KadError {
    /// [`MAX_LOOKUPS`] lookups are already running.
    #[error("too many lookups at once")]
    TooManyLookups,
    /// The record or publication could not be built.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Counters, for status output and the simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KadStats {
    /// Datagrams sent.
    pub sent_messages: u64,
    /// Bytes sent (DHT payload, without the 2-byte control header).
    pub sent_bytes: u64,
    /// Datagrams received.
    pub received_messages: u64,
    /// Bytes received.
    pub received_bytes: u64,
    /// Undecodable datagrams.
    pub malformed: u64,
    /// Requests dropped by the per-address rate limit.
    pub rate_limited: u64,
    /// Replies with no matching request (late, or from the wrong address).
    pub unsolicited_replies: u64,
    /// Records or publications refused (bad signature, expired, from the future).
    pub bad_records: u64,
    /// Replies trimmed or withheld because the requester's address was not validated.
    pub unvalidated_trimmed: u64,
    /// Publications not forwarded because of forwarding rate limits.
    pub forwards_limited: u64,
    /// Transmits or events dropped because the driver fell behind, or requests not sent
    /// because [`MAX_PENDING`] were in flight.
    pub queue_full: u64,
    /// Requests that timed out.
    pub timeouts: u64,
}

/// A snapshot for `keywire dht status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KadStatus {
    /// Our key.
    pub node_id: NodeId,
    /// Current mode.
    pub mode: Mode,
    /// Our address as peers see it.
    pub observed_addr: Option<SocketAddr>,
    /// Routing-table entries.
    pub contacts: usize,
    /// Records held for others.
    pub records_held: usize,
    /// Subscriptions held for others.
    pub subscriptions_held: usize,
    /// Lookups running.
    pub lookups: usize,
    /// Counters.
    pub stats: KadStats,
}

#[derive(Debug, Clone)]
pub(super) enum Purpose {
    User(LookupId),
    Maintenance,
    Join,
    StoreRecord(AddressRecord),
    Subscribe([u8; 32]),
    Publish(Publication),
}

#[derive(Debug, Clone, Copy)]
pub(super) enum PendingKind {
    Lookup(u64),
    Ping,
    Bootstrap,
    Store(u64),
    Other,
}

#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) to: SocketAddr,
    pub(super) node: Option<NodeId>,
    pub(super) kind: PendingKind,
    pub(super) deadline: Timestamp,
}

#[derive(Debug, Clone)]
pub(super) struct StoreOp {
    seq: u64,
    outstanding: usize,
    stored: usize,
}

#[derive(Debug, Clone)]
struct OwnRecord {
    addrs: Vec<SocketAddr>,
    gates: Vec<GateRef>,
    current: Option<AddressRecord>,
    republish_at: Timestamp,
}

/// The Kademlia core. See the module docs.
#[derive(Debug)]
pub struct KadNode {
    pub(super) key: SecretKey,
    pub(super) node_id: NodeId,
    pub(super) config: KadConfig,
    pub(super) rng: ChaCha12Rng,
    pub(super) table: RoutingTable,
    pub(super) records: RecordStore,
    pub(super) subscriptions: Subscriptions,
    pub(super) seen_forwarded: SeenPublications,
    pub(super) seen_delivered: SeenPublications,
    pub(super) cookies: CookieJar,
    pub(super) limiter: SourceLimiter,
    pub(super) forward_budget: TokenBucket,
    pub(super) peer_cookies: BTreeMap<SocketAddr, (Cookie, Timestamp)>,
    peer_cookie_order: VecDeque<SocketAddr>,
    pub(super) recent_peers: VecDeque<SocketAddr>,
    pub(super) pending: BTreeMap<u64, Pending>,
    deadlines: BTreeSet<(Timestamp, u64)>,
    pub(super) lookups: BTreeMap<u64, (Lookup, Purpose)>,
    next_lookup: u64,
    pub(super) store_ops: BTreeMap<u64, StoreOp>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<KadEvent>,
    pub(super) mode: Mode,
    pub(super) reach_nonces: BTreeMap<u64, (SocketAddr, Timestamp)>,
    pub(super) next_reach_check: Timestamp,
    reach_retry: Duration,
    observed_votes: VecDeque<(std::net::IpAddr, SocketAddr)>,
    pub(super) observed_addr: Option<SocketAddr>,
    own_record: Option<OwnRecord>,
    my_topics: BTreeMap<[u8; 32], Timestamp>,
    /// Nodes we sent a SUBSCRIBE to, and when (at most [`MAX_SUBSCRIPTION_HOLDERS`], the
    /// oldest forgotten first; forgotten too once the subscription would have lapsed), for
    /// keepalives.
    pub(super) subscription_holders: BTreeMap<SocketAddr, (NodeId, Timestamp)>,
    pub(super) next_keepalive: Timestamp,
    publication_seq: u64,
    next_maintenance: Timestamp,
    bootstrap_addrs: Vec<SocketAddr>,
    pub(super) joined: bool,
    pub(super) stats: KadStats,
}

/// Most subscription holders kept alive (the fan-out times a few topics).
pub const MAX_SUBSCRIPTION_HOLDERS: usize = 16;

/// Overlay position of a pub/sub topic.
pub fn topic_id(topic: &[u8; 32]) -> KadId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"keywire kad topic v1");
    hasher.update(topic);
    KadId(*hasher.finalize().as_bytes())
}

impl KadNode {
    /// A core for `key`, with its RNG seeded from `seed` (the simulator passes a fixed seed;
    /// real nodes a random one).
    pub fn new(key: SecretKey, config: KadConfig, seed: [u8; 32], now: Timestamp) -> Self {
        let mut rng = ChaCha12Rng::from_seed(seed);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let node_id = key.node_id();
        let own = KadId::of_node(&node_id);
        let mode = match config.mode {
            ModeSetting::Server => Mode::Server,
            _ => Mode::Client,
        };
        let (rate, burst) = config.source_rate;
        let forward_burst = config.forward_rate.1;
        let jitter = Duration::from_millis(rng.next_u64() % 1000);
        Self {
            key,
            node_id,
            rng,
            table: RoutingTable::new(own),
            records: RecordStore::new(own),
            subscriptions: Subscriptions::default(),
            seen_forwarded: SeenPublications::default(),
            seen_delivered: SeenPublications::default(),
            cookies: CookieJar::new(secret),
            limiter: SourceLimiter::new(rate, burst),
            forward_budget: TokenBucket::full(now, forward_burst),
            peer_cookies: BTreeMap::new(),
            peer_cookie_order: VecDeque::new(),
            recent_peers: VecDeque::new(),
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            lookups: BTreeMap::new(),
            next_lookup: 1,
            store_ops: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            mode,
            reach_nonces: BTreeMap::new(),
            next_reach_check: now,
            reach_retry: Duration::from_secs(10),
            observed_votes: VecDeque::new(),
            observed_addr: None,
            own_record: None,
            my_topics: BTreeMap::new(),
            subscription_holders: BTreeMap::new(),
            next_keepalive: now,
            publication_seq: now.as_unix_millis(),
            next_maintenance: now + config.maintenance_interval + jitter,
            bootstrap_addrs: Vec::new(),
            joined: false,
            stats: KadStats::default(),
            config,
        }
    }

    /// Our key.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Counters.
    pub fn stats(&self) -> KadStats {
        self.stats
    }

    /// A status snapshot.
    pub fn status(&self) -> KadStatus {
        KadStatus {
            node_id: self.node_id,
            mode: self.mode,
            observed_addr: self.observed_addr,
            contacts: self.table.len(),
            records_held: self.records.len(),
            subscriptions_held: self.subscriptions.len(),
            lookups: self.lookups.len(),
            stats: self.stats,
        }
    }

    /// The record we hold for `key` (as a storing node), if any and not expired.
    pub fn held_record(&self, now: Timestamp, key: &NodeId) -> Option<&AddressRecord> {
        self.records.get(now, key)
    }

    /// Routing-table contacts, for saving across restarts (give them to
    /// [`Self::bootstrap`] on the next start).
    pub fn contacts(&self) -> Vec<Contact> {
        self.table.entries().map(|e| e.contact).collect()
    }

    /// Joins through any known nodes or gates: pings them, and once one answers, looks up our
    /// own id (which fills the routing table and tells our neighbours about us). The addresses
    /// are kept to re-join if the table ever empties.
    pub fn bootstrap(&mut self, now: Timestamp, addrs: &[SocketAddr]) {
        for addr in addrs.iter().take(64) {
            if !self.bootstrap_addrs.contains(addr) && self.bootstrap_addrs.len() < 64 {
                self.bootstrap_addrs.push(*addr);
            }
            self.send_request(now, *addr, None, Message::Ping, PendingKind::Bootstrap);
        }
    }

    /// Starts a lookup for the freshest address record of `key`.
    pub fn find_record(&mut self, now: Timestamp, key: NodeId) -> Result<LookupId, KadError> {
        let id = LookupId(self.next_lookup);
        self.start_lookup(
            now,
            KadId::of_node(&key),
            LookupGoal::Record(key),
            Purpose::User(id),
        )?;
        Ok(id)
    }

    /// Starts a lookup for the k closest nodes to `target`.
    pub fn find_closest(&mut self, now: Timestamp, target: KadId) -> Result<LookupId, KadError> {
        let id = LookupId(self.next_lookup);
        self.start_lookup(now, target, LookupGoal::Nodes, Purpose::User(id))?;
        Ok(id)
    }

    /// Signs and stores our address record at the k closest nodes, and republishes it every
    /// `republish_interval` with a higher sequence number. With `publish_addresses` off, the
    /// addresses are left out (gates only).
    pub fn publish_record(
        &mut self,
        now: Timestamp,
        addrs: Vec<SocketAddr>,
        gates: Vec<GateRef>,
    ) -> Result<u64, KadError> {
        let addrs = if self.config.publish_addresses {
            addrs
        } else {
            Vec::new()
        };
        // Validate sizes now, so a misuse is reported to the caller, not at republication.
        AddressRecord::sign(&self.key, 0, now, addrs.clone(), gates.clone())?;
        self.own_record = Some(OwnRecord {
            addrs,
            gates,
            current: None,
            republish_at: now,
        });
        if !self.joined {
            // Stored once the join lookup has found our neighbourhood.
            return Ok(0);
        }
        self.republish(now)
    }

    pub(super) fn republish(&mut self, now: Timestamp) -> Result<u64, KadError> {
        let Some(own) = &self.own_record else {
            return Ok(0);
        };
        // The time in ms is the sequence number: fresher after a restart too.
        let prev = own.current.as_ref().map_or(0, |r| r.seq);
        let seq = now.as_unix_millis().max(prev + 1);
        let expires = now + self.config.record_ttl;
        let record = AddressRecord::sign(
            &self.key,
            seq,
            expires,
            own.addrs.clone(),
            own.gates.clone(),
        )?;
        let target = KadId::of_node(&self.node_id);
        self.start_lookup(
            now,
            target,
            LookupGoal::Nodes,
            Purpose::StoreRecord(record.clone()),
        )?;
        if let Some(own) = &mut self.own_record {
            own.current = Some(record);
            own.republish_at = now + self.config.republish_interval;
        }
        Ok(seq)
    }

    /// Our current record, if we publish one.
    pub fn own_record(&self) -> Option<&AddressRecord> {
        self.own_record.as_ref().and_then(|o| o.current.as_ref())
    }

    /// Subscribes to `topic` at the closest nodes, renewing until [`Self::unsubscribe`].
    pub fn subscribe(&mut self, now: Timestamp, topic: [u8; 32]) -> Result<(), KadError> {
        self.start_lookup(
            now,
            topic_id(&topic),
            LookupGoal::Nodes,
            Purpose::Subscribe(topic),
        )?;
        self.my_topics
            .insert(topic, now + self.config.subscription_ttl / 2);
        Ok(())
    }

    /// Stops renewing a subscription (it lapses where it is held).
    pub fn unsubscribe(&mut self, topic: &[u8; 32]) {
        self.my_topics.remove(topic);
    }

    /// Whether we subscribe to `topic`.
    pub fn is_subscribed(&self, topic: &[u8; 32]) -> bool {
        self.my_topics.contains_key(topic)
    }

    /// Signs `payload` and routes it to the nodes holding `topic`'s subscriptions.
    pub fn publish(
        &mut self,
        now: Timestamp,
        topic: [u8; 32],
        payload: Vec<u8>,
    ) -> Result<(), KadError> {
        self.publication_seq = self.publication_seq.max(now.as_unix_millis()) + 1;
        let publication = Publication::sign(&self.key, topic, self.publication_seq, now, payload)?;
        self.start_lookup(
            now,
            topic_id(&topic),
            LookupGoal::Nodes,
            Purpose::Publish(publication),
        )
    }
}

#[path = "node_drive.rs"]
mod drive;
#[path = "node_rpc.rs"]
mod rpc_handling;
#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
