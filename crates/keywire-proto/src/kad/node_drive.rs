//! Driving [`KadNode`]: outputs, timers, lookups in progress, maintenance.

use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::rand_core::RngCore;

use super::{
    KadError, KadEvent, KadNode, Mode, ModeSetting, Pending, PendingKind, Purpose, StoreOp,
    Transmit, MAX_EVENTS, MAX_LOOKUPS, MAX_PEER_COOKIES, MAX_PENDING, MAX_TRANSMITS,
};
use crate::identity::NodeId;
use crate::kad::id::KadId;
use crate::kad::limits::COOKIE_EPOCH;
use crate::kad::lookup::{Lookup, LookupGoal};
use crate::kad::routing::{Contact, InsertOutcome};
use crate::kad::rpc::{Cookie, Message, Rpc, MAX_REPLY_CONTACTS};
use crate::kad::{Timestamp, K};

/// Size an unvalidated request is padded to, so that its full reply may be sent:
/// header with cookie (51) plus the largest usual body. A Pong carries one IPv6 address; Nodes
/// carries 8 contacts with IPv6 addresses (8 × 51 + 1); a record reply has room for a record
/// with a few addresses and 8 IPv4 contacts (replies that do not fit are trimmed).
fn padded_len(message: &Message) -> usize {
    match message {
        Message::Ping => 80,
        Message::FindNode { .. } => 51 + 1 + MAX_REPLY_CONTACTS * 51,
        Message::FindRecord { .. } => 640,
        _ => 0,
    }
}

/// Most votes kept for our observed address (one per reporting IP).
const OBSERVED_VOTES: usize = 8;
/// Longest back-off between reachability checks while we are a client.
const MAX_REACH_RETRY: Duration = Duration::from_secs(600);

impl KadNode {
    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<KadEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let mut next = self.next_maintenance;
        if let Some((deadline, _)) = self.deadlines.first() {
            next = next.min(*deadline);
        }
        if self.wants_reach_check() {
            next = next.min(self.next_reach_check);
        }
        if self.wants_keepalive() {
            next = next.min(self.next_keepalive);
        }
        Some(next)
    }

    fn wants_keepalive(&self) -> bool {
        self.mode == Mode::Client
            && self.config.subscription_keepalive.is_some()
            && !self.subscription_holders.is_empty()
    }

    /// The keepalive interval, at least a second (a zero interval would spin).
    fn keepalive_interval(&self) -> Option<Duration> {
        self.config
            .subscription_keepalive
            .map(|every| every.max(Duration::from_secs(1)))
    }

    /// Pings each node holding one of our subscriptions: a client behind a NAT would
    /// otherwise lose the mapping that their deliveries come back through. Holders of
    /// subscriptions that lapsed (not renewed for a whole lifetime) are forgotten.
    fn keep_subscriptions_alive(&mut self, now: Timestamp) {
        let Some(every) = self.keepalive_interval() else {
            return;
        };
        self.next_keepalive = now + every;
        let lifetime = self.config.subscription_ttl;
        self.subscription_holders
            .retain(|_, (_, at)| now.saturating_since(*at) < lifetime);
        let holders: Vec<(SocketAddr, NodeId)> = self
            .subscription_holders
            .iter()
            .map(|(a, (n, _))| (*a, *n))
            .collect();
        for (addr, node) in holders {
            self.send_request(now, addr, Some(node), Message::Ping, PendingKind::Ping);
        }
    }

    fn note_subscription_holder(&mut self, now: Timestamp, addr: SocketAddr, node: NodeId) {
        let known = self.subscription_holders.contains_key(&addr);
        if !known && self.subscription_holders.len() >= super::MAX_SUBSCRIPTION_HOLDERS {
            let oldest = self
                .subscription_holders
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(a, _)| *a);
            if let Some(oldest) = oldest {
                self.subscription_holders.remove(&oldest);
            }
        }
        if self.subscription_holders.is_empty() {
            // The first keepalive one interval after the first subscription.
            self.next_keepalive = now + self.keepalive_interval().unwrap_or_default();
        }
        self.subscription_holders.insert(addr, (node, now));
    }

    fn wants_reach_check(&self) -> bool {
        self.config.mode == ModeSetting::Auto && self.mode == Mode::Client && !self.table.is_empty()
    }

    /// Expires requests whose time is up and runs maintenance when due.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(&(deadline, txid)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(pending) = self.pending.remove(&txid) {
                self.on_request_failed(now, pending);
            }
        }
        if self.wants_reach_check() && now >= self.next_reach_check {
            self.check_reachability(now);
        }
        if self.wants_keepalive() && now >= self.next_keepalive {
            self.keep_subscriptions_alive(now);
        }
        if now >= self.next_maintenance {
            self.maintain(now);
        }
    }

    fn on_request_failed(&mut self, now: Timestamp, pending: Pending) {
        self.stats.timeouts += 1;
        if let Some(node) = pending.node {
            self.table.record_failure(&node);
        }
        match pending.kind {
            PendingKind::Lookup(id) => {
                if let (Some((lookup, _)), Some(node)) = (self.lookups.get_mut(&id), pending.node) {
                    lookup.on_failure(&node);
                }
                self.drive_lookup(now, id);
            }
            PendingKind::Store(op) => self.store_answered(op, false),
            _ => {}
        }
    }

    pub(super) fn start_lookup(
        &mut self,
        now: Timestamp,
        target: KadId,
        goal: LookupGoal,
        purpose: Purpose,
    ) -> Result<(), KadError> {
        if self.lookups.len() >= MAX_LOOKUPS {
            return Err(KadError::TooManyLookups);
        }
        let id = self.next_lookup;
        self.next_lookup += 1;
        self.table.mark_refreshed(&target, now);
        let seeds = self.table.closest(&target, K);
        let mut lookup = Lookup::new(target, goal, seeds, self.node_id);
        if matches!(purpose, Purpose::Maintenance) {
            lookup = lookup.with_needed(self.config.alpha);
        }
        self.lookups.insert(id, (lookup, purpose));
        self.drive_lookup(now, id);
        Ok(())
    }

    pub(super) fn drive_lookup(&mut self, now: Timestamp, id: u64) {
        let Some((lookup, _)) = self.lookups.get_mut(&id) else {
            return;
        };
        let requests = lookup.next_requests(self.config.alpha);
        let (goal, target) = (lookup.goal, lookup.target);
        for (contact, _round) in requests {
            let message = match goal {
                LookupGoal::Nodes => Message::FindNode { target: target.0 },
                LookupGoal::Record(key) => Message::FindRecord { key },
            };
            let sent = self.send_request(
                now,
                contact.addr,
                Some(contact.node_id),
                message,
                PendingKind::Lookup(id),
            );
            if sent.is_none() {
                if let Some((lookup, _)) = self.lookups.get_mut(&id) {
                    lookup.on_failure(&contact.node_id);
                }
            }
        }
        if self.lookups.get(&id).is_some_and(|(l, _)| l.is_finished()) {
            if let Some((lookup, purpose)) = self.lookups.remove(&id) {
                self.finish_lookup(now, lookup, purpose);
            }
        }
    }

    fn finish_lookup(&mut self, now: Timestamp, lookup: Lookup, purpose: Purpose) {
        match purpose {
            Purpose::User(id) => self.push_event(KadEvent::LookupFinished {
                id,
                record: lookup.best_record().map(|(r, _)| r.clone()),
                closest: lookup.closest_answered(K),
                rounds: lookup.rounds(),
                messages: lookup.messages,
            }),
            Purpose::Maintenance => {}
            Purpose::Join => {
                self.joined = true;
                let contacts = self.table.len();
                self.push_event(KadEvent::Bootstrapped { contacts });
                if self.own_record.is_some() {
                    let _ = self.republish(now);
                }
            }
            Purpose::StoreRecord(record) => {
                let op = self.next_lookup;
                self.next_lookup += 1;
                let mut outstanding = 0;
                for c in lookup.closest_answered(K) {
                    let message = Message::Store(record.clone());
                    let kind = PendingKind::Store(op);
                    if self
                        .send_request(now, c.addr, Some(c.node_id), message, kind)
                        .is_some()
                    {
                        outstanding += 1;
                    }
                }
                let seq = record.seq;
                self.store_ops.insert(
                    op,
                    StoreOp {
                        seq,
                        outstanding,
                        stored: 0,
                    },
                );
                if outstanding == 0 {
                    self.store_answered(op, false);
                }
            }
            Purpose::Subscribe(topic) => {
                let ttl_secs = self
                    .config
                    .subscription_ttl
                    .as_secs()
                    .min(u64::from(u16::MAX)) as u16;
                for c in lookup.closest_answered(self.config.subscribe_fanout) {
                    self.note_subscription_holder(now, c.addr, c.node_id);
                    let message = Message::Subscribe { topic, ttl_secs };
                    self.send_request(now, c.addr, Some(c.node_id), message, PendingKind::Other);
                }
            }
            Purpose::Publish(publication) => {
                // Two more than hold subscriptions: the publisher's view of the closest nodes
                // may differ a little from the subscribers' (loss, churn).
                let fanout = self.config.subscribe_fanout + 2;
                let closest = lookup.closest_answered(fanout);
                let own = KadId::of_node(&self.node_id).distance(&lookup.target);
                let we_are_close = closest.len() < fanout
                    || closest
                        .iter()
                        .take(self.config.subscribe_fanout)
                        .any(|c| c.kad_id.distance(&lookup.target) > own);
                if we_are_close {
                    // We may hold subscriptions for this topic ourselves.
                    let observed = self.observed_addr;
                    self.forward_publication(now, observed, &publication);
                }
                for c in closest {
                    let message = Message::Publish(publication.clone());
                    self.send_request(now, c.addr, Some(c.node_id), message, PendingKind::Other);
                }
            }
        }
    }

    pub(super) fn store_answered(&mut self, op: u64, accepted: bool) {
        let Some(state) = self.store_ops.get_mut(&op) else {
            return;
        };
        state.outstanding = state.outstanding.saturating_sub(1);
        state.stored += usize::from(accepted);
        if state.outstanding == 0 {
            let (seq, stored) = (state.seq, state.stored);
            self.store_ops.remove(&op);
            self.push_event(KadEvent::RecordStored { seq, stored });
        }
    }

    /// Sends a request and remembers it; `None` if it could not be sent.
    pub(super) fn send_request(
        &mut self,
        now: Timestamp,
        to: SocketAddr,
        node: Option<NodeIdOpt>,
        message: Message,
        kind: PendingKind,
    ) -> Option<u64> {
        if self.pending.len() >= MAX_PENDING {
            self.stats.queue_full += 1;
            return None;
        }
        let txid = loop {
            let t = self.rng.next_u64();
            if t != 0 && !self.pending.contains_key(&t) {
                break t;
            }
        };
        let payload = self.encode_request(now, to, txid, message)?;
        let deadline = now + self.config.request_timeout;
        self.pending.insert(
            txid,
            Pending {
                to,
                node,
                kind,
                deadline,
            },
        );
        self.deadlines.insert((deadline, txid));
        self.push_transmit(to, payload);
        Some(txid)
    }

    /// Sends a message that expects no reply, with the given txid.
    pub(super) fn send_oneway(
        &mut self,
        now: Timestamp,
        to: SocketAddr,
        message: Message,
        txid: u64,
    ) {
        if let Some(payload) = self.encode_request(now, to, txid, message) {
            self.push_transmit(to, payload);
        }
    }

    fn encode_request(
        &mut self,
        now: Timestamp,
        to: SocketAddr,
        txid: u64,
        message: Message,
    ) -> Option<Vec<u8>> {
        // A cookie is valid for one to two epochs after it was issued: only use one that is
        // surely still good, else pad as if we had none.
        let cookie = self
            .peer_cookies
            .get(&to)
            .filter(|(_, got)| now.saturating_since(*got) < COOKIE_EPOCH)
            .map(|(c, _)| *c);
        let pad_to = if cookie.is_none() {
            padded_len(&message)
        } else {
            0
        };
        let rpc = Rpc {
            txid,
            sender: self.node_id,
            sender_is_server: self.mode == Mode::Server,
            cookie,
            message,
            padding: 0,
        };
        let mut payload = rpc.encode().ok()?;
        if payload.len() < pad_to {
            payload.resize(pad_to, 0);
        }
        Some(payload)
    }

    pub(super) fn push_transmit(&mut self, to: SocketAddr, payload: Vec<u8>) {
        if self.transmits.len() >= MAX_TRANSMITS {
            self.stats.queue_full += 1;
            return;
        }
        self.stats.sent_messages += 1;
        self.stats.sent_bytes += payload.len() as u64;
        self.transmits.push_back(Transmit { to, payload });
    }

    pub(super) fn push_event(&mut self, event: KadEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.stats.queue_full += 1;
            return;
        }
        self.events.push_back(event);
    }

    pub(super) fn remember_cookie(&mut self, now: Timestamp, from: SocketAddr, cookie: Cookie) {
        if self.peer_cookies.insert(from, (cookie, now)).is_none() {
            self.peer_cookie_order.push_back(from);
            if self.peer_cookie_order.len() > MAX_PEER_COOKIES {
                if let Some(old) = self.peer_cookie_order.pop_front() {
                    self.peer_cookies.remove(&old);
                }
            }
        }
    }

    /// `contact` proved it is alive; a full bucket may ask us to check its oldest entry.
    pub(super) fn note_alive(&mut self, now: Timestamp, contact: Contact) {
        let outcome = self
            .table
            .insert_alive(now, contact, self.config.stale_after);
        if outcome == InsertOutcome::Added {
            // The first node of a network has nobody to bootstrap from: it joins (and stores
            // its record) once the first peer finds it.
            self.join_if_needed(now);
        }
        if let InsertOutcome::Full { ping: Some(old) } = outcome {
            self.send_request(
                now,
                old.addr,
                Some(old.node_id),
                Message::Ping,
                PendingKind::Ping,
            );
        }
    }

    /// Starts the join lookup (our own id) unless it ran or is running.
    pub(super) fn join_if_needed(&mut self, now: Timestamp) {
        let joining = self
            .lookups
            .values()
            .any(|(_, p)| matches!(p, Purpose::Join));
        if !self.joined && !joining {
            let own = KadId::of_node(&self.node_id);
            let _ = self.start_lookup(now, own, LookupGoal::Nodes, Purpose::Join);
        }
    }

    /// A peer told us the address it sees; adopt the one most peers agree on.
    pub(super) fn vote_observed(&mut self, reporter: SocketAddr, observed: SocketAddr) {
        self.observed_votes.retain(|(ip, _)| *ip != reporter.ip());
        self.observed_votes.push_back((reporter.ip(), observed));
        if self.observed_votes.len() > OBSERVED_VOTES {
            self.observed_votes.pop_front();
        }
        let votes = |a: &SocketAddr| self.observed_votes.iter().filter(|(_, o)| o == a).count();
        let best = self
            .observed_votes
            .iter()
            .map(|(_, o)| (votes(o), *o))
            .max_by_key(|(n, _)| *n);
        if let Some((n, addr)) = best {
            if n >= 2 && self.observed_addr != Some(addr) {
                self.observed_addr = Some(addr);
                self.push_event(KadEvent::AddressObserved(addr));
            }
        }
    }

    /// Asks up to three peers to have a third party send us an unsolicited proof.
    pub(super) fn check_reachability(&mut self, now: Timestamp) {
        let mut asked: Vec<SocketAddr> = self.table.entries().map(|e| e.contact.addr).collect();
        while asked.len() > 3 {
            let i = (self.rng.next_u64() % asked.len() as u64) as usize;
            asked.swap_remove(i);
        }
        for addr in asked {
            self.ask_for_reach_proof(now, addr);
        }
        self.next_reach_check = now + self.reach_retry;
        self.reach_retry = (self.reach_retry * 2).min(MAX_REACH_RETRY);
    }

    pub(super) fn ask_for_reach_proof(&mut self, now: Timestamp, addr: SocketAddr) {
        let nonce = self.rng.next_u64();
        if self.reach_nonces.len() >= 16 {
            self.reach_nonces.pop_first();
        }
        self.reach_nonces.insert(nonce, (addr, now));
        self.send_oneway(now, addr, Message::ReachRequest, nonce);
    }

    /// Once a minute: purge, refresh buckets, check liveness, republish, renew.
    fn maintain(&mut self, now: Timestamp) {
        let jitter =
            self.rng.next_u64() % (self.config.maintenance_interval.as_millis() as u64 / 10 + 1);
        self.next_maintenance =
            now + self.config.maintenance_interval + Duration::from_millis(jitter);
        self.records.purge(now);
        self.subscriptions.purge(now);
        self.reach_nonces
            .retain(|_, (_, sent)| now.saturating_since(*sent) < Duration::from_secs(60));
        if self.table.is_empty() && !self.bootstrap_addrs.is_empty() {
            let addrs = self.bootstrap_addrs.clone();
            self.bootstrap(now, &addrs);
        }
        let running = self
            .lookups
            .values()
            .filter(|(_, p)| matches!(p, Purpose::Maintenance))
            .count();
        for index in self
            .table
            .refresh_due(now, self.config.refresh_interval)
            .into_iter()
            .take(3usize.saturating_sub(running))
        {
            let mut random = [0u8; 32];
            self.rng.fill_bytes(&mut random);
            let target = self.table.own_id().random_in_bucket(index, random);
            let _ = self.start_lookup(now, target, LookupGoal::Nodes, Purpose::Maintenance);
        }
        if let Some(quiet) = self.table.stalest(now, self.config.liveness_interval) {
            let message = Message::Ping;
            self.send_request(
                now,
                quiet.addr,
                Some(quiet.node_id),
                message,
                PendingKind::Ping,
            );
        }
        if self.joined
            && self
                .own_record
                .as_ref()
                .is_some_and(|o| o.republish_at <= now)
        {
            let _ = self.republish(now);
        }
        let due: Vec<[u8; 32]> = self
            .my_topics
            .iter()
            .filter(|(_, renew)| **renew <= now)
            .map(|(t, _)| *t)
            .collect();
        for topic in due {
            let _ = self.subscribe(now, topic);
        }
    }
}

type NodeIdOpt = crate::identity::NodeId;
