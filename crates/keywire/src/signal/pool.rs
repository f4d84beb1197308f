//! The broker pool of one node: its connections, which brokers a send goes to, the node's own
//! subscriptions, hint brokers, and the idle closer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use keywire_proto::signal::rendezvous::rank;
use keywire_proto::signal::{AddressFamily, BrokerId, BrokerSpec, SignalTopic};
use keywire_proto::NodeId;
use tokio::time::Instant;

use crate::signal::link::{lock, Link, LinkContext};
use crate::signal::metrics::inc;

/// Hint brokers kept per destination (the destination's own set is at most 3 per family).
pub(crate) const MAX_HINTS: usize = 6;

struct DestEntry {
    brokers: Vec<BrokerSpec>,
    expires: Instant,
}

/// The brokers a send starts on, and those it falls back to when one of them fails.
pub(crate) struct Targets {
    pub(crate) primary: Vec<BrokerSpec>,
    pub(crate) spares: Vec<BrokerSpec>,
}

pub(crate) struct BrokerPool {
    specs: Vec<BrokerSpec>,
    own: SignalTopic,
    pub(crate) ctx: Arc<LinkContext>,
    links: Mutex<HashMap<BrokerId, Arc<Link>>>,
    dests: Mutex<HashMap<NodeId, DestEntry>>,
    started: Mutex<bool>,
}

impl BrokerPool {
    pub(crate) fn new(specs: Vec<BrokerSpec>, own: SignalTopic, ctx: Arc<LinkContext>) -> Self {
        Self {
            specs,
            own,
            ctx,
            links: Mutex::new(HashMap::new()),
            dests: Mutex::new(HashMap::new()),
            started: Mutex::new(false),
        }
    }

    fn families(&self) -> Vec<AddressFamily> {
        let mut f: Vec<AddressFamily> = self.specs.iter().map(|s| s.family).collect();
        f.sort();
        f.dedup();
        f
    }

    /// The connection to `spec`, started if needed; `None` when the connection cap is reached.
    pub(crate) fn link(&self, spec: &BrokerSpec) -> Option<Arc<Link>> {
        let id = spec.id();
        let mut links = lock(&self.links);
        if let Some(link) = links.get(&id) {
            return Some(link.clone());
        }
        if links.len() >= self.ctx.config.max_links {
            return None;
        }
        let link = Link::spawn(spec.clone(), self.ctx.clone());
        links.insert(id, link.clone());
        Some(link)
    }

    pub(crate) fn existing(&self, id: &BrokerId) -> Option<Arc<Link>> {
        lock(&self.links).get(id).cloned()
    }

    /// Where a send to `dest` goes: cached and hinted brokers first, then the top `k` of each
    /// family not known to be down; the rest of the ranking (still not down) are spares.
    pub(crate) fn targets(&self, topic: &SignalTopic, dest: &NodeId, now: Instant) -> Targets {
        let health = &self.ctx.health;
        let usable = |s: &BrokerSpec| !health.is_backing_off(&s.id(), now);
        let mut primary: Vec<BrokerSpec> = Vec::new();
        {
            let mut dests = lock(&self.dests);
            if let Some(entry) = dests.get(dest) {
                if entry.expires <= now {
                    dests.remove(dest);
                } else {
                    primary.extend(entry.brokers.iter().filter(|s| usable(s)).cloned());
                }
            }
        }
        let k = self.ctx.config.per_family;
        let mut spares = Vec::new();
        for family in self.families() {
            let mut taken = 0;
            for spec in rank(&self.specs, topic, family) {
                if !usable(spec) {
                    continue;
                }
                if primary.iter().any(|p| p.id() == spec.id()) {
                    // Already there as a hint: it still counts as one of the top k.
                    taken += 1;
                    continue;
                }
                if taken < k {
                    primary.push(spec.clone());
                    taken += 1;
                } else {
                    spares.push(spec.clone());
                }
            }
        }
        Targets { primary, spares }
    }

    /// Remembers brokers to try first for `dest` (hints it advertised, or the one that last
    /// carried its acknowledgement).
    pub(crate) fn remember(&self, dest: NodeId, brokers: &[BrokerSpec], now: Instant) {
        let expires = now + self.ctx.config.hint_expiry;
        let mut dests = lock(&self.dests);
        if !dests.contains_key(&dest) && dests.len() >= self.ctx.config.dest_cache {
            // Full: evict the entry that would expire first.
            if let Some(victim) = dests.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k) {
                dests.remove(&victim);
            }
        }
        let entry = dests.entry(dest).or_insert(DestEntry {
            brokers: Vec::new(),
            expires,
        });
        entry.expires = expires;
        for b in brokers {
            if !entry.brokers.iter().any(|e| e.id() == b.id()) {
                entry.brokers.insert(0, b.clone());
            }
        }
        entry.brokers.truncate(MAX_HINTS);
    }

    /// The periodic tick: keeps the own subscriptions on the top `k` brokers not down for
    /// longer than `replace_after` (never dropping one: they stay for the node's lifetime), and
    /// closes outbound-only connections idle for longer than `idle_timeout`.
    pub(crate) fn maintain(&self, now: Instant) {
        let config = &self.ctx.config;
        let started = std::mem::replace(&mut *lock(&self.started), true);
        for family in self.families() {
            let wanted = rank(&self.specs, &self.own, family)
                .into_iter()
                .filter(|s| {
                    self.ctx
                        .health
                        .down_for(&s.id(), now)
                        .is_none_or(|d| d < config.replace_after)
                })
                .take(config.per_family);
            for spec in wanted {
                let Some(link) = self.link(spec) else {
                    continue;
                };
                if !link.pinned.swap(true, Ordering::Relaxed) && started {
                    inc(&self.ctx.counters.subscriptions_replaced);
                    tracing::info!(broker = %spec.id(), "own subscription added (replacement)");
                }
            }
        }
        let mut links = lock(&self.links);
        links.retain(|_, link| {
            let keep = link.is_pinned() || link.idle_for(now) < config.idle_timeout;
            if !keep {
                inc(&self.ctx.counters.idle_closed);
            }
            keep
        });
    }

    /// Brokers carrying this node's own subscription (what it can advertise as hints).
    pub(crate) fn own_brokers(&self) -> Vec<(BrokerSpec, bool)> {
        let links = lock(&self.links);
        let mut out: Vec<(BrokerSpec, bool)> = links
            .values()
            .filter(|l| l.is_pinned())
            .map(|l| {
                (
                    l.spec.clone(),
                    l.state() == crate::signal::link::LinkState::Up,
                )
            })
            .collect();
        out.sort_by_key(|(s, _)| s.id());
        out
    }

    pub(crate) fn connections(&self) -> Vec<(BrokerId, bool, bool)> {
        let links = lock(&self.links);
        let mut out: Vec<_> = links
            .iter()
            .map(|(id, l)| {
                let up = l.state() == crate::signal::link::LinkState::Up;
                (id.clone(), l.is_pinned(), up)
            })
            .collect();
        out.sort();
        out
    }

    pub(crate) fn link_count(&self) -> usize {
        lock(&self.links).len()
    }

    pub(crate) fn close_all(&self) {
        lock(&self.links).clear();
    }
}
