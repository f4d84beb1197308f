//! The routing table: 256 k-buckets by XOR distance, with replacement caches, liveness and
//! subnet limits.
//!
//! Policies when full (Kademlia paper §2.2, and the subnet rule of BEP 42 in spirit):
//! - A full bucket keeps its old entries (long-lived nodes tend to stay); a newcomer goes to the
//!   bucket's replacement cache ([`REPLACEMENTS`] entries, the oldest dropped), and the core
//!   pings the least recently seen entry if it has been quiet for a while.
//! - An entry that fails a request is evicted at once if a replacement is waiting, else after
//!   [`MAX_FAILURES`] failures; the freshest replacement takes its place.
//! - At most [`MAX_PER_SUBNET`] entries of one /24 (IPv4) or /48 (IPv6) per bucket, so one
//!   host or provider cannot fill a bucket (an eclipse needs many networks, not many ports).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::id::{Distance, KadId};
use super::rpc::Cookie;
use super::{Timestamp, K};
use crate::identity::NodeId;

/// Replacement-cache size per bucket.
pub const REPLACEMENTS: usize = 8;
/// Failures after which an entry is evicted even with no replacement waiting.
pub const MAX_FAILURES: u8 = 2;
/// Entries of one /24 or /48 per bucket.
pub const MAX_PER_SUBNET: usize = 2;

/// A node as the overlay knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact {
    /// Its key.
    pub node_id: NodeId,
    /// Its overlay id (derived from the key).
    pub kad_id: KadId,
    /// Where it answers.
    pub addr: SocketAddr,
}

impl Contact {
    /// A contact for a key at an address.
    pub fn new(node_id: NodeId, addr: SocketAddr) -> Self {
        Self {
            node_id,
            kad_id: KadId::of_node(&node_id),
            addr: crate::ticket::canonical_addr(addr),
        }
    }
}

/// A routing-table entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Who.
    pub contact: Contact,
    /// When it last answered us (or sent us a validated request).
    pub last_seen: Timestamp,
    /// Requests that timed out since it last answered.
    pub failures: u8,
    /// The cookie it gave us, with when we got it.
    pub cookie: Option<(Cookie, Timestamp)>,
    /// When we last pinged it for a liveness check.
    pub pinged_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Least recently seen first.
    entries: Vec<Entry>,
    /// Oldest first.
    replacements: Vec<Contact>,
    refreshed_at: Timestamp,
}

/// What [`RoutingTable::insert_alive`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// A new entry.
    Added,
    /// An existing entry was refreshed.
    Updated,
    /// The bucket is full; the contact waits in the replacement cache. If `ping` is set, the
    /// caller should check that stale entry's liveness.
    Full {
        /// The least recently seen entry, if it is stale and not pinged recently.
        ping: Option<Contact>,
    },
    /// Refused: our own id, or over the subnet limit.
    Refused,
}

/// 256 buckets of at most [`K`] entries.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    own: KadId,
    buckets: Vec<Bucket>,
}

/// The /24 or /48 an address belongs to.
fn subnet(addr: &SocketAddr) -> [u8; 6] {
    match crate::ticket::canonical_addr(*addr).ip() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            [4, o[0], o[1], o[2], 0, 0]
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[0], o[1], o[2], o[3], o[4], o[5]]
        }
    }
}

impl RoutingTable {
    /// An empty table around our own overlay id.
    pub fn new(own: KadId) -> Self {
        Self {
            own,
            buckets: vec![Bucket::default(); 256],
        }
    }

    /// Our own overlay id.
    pub fn own_id(&self) -> KadId {
        self.own
    }

    fn index(&self, id: &KadId) -> Option<usize> {
        self.own.distance(id).bucket_index()
    }

    /// Records that `contact` is alive (it answered us, or its source address was validated).
    pub fn insert_alive(
        &mut self,
        now: Timestamp,
        contact: Contact,
        stale_after: Duration,
    ) -> InsertOutcome {
        let Some(index) = self.index(&contact.kad_id) else {
            return InsertOutcome::Refused;
        };
        let bucket = &mut self.buckets[index];
        if let Some(pos) = bucket
            .entries
            .iter()
            .position(|e| e.contact.node_id == contact.node_id)
        {
            let mut entry = bucket.entries.remove(pos);
            if entry.contact.addr != contact.addr {
                entry.cookie = None;
            }
            entry.contact = contact;
            entry.last_seen = now;
            entry.failures = 0;
            entry.pinged_at = None;
            bucket.entries.push(entry);
            return InsertOutcome::Updated;
        }
        let net = subnet(&contact.addr);
        let same_net = |c: &Contact| subnet(&c.addr) == net;
        if bucket
            .entries
            .iter()
            .filter(|e| same_net(&e.contact))
            .count()
            >= MAX_PER_SUBNET
        {
            return InsertOutcome::Refused;
        }
        if bucket.entries.len() < K {
            bucket.entries.push(Entry {
                contact,
                last_seen: now,
                failures: 0,
                cookie: None,
                pinged_at: None,
            });
            bucket.replacements.retain(|c| c.node_id != contact.node_id);
            return InsertOutcome::Added;
        }
        bucket.replacements.retain(|c| c.node_id != contact.node_id);
        if bucket.replacements.len() >= REPLACEMENTS {
            bucket.replacements.remove(0);
        }
        bucket.replacements.push(contact);
        let lrs = &mut bucket.entries[0];
        let quiet = now.saturating_since(lrs.last_seen) >= stale_after;
        let not_pinging = lrs
            .pinged_at
            .is_none_or(|t| now.saturating_since(t) >= stale_after);
        let ping = (quiet && not_pinging).then(|| {
            lrs.pinged_at = Some(now);
            lrs.contact
        });
        InsertOutcome::Full { ping }
    }

    /// Whether `contact` is new and its bucket has room for it (within the subnet limit).
    pub fn has_room(&self, contact: &Contact) -> bool {
        let Some(index) = self.index(&contact.kad_id) else {
            return false;
        };
        let bucket = &self.buckets[index];
        let net = subnet(&contact.addr);
        bucket.entries.len() < K
            && !bucket
                .entries
                .iter()
                .any(|e| e.contact.node_id == contact.node_id)
            && bucket
                .entries
                .iter()
                .filter(|e| subnet(&e.contact.addr) == net)
                .count()
                < MAX_PER_SUBNET
    }

    /// Records that a request to `node` timed out. Returns whether it was evicted.
    pub fn record_failure(&mut self, node: &NodeId) -> bool {
        let Some(index) = self.index(&KadId::of_node(node)) else {
            return false;
        };
        let bucket = &mut self.buckets[index];
        let Some(pos) = bucket
            .entries
            .iter()
            .position(|e| e.contact.node_id == *node)
        else {
            bucket.replacements.retain(|c| c.node_id != *node);
            return false;
        };
        let entry = &mut bucket.entries[pos];
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures < MAX_FAILURES && bucket.replacements.is_empty() {
            return false;
        }
        bucket.entries.remove(pos);
        // The freshest replacement that respects the subnet limit takes the slot.
        while let Some(contact) = bucket.replacements.pop() {
            let net = subnet(&contact.addr);
            let same = bucket
                .entries
                .iter()
                .filter(|e| subnet(&e.contact.addr) == net)
                .count();
            if same < MAX_PER_SUBNET {
                // Not yet proven alive by us: it is seen "long ago" so it is checked first.
                bucket.entries.insert(
                    0,
                    Entry {
                        contact,
                        last_seen: Timestamp::default(),
                        failures: 0,
                        cookie: None,
                        pinged_at: None,
                    },
                );
                break;
            }
        }
        true
    }

    /// The entry for `node`, if present.
    pub fn get_mut(&mut self, node: &NodeId) -> Option<&mut Entry> {
        let index = self.index(&KadId::of_node(node))?;
        self.buckets[index]
            .entries
            .iter_mut()
            .find(|e| e.contact.node_id == *node)
    }

    /// Removes `node` (e.g. it now says it is a client).
    pub fn remove(&mut self, node: &NodeId) {
        if let Some(index) = self.index(&KadId::of_node(node)) {
            self.buckets[index]
                .entries
                .retain(|e| e.contact.node_id != *node);
        }
    }

    /// The `n` known contacts closest to `target`, closest first.
    pub fn closest(&self, target: &KadId, n: usize) -> Vec<Contact> {
        let mut all: Vec<(Distance, Contact)> = self
            .entries()
            .filter(|e| e.failures == 0)
            .map(|e| (e.contact.kad_id.distance(target), e.contact))
            .collect();
        all.sort_unstable_by_key(|a| a.0);
        all.into_iter().take(n).map(|(_, c)| c).collect()
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.entries.iter())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.entries.len()).sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Buckets whose last refresh is older than `interval`, from the farthest up to one past
    /// the deepest non-empty bucket (deeper ones hold nobody yet: refreshing them is the join
    /// lookup's job).
    pub fn refresh_due(&self, now: Timestamp, interval: Duration) -> Vec<usize> {
        let deepest = self.buckets.iter().rposition(|b| !b.entries.is_empty());
        let Some(deepest) = deepest else {
            return Vec::new();
        };
        (0..=(deepest + 1).min(255))
            .filter(|&i| now.saturating_since(self.buckets[i].refreshed_at) >= interval)
            .collect()
    }

    /// Notes that a lookup targeted an id in bucket `index`.
    pub fn mark_refreshed(&mut self, target: &KadId, now: Timestamp) {
        if let Some(index) = self.index(target) {
            self.buckets[index].refreshed_at = now;
        }
    }

    /// The entry quiet for longest, if quiet for at least `older_than` and not being pinged.
    pub fn stalest(&mut self, now: Timestamp, older_than: Duration) -> Option<Contact> {
        let entry = self
            .buckets
            .iter_mut()
            .flat_map(|b| b.entries.iter_mut())
            .filter(|e| {
                e.pinged_at
                    .is_none_or(|t| now.saturating_since(t) >= older_than)
            })
            .min_by_key(|e| e.last_seen)?;
        if now.saturating_since(entry.last_seen) < older_than {
            return None;
        }
        entry.pinged_at = Some(now);
        Some(entry.contact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    const MIN: Duration = Duration::from_secs(60);

    fn contact(seed: u32, addr: &str) -> Contact {
        let mut s = [0u8; 32];
        s[..4].copy_from_slice(&seed.to_be_bytes());
        Contact::new(SecretKey::from_seed(s).node_id(), addr.parse().unwrap())
    }

    /// Contacts that all land in bucket 0 of an all-zero own id (top bit set).
    fn far_contacts(n: usize) -> Vec<Contact> {
        (0u32..)
            .map(|i| contact(i, &format!("10.{}.{}.1:1", i / 250, i % 250)))
            .filter(|c| c.kad_id.0[0] & 0x80 != 0)
            .take(n)
            .collect()
    }

    #[test]
    fn full_bucket_keeps_old_entries_and_caches_newcomers() {
        let mut table = RoutingTable::new(KadId([0; 32]));
        let t0 = Timestamp::from_unix_millis(1_000_000);
        let cs = far_contacts(K + 3);
        for c in &cs[..K] {
            assert_eq!(table.insert_alive(t0, *c, MIN), InsertOutcome::Added);
        }
        assert_eq!(
            table.insert_alive(t0, cs[K], MIN),
            InsertOutcome::Full { ping: None }
        );
        let later = t0 + MIN * 2;
        assert_eq!(
            table.insert_alive(later, cs[K + 1], MIN),
            InsertOutcome::Full { ping: Some(cs[0]) }
        );
        // The stale entry fails its ping: the freshest replacement takes its place.
        assert!(table.record_failure(&cs[0].node_id));
        assert!(table.get_mut(&cs[0].node_id).is_none());
        assert!(table.get_mut(&cs[K + 1].node_id).is_some());
        assert_eq!(table.len(), K);
    }

    #[test]
    fn subnet_limit_per_bucket() {
        let mut table = RoutingTable::new(KadId([0; 32]));
        let t0 = Timestamp::from_unix_millis(1);
        let cs: Vec<Contact> = far_contacts(3)
            .into_iter()
            .enumerate()
            .map(|(i, c)| Contact::new(c.node_id, format!("192.0.2.{}:1", i + 1).parse().unwrap()))
            .collect();
        assert_eq!(table.insert_alive(t0, cs[0], MIN), InsertOutcome::Added);
        assert_eq!(table.insert_alive(t0, cs[1], MIN), InsertOutcome::Added);
        assert_eq!(table.insert_alive(t0, cs[2], MIN), InsertOutcome::Refused);
    }

    #[test]
    fn failures_without_replacement_need_two_strikes() {
        let mut table = RoutingTable::new(KadId([0; 32]));
        let c = far_contacts(1)[0];
        table.insert_alive(Timestamp::from_unix_millis(1), c, MIN);
        assert!(!table.record_failure(&c.node_id));
        assert!(
            table.closest(&c.kad_id, 5).is_empty(),
            "failing entries are not handed out"
        );
        assert!(table.record_failure(&c.node_id));
        assert!(table.is_empty());
    }
}
