//! What a server-mode node keeps for others: address records and subscriptions, both bounded.
//!
//! - Records: at most [`MAX_RECORDS`]. When full, the record whose key is farthest from our own
//!   id is evicted (it is the one we are least responsible for), unless the newcomer is farther
//!   still, in which case the newcomer is refused. Expired records are purged.
//! - Subscriptions: at most [`MAX_TOPICS`] topics of at most [`MAX_SUBSCRIBERS`] each; when
//!   full, new subscriptions are refused (granted ttl 0) until some expire. Each topic forwards
//!   at most [`FORWARD_RATE`] publications per second (bursts of [`FORWARD_BURST`]); beyond
//!   that, publications are dropped and counted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use super::id::KadId;
use super::limits::TokenBucket;
use super::record::AddressRecord;
use super::Timestamp;
use crate::identity::NodeId;

/// Records held for others.
pub const MAX_RECORDS: usize = 4096;
/// Topics with subscribers.
pub const MAX_TOPICS: usize = 1024;
/// Subscribers per topic.
pub const MAX_SUBSCRIBERS: usize = 32;
/// Publications forwarded per topic per second.
pub const FORWARD_RATE: u32 = 5;
/// Burst of forwarded publications per topic.
pub const FORWARD_BURST: u32 = 20;
/// Publications remembered for duplicate suppression (oldest forgotten first).
pub const SEEN_PUBLICATIONS: usize = 1024;

/// Address records held for others.
#[derive(Debug, Clone)]
pub struct RecordStore {
    own: KadId,
    records: BTreeMap<NodeId, (KadId, AddressRecord)>,
}

impl RecordStore {
    /// An empty store for a node with overlay id `own`.
    pub fn new(own: KadId) -> Self {
        Self {
            own,
            records: BTreeMap::new(),
        }
    }

    /// Keeps a validated record unless we hold a fresher one or it loses the eviction rule.
    /// Returns whether the store now holds this record.
    pub fn put(&mut self, record: AddressRecord) -> bool {
        if let Some((_, held)) = self.records.get(&record.node_id) {
            if held.is_fresher_than(&record) {
                return false;
            }
            if *held == record {
                return true;
            }
        } else if self.records.len() >= MAX_RECORDS {
            let kad_id = KadId::of_node(&record.node_id);
            let farthest = self
                .records
                .iter()
                .max_by_key(|(_, (id, _))| self.own.distance(id))
                .map(|(k, (id, _))| (*k, self.own.distance(id)));
            match farthest {
                Some((key, d)) if d > self.own.distance(&kad_id) => {
                    self.records.remove(&key);
                }
                _ => return false,
            }
        }
        let kad_id = KadId::of_node(&record.node_id);
        self.records.insert(record.node_id, (kad_id, record));
        true
    }

    /// The record for `key`, if held and not expired.
    pub fn get(&self, now: Timestamp, key: &NodeId) -> Option<&AddressRecord> {
        self.records
            .get(key)
            .map(|(_, r)| r)
            .filter(|r| r.expires > now)
    }

    /// Drops expired records.
    pub fn purge(&mut self, now: Timestamp) {
        self.records.retain(|_, (_, r)| r.expires > now);
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[derive(Debug, Clone)]
struct Subscriber {
    node_id: NodeId,
    addr: SocketAddr,
    expires: Timestamp,
}

#[derive(Debug, Clone)]
struct Topic {
    subscribers: Vec<Subscriber>,
    forwarding: TokenBucket,
}

/// Subscriptions held for others.
#[derive(Debug, Clone, Default)]
pub struct Subscriptions {
    topics: BTreeMap<[u8; 32], Topic>,
}

/// Publications seen recently, for duplicate suppression; forgets the oldest beyond
/// [`SEEN_PUBLICATIONS`].
#[derive(Debug, Clone, Default)]
pub struct SeenPublications {
    seen: BTreeSet<(NodeId, u64)>,
    order: VecDeque<(NodeId, u64)>,
}

impl SeenPublications {
    /// Whether this publication is new (and remembers it).
    pub fn first_sighting(&mut self, publisher: NodeId, seq: u64) -> bool {
        if !self.seen.insert((publisher, seq)) {
            return false;
        }
        self.order.push_back((publisher, seq));
        if self.order.len() > SEEN_PUBLICATIONS {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

impl Subscriptions {
    /// Adds or renews a subscription; returns the granted lifetime (zero if refused).
    pub fn subscribe(
        &mut self,
        now: Timestamp,
        topic: [u8; 32],
        node_id: NodeId,
        addr: SocketAddr,
        ttl: Duration,
    ) -> Duration {
        if !self.topics.contains_key(&topic) && self.topics.len() >= MAX_TOPICS {
            self.purge(now);
            if self.topics.len() >= MAX_TOPICS {
                return Duration::ZERO;
            }
        }
        let entry = self.topics.entry(topic).or_insert_with(|| Topic {
            subscribers: Vec::new(),
            forwarding: TokenBucket::full(now, FORWARD_BURST),
        });
        entry
            .subscribers
            .retain(|s| s.expires > now && s.node_id != node_id);
        if entry.subscribers.len() >= MAX_SUBSCRIBERS {
            return Duration::ZERO;
        }
        entry.subscribers.push(Subscriber {
            node_id,
            addr,
            expires: now + ttl,
        });
        ttl
    }

    /// Where to forward a publication on `topic`; `None` if the topic's forwarding budget is
    /// spent. Empty if nobody subscribes.
    pub fn forward_targets(
        &mut self,
        now: Timestamp,
        topic: &[u8; 32],
    ) -> Option<Vec<(NodeId, SocketAddr)>> {
        let Some(entry) = self.topics.get_mut(topic) else {
            return Some(Vec::new());
        };
        entry.subscribers.retain(|s| s.expires > now);
        if entry.subscribers.is_empty() {
            return Some(Vec::new());
        }
        if !entry.forwarding.try_take(now, FORWARD_RATE, FORWARD_BURST) {
            return None;
        }
        Some(
            entry
                .subscribers
                .iter()
                .map(|s| (s.node_id, s.addr))
                .collect(),
        )
    }

    /// Drops expired subscriptions and empty topics.
    pub fn purge(&mut self, now: Timestamp) {
        for topic in self.topics.values_mut() {
            topic.subscribers.retain(|s| s.expires > now);
        }
        self.topics.retain(|_, t| !t.subscribers.is_empty());
    }

    /// Subscriptions held.
    pub fn len(&self) -> usize {
        self.topics.values().map(|t| t.subscribers.len()).sum()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    fn record(seed: u8, seq: u64) -> AddressRecord {
        AddressRecord::sign(
            &SecretKey::from_seed([seed; 32]),
            seq,
            Timestamp::from_unix_millis(10_000),
            vec![],
            vec![],
        )
        .unwrap()
    }

    #[test]
    fn keeps_the_freshest() {
        let mut store = RecordStore::new(KadId([0; 32]));
        assert!(store.put(record(1, 5)));
        assert!(!store.put(record(1, 4)));
        assert!(store.put(record(1, 6)));
        assert_eq!(
            store
                .get(Timestamp::from_unix_millis(1), &record(1, 0).node_id)
                .unwrap()
                .seq,
            6
        );
        assert!(store
            .get(Timestamp::from_unix_millis(10_000), &record(1, 0).node_id)
            .is_none());
    }

    #[test]
    fn subscriptions_bounded_and_rate_limited() {
        let mut subs = Subscriptions::default();
        let now = Timestamp::from_unix_millis(1);
        let ttl = Duration::from_secs(60);
        for i in 0..MAX_SUBSCRIBERS as u32 + 1 {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            let id = SecretKey::from_seed(seed).node_id();
            let granted = subs.subscribe(now, [1; 32], id, "1.1.1.1:1".parse().unwrap(), ttl);
            assert_eq!(granted.is_zero(), i as usize == MAX_SUBSCRIBERS);
        }
        for _ in 0..FORWARD_BURST {
            assert!(subs.forward_targets(now, &[1; 32]).is_some());
        }
        assert!(subs.forward_targets(now, &[1; 32]).is_none());
        assert_eq!(subs.forward_targets(now + ttl, &[1; 32]), Some(vec![]));
        let pubr = record(1, 0).node_id;
        let mut seen = SeenPublications::default();
        assert!(seen.first_sighting(pubr, 1));
        assert!(!seen.first_sighting(pubr, 1));
    }
}
