//! [`KadNode`] answering requests and taking replies.

use std::net::SocketAddr;

use rand_chacha::rand_core::RngCore;

use super::{KadEvent, KadNode, Mode, ModeSetting, PendingKind, Purpose};
use crate::identity::NodeId;
use crate::kad::id::KadId;
use crate::kad::lookup::LookupGoal;
use crate::kad::record::{AddressRecord, Publication};
use crate::kad::routing::Contact;
use crate::kad::rpc::{Message, Rpc, MAX_REPLY_CONTACTS};
use crate::kad::Timestamp;
use crate::ticket::canonical_addr;

impl KadNode {
    /// A DHT datagram (the payload after the control header) from `from`. Never panics.
    pub fn handle_datagram(&mut self, now: Timestamp, from: SocketAddr, payload: &[u8]) {
        let from = canonical_addr(from);
        self.stats.received_messages += 1;
        self.stats.received_bytes += payload.len() as u64;
        let Ok(rpc) = Rpc::decode(payload) else {
            self.stats.malformed += 1;
            return;
        };
        if rpc.sender == self.node_id {
            return;
        }
        if rpc.message.is_reply() {
            self.handle_reply(now, from, rpc);
        } else {
            self.handle_request(now, from, payload.len(), rpc);
        }
    }

    fn handle_request(&mut self, now: Timestamp, from: SocketAddr, request_len: usize, rpc: Rpc) {
        if !self.limiter.allow(now, from.ip()) {
            self.stats.rate_limited += 1;
            return;
        }
        let validated = rpc
            .cookie
            .is_some_and(|c| self.cookies.check(now, &from, &c));
        if validated && !self.recent_peers.contains(&from) {
            self.recent_peers.push_back(from);
            if self.recent_peers.len() > super::RECENT_PEERS {
                self.recent_peers.pop_front();
            }
        }
        if rpc.sender_is_server {
            let contact = Contact::new(rpc.sender, from);
            if validated {
                self.note_alive(now, contact);
            } else if self.table.has_room(&contact) {
                // Unvalidated: the id and address may be spoofed, so check with a ping first
                // (only when there is room: a full bucket would not take it anyway).
                self.send_request(
                    now,
                    from,
                    Some(rpc.sender),
                    Message::Ping,
                    PendingKind::Ping,
                );
            }
        }
        let txid = rpc.txid;
        let reply = match rpc.message {
            Message::Ping => Some(Message::Pong { observed: from }),
            Message::ReachProof => {
                self.on_reach_proof(now, from, txid);
                None
            }
            Message::ReachRelay { target } => {
                self.send_oneway(now, target, Message::ReachProof, txid);
                None
            }
            Message::Deliver {
                observed,
                publication,
            } => {
                self.on_deliver(now, from, observed, publication);
                None
            }
            _ if self.mode != Mode::Server => None,
            Message::FindNode { target } => Some(Message::Nodes(
                self.closest_for(&KadId(target), &rpc.sender),
            )),
            Message::FindRecord { key } => Some(Message::RecordReply {
                record: self.record_for(now, &key),
                closer: self.closest_for(&KadId::of_node(&key), &rpc.sender),
            }),
            Message::Store(record) => Some(Message::Stored {
                accepted: self.on_store(now, record),
            }),
            Message::Subscribe { topic, ttl_secs } => {
                let granted = if validated {
                    let wanted = std::time::Duration::from_secs(u64::from(ttl_secs))
                        .min(self.config.subscription_ttl * 2);
                    self.subscriptions
                        .subscribe(now, topic, rpc.sender, from, wanted)
                        .as_secs() as u16
                } else {
                    0
                };
                Some(Message::Subscribed { ttl_secs: granted })
            }
            Message::Publish(publication) => Some(Message::Published {
                forwarded: self.on_publish(now, from, publication),
            }),
            Message::ReachRequest => {
                if validated {
                    self.on_reach_request(now, from, txid);
                }
                None
            }
            _ => None,
        };
        if let Some(message) = reply {
            self.send_reply(now, from, txid, message, validated, request_len);
        }
    }

    /// Sends a reply with a fresh cookie; before the address is validated, trims it to the
    /// request's size (contacts first, then the record) or stays silent.
    fn send_reply(
        &mut self,
        now: Timestamp,
        to: SocketAddr,
        txid: u64,
        message: Message,
        validated: bool,
        request_len: usize,
    ) {
        let mut rpc = Rpc {
            txid,
            sender: self.node_id,
            sender_is_server: self.mode == Mode::Server,
            cookie: Some(self.cookies.issue(now, &to)),
            message,
            padding: 0,
        };
        let Ok(mut bytes) = rpc.encode() else { return };
        if !validated && bytes.len() > request_len {
            self.stats.unvalidated_trimmed += 1;
            while bytes.len() > request_len {
                match &mut rpc.message {
                    Message::Nodes(c) | Message::RecordReply { closer: c, .. } if !c.is_empty() => {
                        c.pop();
                    }
                    Message::RecordReply { record, .. } if record.is_some() => *record = None,
                    _ => return,
                }
                let Ok(again) = rpc.encode() else { return };
                bytes = again;
            }
        }
        self.push_transmit(to, bytes);
    }

    fn handle_reply(&mut self, now: Timestamp, from: SocketAddr, rpc: Rpc) {
        let expected = self
            .pending
            .get(&rpc.txid)
            .is_some_and(|p| p.to == from && p.node.is_none_or(|n| n == rpc.sender));
        if !expected {
            self.stats.unsolicited_replies += 1;
            return;
        }
        let Some(pending) = self.pending.remove(&rpc.txid) else {
            return;
        };
        self.deadlines.remove(&(pending.deadline, rpc.txid));
        if let Some(cookie) = rpc.cookie {
            self.remember_cookie(now, from, cookie);
        }
        if rpc.sender_is_server {
            self.note_alive(now, Contact::new(rpc.sender, from));
        } else {
            // It answered from the address we asked, with our txid: it is a client now.
            self.table.remove(&rpc.sender);
        }
        match (pending.kind, rpc.message) {
            (kind, Message::Pong { observed }) => {
                self.vote_observed(from, observed);
                if matches!(kind, PendingKind::Bootstrap) {
                    self.after_bootstrap_pong(now, from);
                }
            }
            (PendingKind::Lookup(id), Message::Nodes(closer)) => {
                self.lookup_answered(now, id, &rpc.sender, closer, None);
            }
            (PendingKind::Lookup(id), Message::RecordReply { record, closer }) => {
                let record = record.filter(|r| self.acceptable_answer(now, id, r));
                self.lookup_answered(now, id, &rpc.sender, closer, record);
            }
            (PendingKind::Lookup(id), _) => {
                if let Some((lookup, _)) = self.lookups.get_mut(&id) {
                    lookup.on_failure(&rpc.sender);
                }
                self.drive_lookup(now, id);
            }
            (PendingKind::Store(op), Message::Stored { accepted }) => {
                self.store_answered(op, accepted)
            }
            (PendingKind::Store(op), _) => self.store_answered(op, false),
            _ => {}
        }
    }

    fn lookup_answered(
        &mut self,
        now: Timestamp,
        id: u64,
        from: &NodeId,
        closer: Vec<Contact>,
        record: Option<AddressRecord>,
    ) {
        let own = self.node_id;
        if let Some((lookup, _)) = self.lookups.get_mut(&id) {
            lookup.on_answer(from, closer, record, own);
        }
        self.drive_lookup(now, id);
    }

    /// A record in a lookup answer counts only if it is for the key asked and valid.
    fn acceptable_answer(&mut self, now: Timestamp, id: u64, record: &AddressRecord) -> bool {
        let Some(asked) = self.lookups.get(&id).map(|(l, _)| l.goal) else {
            // A late answer to a lookup that already finished.
            return false;
        };
        let ok = asked == LookupGoal::Record(record.node_id)
            && record.validate(now, self.config.record_ttl).is_ok();
        if !ok {
            self.stats.bad_records += 1;
        }
        ok
    }

    fn after_bootstrap_pong(&mut self, now: Timestamp, from: SocketAddr) {
        if self.config.mode == ModeSetting::Auto && self.mode == Mode::Client {
            self.ask_for_reach_proof(now, from);
        }
        self.join_if_needed(now);
    }

    fn closest_for(&self, target: &KadId, requester: &NodeId) -> Vec<Contact> {
        self.table
            .closest(target, MAX_REPLY_CONTACTS + 1)
            .into_iter()
            .filter(|c| c.node_id != *requester)
            .take(MAX_REPLY_CONTACTS)
            .collect()
    }

    fn record_for(&self, now: Timestamp, key: &NodeId) -> Option<AddressRecord> {
        if *key == self.node_id {
            return self.own_record().filter(|r| r.expires > now).cloned();
        }
        self.records.get(now, key).cloned()
    }

    fn on_store(&mut self, now: Timestamp, record: AddressRecord) -> bool {
        if record.validate(now, self.config.record_ttl).is_err() {
            self.stats.bad_records += 1;
            return false;
        }
        self.records.put(record)
    }

    /// Forwards a publication to the topic's subscribers, annotated with the address we saw
    /// it come from. Returns how many it went to.
    fn on_publish(&mut self, now: Timestamp, from: SocketAddr, publication: Publication) -> u8 {
        if publication.validate(now).is_err() {
            self.stats.bad_records += 1;
            return 0;
        }
        if !self
            .seen_forwarded
            .first_sighting(publication.publisher, publication.seq)
        {
            return 0;
        }
        if self.is_subscribed(&publication.topic)
            && self
                .seen_delivered
                .first_sighting(publication.publisher, publication.seq)
        {
            self.push_event(KadEvent::Publication {
                publication: publication.clone(),
                observed: from,
                via: from,
            });
        }
        self.forward_publication(now, Some(from), &publication)
    }

    /// Sends a publication to the subscribers we hold, annotated with `observed`.
    pub(super) fn forward_publication(
        &mut self,
        now: Timestamp,
        observed: Option<SocketAddr>,
        publication: &Publication,
    ) -> u8 {
        let Some(observed) = observed else { return 0 };
        let Some(targets) = self.subscriptions.forward_targets(now, &publication.topic) else {
            self.stats.forwards_limited += 1;
            return 0;
        };
        let (rate, burst) = self.config.forward_rate;
        let mut forwarded = 0u8;
        for (node, addr) in targets {
            if node == publication.publisher {
                continue;
            }
            if !self.forward_budget.try_take(now, rate, burst) {
                self.stats.forwards_limited += 1;
                break;
            }
            let message = Message::Deliver {
                observed,
                publication: publication.clone(),
            };
            let txid = self.rng.next_u64();
            self.send_oneway(now, addr, message, txid);
            forwarded = forwarded.saturating_add(1);
        }
        forwarded
    }

    fn on_deliver(
        &mut self,
        now: Timestamp,
        via: SocketAddr,
        observed: SocketAddr,
        publication: Publication,
    ) {
        if !self.is_subscribed(&publication.topic) {
            return;
        }
        if publication.validate(now).is_err() {
            self.stats.bad_records += 1;
            return;
        }
        if self
            .seen_delivered
            .first_sighting(publication.publisher, publication.seq)
        {
            self.push_event(KadEvent::Publication {
                publication,
                observed,
                via,
            });
        }
    }

    /// Asks a third party (not at the requester's IP) to send the requester a proof.
    fn on_reach_request(&mut self, now: Timestamp, from: SocketAddr, txid: u64) {
        let helpers: Vec<SocketAddr> = self
            .table
            .entries()
            .map(|e| e.contact.addr)
            .chain(self.recent_peers.iter().copied())
            .filter(|a| a.ip() != from.ip())
            .collect();
        if helpers.is_empty() {
            return;
        }
        let helper = helpers[(self.rng.next_u64() % helpers.len() as u64) as usize];
        self.send_oneway(now, helper, Message::ReachRelay { target: from }, txid);
    }

    /// An unsolicited proof from a third party: we are reachable.
    fn on_reach_proof(&mut self, now: Timestamp, from: SocketAddr, nonce: u64) {
        let Some((asked, _)) = self.reach_nonces.get(&nonce).copied() else {
            return;
        };
        if asked.ip() == from.ip() {
            return;
        }
        self.reach_nonces.remove(&nonce);
        if self.config.mode == ModeSetting::Auto && self.mode == Mode::Client {
            self.mode = Mode::Server;
            self.push_event(KadEvent::ModeChanged(Mode::Server));
            // Announce ourselves: our neighbours add us as our requests reach them.
            let own = KadId::of_node(&self.node_id);
            let _ = self.start_lookup(now, own, LookupGoal::Nodes, Purpose::Maintenance);
        }
    }
}
