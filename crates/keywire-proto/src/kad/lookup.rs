//! The iterative lookup (Kademlia paper §2.3): ask the α closest known nodes, learn closer
//! ones from their answers, repeat until the k closest have all answered or failed.
//!
//! A request's *round* is one more than the round of the answer that named its target; the
//! routing-table seeds are round 1. Rounds count sequential request round trips ("hops"),
//! whatever the parallelism.

use super::id::{Distance, KadId};
use super::record::AddressRecord;
use super::routing::Contact;
use super::K;
use crate::identity::NodeId;

/// Candidates a lookup remembers; the farthest are dropped beyond this (only the k closest
/// matter, the rest is slack for failures).
pub const MAX_CANDIDATES: usize = 3 * K;
/// A record lookup stops once this many answers carried a valid record and one of them came
/// from among the [`RECORD_NEAREST`] closest live candidates known, and returns the freshest
/// record seen. Waiting for all k costs rounds for nothing; stopping at the first record
/// returns stale copies: an owner republishes to the k closest nodes of the moment, while
/// nodes that were closest at an earlier publication keep the older copy until it expires.
pub const RECORD_QUORUM: u32 = 2;
/// See [`RECORD_QUORUM`].
pub const RECORD_NEAREST: usize = 3;

/// What a lookup is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupGoal {
    /// The k closest nodes to an id.
    Nodes,
    /// The freshest address record of a key.
    Record(NodeId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    InFlight,
    Answered,
    Failed,
}

#[derive(Debug, Clone)]
struct Candidate {
    contact: Contact,
    distance: Distance,
    state: State,
    round: u32,
    had_record: bool,
}

/// One lookup's state.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// Where it goes.
    pub target: KadId,
    /// What it is for.
    pub goal: LookupGoal,
    candidates: Vec<Candidate>,
    best_record: Option<(AddressRecord, u32)>,
    records_seen: u32,
    /// Requests sent so far.
    pub messages: u32,
    last_round: u32,
    needed: usize,
}

impl Lookup {
    /// Starts from `seeds` (usually the routing table's closest), skipping `own`.
    pub fn new(target: KadId, goal: LookupGoal, seeds: Vec<Contact>, own: NodeId) -> Self {
        let mut lookup = Self {
            target,
            goal,
            candidates: Vec::new(),
            best_record: None,
            records_seen: 0,
            messages: 0,
            last_round: 0,
            needed: K,
        };
        lookup.add(seeds, 1, own);
        lookup
    }

    /// Only the `needed` closest must answer (default k). A bucket refresh needs a few
    /// contacts in the bucket's range, not the k closest to a random id.
    pub fn with_needed(mut self, needed: usize) -> Self {
        self.needed = needed.clamp(1, K);
        self
    }

    fn add(&mut self, contacts: Vec<Contact>, round: u32, own: NodeId) {
        for contact in contacts {
            if contact.node_id == own
                || self
                    .candidates
                    .iter()
                    .any(|c| c.contact.node_id == contact.node_id)
            {
                continue;
            }
            let distance = contact.kad_id.distance(&self.target);
            let pos = self.candidates.partition_point(|c| c.distance < distance);
            if pos >= MAX_CANDIDATES {
                continue;
            }
            self.candidates.insert(
                pos,
                Candidate {
                    contact,
                    distance,
                    state: State::Waiting,
                    round,
                    had_record: false,
                },
            );
            self.candidates.truncate(MAX_CANDIDATES);
        }
    }

    /// Contacts to ask now so that at most `alpha` requests are in flight. Only candidates
    /// among the `needed` (default k) closest not known to have failed are asked.
    pub fn next_requests(&mut self, alpha: usize) -> Vec<(Contact, u32)> {
        let mut in_flight = self
            .candidates
            .iter()
            .filter(|c| c.state == State::InFlight)
            .count();
        let mut out = Vec::new();
        let mut rank = 0;
        for c in self.candidates.iter_mut() {
            if in_flight >= alpha || rank >= self.needed {
                break;
            }
            if c.state == State::Failed {
                continue;
            }
            rank += 1;
            if c.state == State::Waiting {
                c.state = State::InFlight;
                in_flight += 1;
                self.messages += 1;
                out.push((c.contact, c.round));
            }
        }
        out
    }

    fn find(&mut self, node: &NodeId) -> Option<&mut Candidate> {
        self.candidates
            .iter_mut()
            .find(|c| c.contact.node_id == *node)
    }

    /// An answer from `node`: closer contacts, and for record lookups a record that the caller
    /// has already validated (signature, expiry, key).
    pub fn on_answer(
        &mut self,
        node: &NodeId,
        closer: Vec<Contact>,
        record: Option<AddressRecord>,
        own: NodeId,
    ) {
        let Some(c) = self.find(node) else { return };
        if c.state != State::InFlight {
            return;
        }
        c.state = State::Answered;
        c.had_record = record.is_some();
        let round = c.round;
        self.last_round = self.last_round.max(round);
        if let Some(record) = record {
            self.records_seen += 1;
            let fresher = self
                .best_record
                .as_ref()
                .is_none_or(|(best, _)| record.is_fresher_than(best));
            if fresher {
                self.best_record = Some((record, round));
            }
        }
        self.add(closer, round + 1, own);
    }

    /// `node` did not answer in time.
    pub fn on_failure(&mut self, node: &NodeId) {
        if let Some(c) = self.find(node) {
            if c.state == State::InFlight {
                c.state = State::Failed;
            }
        }
    }

    /// Whether the lookup is done: a record quorum reached, or every one of the k closest
    /// live candidates has answered.
    pub fn is_finished(&self) -> bool {
        if matches!(self.goal, LookupGoal::Record(_))
            && self.records_seen >= RECORD_QUORUM
            && self
                .candidates
                .iter()
                .filter(|c| c.state != State::Failed)
                .take(RECORD_NEAREST)
                .any(|c| c.had_record)
        {
            return true;
        }
        !self
            .candidates
            .iter()
            .filter(|c| c.state != State::Failed)
            .take(self.needed)
            .any(|c| matches!(c.state, State::Waiting | State::InFlight))
    }

    /// The closest candidates that answered, closest first.
    pub fn closest_answered(&self, n: usize) -> Vec<Contact> {
        self.candidates
            .iter()
            .filter(|c| c.state == State::Answered)
            .take(n)
            .map(|c| c.contact)
            .collect()
    }

    /// The freshest record found, with the round of the answer that carried it.
    pub fn best_record(&self) -> Option<&(AddressRecord, u32)> {
        self.best_record.as_ref()
    }

    /// Sequential rounds used until now: the deepest round answered (a lookup returns when
    /// its last needed answer arrives, so this is its latency in round trips, ignoring
    /// timeouts).
    pub fn rounds(&self) -> u32 {
        self.last_round
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    fn contact(i: u32) -> Contact {
        let mut s = [0u8; 32];
        s[..4].copy_from_slice(&i.to_be_bytes());
        Contact::new(
            SecretKey::from_seed(s).node_id(),
            SocketAddr::from(([10, 0, (i / 256) as u8, i as u8], 1)),
        )
    }
    use std::net::SocketAddr;

    #[test]
    fn converges_and_counts_rounds() {
        let own = contact(999).node_id;
        let target = KadId([0; 32]);
        let mut lookup = Lookup::new(target, LookupGoal::Nodes, vec![contact(1)], own);
        let first = lookup.next_requests(3);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1, 1);
        lookup.on_answer(
            &contact(1).node_id,
            (2..6).map(contact).collect(),
            None,
            own,
        );
        let second = lookup.next_requests(3);
        assert_eq!(second.len(), 3);
        assert!(second.iter().all(|(_, r)| *r == 2));
        for (c, _) in &second {
            lookup.on_answer(&c.node_id, vec![], None, own);
        }
        let third = lookup.next_requests(3);
        assert_eq!(third.len(), 1);
        lookup.on_failure(&third[0].0.node_id);
        assert!(lookup.is_finished());
        assert_eq!(lookup.rounds(), 2);
        assert_eq!(lookup.closest_answered(20).len(), 4);
        assert_eq!(lookup.messages, 5);
    }
}
