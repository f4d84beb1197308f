//! Replay protection for opened envelopes.
//!
//! Three layers, each bounded:
//!
//! 1. **Timestamp window.** An envelope is accepted only if its timestamp lies within
//!    `window` of the receiver's wall clock (both directions: clocks differ) and not before the
//!    moment this guard was created. The guard keeps nothing across restarts, so that floor is
//!    what stops a replay of an envelope accepted by a previous run; a message stamped before a
//!    receiver restart is lost and the sender's retry (new sequence, new stamp) gets through.
//! 2. **Per-queue sequence window** (as IPsec, RFC 4303 §3.4.3): for each (source, queue) the
//!    highest sequence and a 128-bit map of the ones just below it: the fast path for duplicates
//!    (fan-out copies arrive close together). A sequence further behind is not refused outright
//!    (fan-out over several brokers reorders bursts by more than 128, measured in the
//!    1,000-message test): the seen-id cache decides. At most `max_queues` queues are tracked;
//!    when full, the least recently active one is forgotten, which is safe because of layer 3.
//! 3. **Seen-id cache**: every accepted (source, queue, sequence) until its timestamp leaves the
//!    window. At most `max_seen` entries; when full of unexpired entries, new envelopes are
//!    refused ([`RejectReason::CacheFull`]) rather than forgetting one (fail closed).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use crate::signal::{Envelope, QueueId, RejectReason, UnixMillis};
use crate::NodeId;

/// Width of the per-queue sequence window, in sequence numbers.
pub const SEQUENCE_WINDOW: u64 = 128;

/// Limits of a [`ReplayGuard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Largest accepted difference between an envelope's timestamp and the receiver's clock.
    pub window: Duration,
    /// Queues tracked at once.
    pub max_queues: usize,
    /// Accepted ids remembered at once.
    pub max_seen: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            // Two minutes each way tolerates ordinary clock skew between hosts without NTP
            // discipline, while keeping the seen cache small.
            window: Duration::from_secs(120),
            max_queues: 4096,
            // 65 536 ids × ~60 bytes ≈ 4 MB at most; at the default per-sender cap that is
            // minutes of traffic from hundreds of senders.
            max_seen: 65_536,
        }
    }
}

type MessageId = (NodeId, QueueId, u64);

#[derive(Debug, Clone, Copy)]
struct QueueWindow {
    highest: u64,
    /// Bit i set: sequence `highest - i` was accepted.
    seen: u128,
    last_active: UnixMillis,
}

/// Decides whether an authentic envelope is fresh. See the module docs for the rules.
#[derive(Debug)]
pub struct ReplayGuard {
    config: ReplayConfig,
    floor: UnixMillis,
    queues: HashMap<(NodeId, QueueId), QueueWindow>,
    seen: HashSet<MessageId>,
    /// Seen ids ordered by the wall time after which they can no longer pass layer 1.
    expiry: BTreeSet<(u64, MessageId)>,
}

impl ReplayGuard {
    /// A guard for a receiver that starts at `now` (the floor for accepted timestamps).
    pub fn new(config: ReplayConfig, now: UnixMillis) -> Self {
        Self {
            config,
            floor: now,
            queues: HashMap::new(),
            seen: HashSet::new(),
            expiry: BTreeSet::new(),
        }
    }

    /// Checks `envelope` against all three layers at wall time `now`; records it if accepted.
    pub fn check(&mut self, envelope: &Envelope, now: UnixMillis) -> Result<(), RejectReason> {
        let window = self.window_ms();
        let ts = envelope.timestamp.0;
        if ts < self.floor.0 || ts.abs_diff(now.0) > window {
            return Err(RejectReason::Stale);
        }
        let key = (envelope.source, envelope.queue);
        let id = (envelope.source, envelope.queue, envelope.sequence);
        if self.seen.contains(&id) {
            return Err(RejectReason::Replay);
        }
        if let Some(q) = self.queues.get(&key) {
            if !sequence_is_new(q, envelope.sequence) {
                return Err(RejectReason::Replay);
            }
        }
        self.purge(now);
        if self.seen.len() >= self.config.max_seen {
            return Err(RejectReason::CacheFull);
        }
        self.seen.insert(id);
        self.expiry.insert((ts.saturating_add(window), id));
        self.record_sequence(key, envelope.sequence, now);
        Ok(())
    }

    /// Ids currently remembered (for tests and metrics).
    pub fn seen_len(&self) -> usize {
        self.seen.len()
    }

    /// Queues currently tracked.
    pub fn queues_len(&self) -> usize {
        self.queues.len()
    }

    fn window_ms(&self) -> u64 {
        u64::try_from(self.config.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Drops seen ids whose timestamps have left the window: layer 1 refuses them now.
    fn purge(&mut self, now: UnixMillis) {
        while let Some(&(expires, id)) = self.expiry.first() {
            if expires >= now.0 {
                break;
            }
            self.expiry.pop_first();
            self.seen.remove(&id);
        }
    }

    fn record_sequence(&mut self, key: (NodeId, QueueId), sequence: u64, now: UnixMillis) {
        if !self.queues.contains_key(&key) && self.queues.len() >= self.config.max_queues {
            // Forget the least recently active queue; the seen cache still covers its ids.
            if let Some(oldest) = self
                .queues
                .iter()
                .min_by_key(|(_, q)| q.last_active)
                .map(|(k, _)| *k)
            {
                self.queues.remove(&oldest);
            }
        }
        let q = self.queues.entry(key).or_insert(QueueWindow {
            highest: sequence,
            seen: 0,
            last_active: now,
        });
        q.last_active = now;
        if sequence > q.highest {
            let shift = sequence - q.highest;
            q.seen = if shift >= 128 { 0 } else { q.seen << shift };
            q.highest = sequence;
        }
        let behind = q.highest - sequence;
        if behind < SEQUENCE_WINDOW {
            q.seen |= 1u128 << behind;
        }
    }
}

/// Whether the window says "not seen"; sequences behind the window are left to the seen cache.
fn sequence_is_new(q: &QueueWindow, sequence: u64) -> bool {
    if sequence > q.highest {
        return true;
    }
    let behind = q.highest - sequence;
    behind >= SEQUENCE_WINDOW || q.seen & (1u128 << behind) == 0
}

#[cfg(test)]
mod tests;
