//! The two memories a polite, safe sidewire peer keeps: payloads it sent recently (sidewire
//! receivers silently drop a repeated text), and messages it accepted (to refuse replays).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::key::PUBLIC_KEY_LEN;
use super::packet::{SidewireFields, QUEUE_ID_LEN};
use super::SidewirePublicKey;

/// Accepted timestamps lie within this many seconds of the receiver's clock, either side.
/// sidewire itself refuses messages older than 120 s but accepts any future timestamp.
pub const TIMESTAMP_WINDOW: u64 = 120;

/// A sidewire receiver remembers the SHA-256 of every text it delivered for 120 s, checked every
/// 10 s (its `prune_msg_ids`), and drops a repeat without telling its application — though it
/// still acknowledges it. keywire refuses to send one text twice within this window rather than
/// have it acknowledged and lost.
pub const PAYLOAD_REUSE_WINDOW: Duration = Duration::from_secs(130);

/// Payloads sent in the last [`PAYLOAD_REUSE_WINDOW`].
#[derive(Debug)]
pub struct RecentPayloads {
    capacity: usize,
    sent: HashMap<[u8; 32], Instant>,
    order: VecDeque<([u8; 32], Instant)>,
}

/// Why [`RecentPayloads::claim`] refused a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimRefused {
    /// The same text was sent less than [`PAYLOAD_REUSE_WINDOW`] ago.
    #[error("the same text was sent to sidewire peers less than 130 s ago; sidewire receivers would acknowledge and drop it (retry in {0:?})")]
    Repeated(Duration),
    /// As many distinct texts as the memory holds were sent within the window.
    #[error("too many distinct texts sent in the last 130 s")]
    Full,
}

impl RecentPayloads {
    /// A memory of at most `capacity` payloads.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            sent: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn fingerprint(payload: &[u8]) -> [u8; 32] {
        *blake3::hash(payload).as_bytes()
    }

    /// Records `payload` as sent at `now`, unless it was sent within the window.
    pub fn claim(&mut self, payload: &[u8], now: Instant) -> Result<(), ClaimRefused> {
        self.expire(now);
        let print = Self::fingerprint(payload);
        if let Some(at) = self.sent.get(&print) {
            let ready = *at + PAYLOAD_REUSE_WINDOW;
            return Err(ClaimRefused::Repeated(ready.saturating_duration_since(now)));
        }
        if self.sent.len() >= self.capacity {
            return Err(ClaimRefused::Full);
        }
        self.sent.insert(print, now);
        self.order.push_back((print, now));
        Ok(())
    }

    /// Forgets `payload` (a send that never reached any broker may be retried at once).
    pub fn forget(&mut self, payload: &[u8]) {
        let print = Self::fingerprint(payload);
        if self.sent.remove(&print).is_some() {
            self.order.retain(|(p, _)| *p != print);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((print, at)) = self.order.front().copied() {
            if now.saturating_duration_since(at) < PAYLOAD_REUSE_WINDOW {
                break;
            }
            self.order.pop_front();
            self.sent.remove(&print);
        }
    }
}

/// What [`SeenMessages::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time: deliver it.
    Fresh,
    /// Accepted before (a copy through another broker, a retransmission or a replay): do not
    /// deliver again. A message is still acknowledged, since the sender may have lost the ACK.
    Duplicate,
    /// Older than the window, or stamped before this receiver started.
    Stale,
    /// Stamped more than the window ahead of the receiver's clock.
    Future,
    /// The memory is full of unexpired ids: refused (fail closed).
    Full,
}

type MessageKey = ([u8; PUBLIC_KEY_LEN], [u8; QUEUE_ID_LEN], u32);

/// Accepted (source, queue id, sequence) triples, each kept until its timestamp leaves the window.
///
/// sidewire deduplicates by the text alone, so two different messages with the same text are
/// one to it; keywire keys by message id and refuses timestamps outside a window both ways.
#[derive(Debug)]
pub struct SeenMessages {
    capacity: usize,
    floor_secs: u64,
    seen: HashMap<MessageKey, u64>,
    by_time: BTreeSet<(u64, MessageKey)>,
}

impl SeenMessages {
    /// A memory of at most `capacity` ids for a receiver that started at `started_secs`
    /// (Unix seconds): messages stamped before it are refused, so nothing captured before a
    /// restart can be replayed after it.
    pub fn new(capacity: usize, started_secs: u64) -> Self {
        Self {
            capacity: capacity.max(1),
            floor_secs: started_secs,
            seen: HashMap::new(),
            by_time: BTreeSet::new(),
        }
    }

    /// Checks one verified packet at `now_secs` (Unix seconds) and remembers it if fresh.
    pub fn check(
        &mut self,
        source: &SidewirePublicKey,
        fields: &SidewireFields,
        now_secs: u64,
    ) -> Verdict {
        let stamp = fields.timestamp_secs;
        if stamp.saturating_add(TIMESTAMP_WINDOW) < now_secs || stamp < self.floor_secs {
            return Verdict::Stale;
        }
        if stamp > now_secs.saturating_add(TIMESTAMP_WINDOW) {
            return Verdict::Future;
        }
        self.expire(now_secs);
        let key = (*source.as_bytes(), fields.queue_id, fields.sequence);
        if self.seen.contains_key(&key) {
            return Verdict::Duplicate;
        }
        if self.seen.len() >= self.capacity {
            return Verdict::Full;
        }
        self.seen.insert(key, stamp);
        self.by_time.insert((stamp, key));
        Verdict::Fresh
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, now_secs: u64) {
        while let Some(&(stamp, key)) = self.by_time.first() {
            if stamp.saturating_add(TIMESTAMP_WINDOW) >= now_secs {
                break;
            }
            self.by_time.pop_first();
            self.seen.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidewire::{SidewireKind, SidewireSecretKey};

    fn fields(queue: u8, stamp: u64) -> SidewireFields {
        SidewireFields {
            queue_id: [queue; 32],
            sequence: 0,
            timestamp_secs: stamp,
            kind: SidewireKind::Message,
            message: b"x".to_vec(),
        }
    }

    #[test]
    fn refuses_a_repeated_payload_inside_the_window_only() {
        let mut recent = RecentPayloads::new(8);
        let t0 = Instant::now();
        assert_eq!(recent.claim(b"hi", t0), Ok(()));
        assert_eq!(recent.claim(b"other", t0), Ok(()));
        let later = t0 + Duration::from_secs(100);
        assert_eq!(
            recent.claim(b"hi", later),
            Err(ClaimRefused::Repeated(Duration::from_secs(30)))
        );
        assert_eq!(recent.claim(b"hi", t0 + PAYLOAD_REUSE_WINDOW), Ok(()));
        recent.forget(b"other");
        assert_eq!(recent.claim(b"other", later), Ok(()));
    }

    #[test]
    fn recent_payloads_are_bounded() {
        let mut recent = RecentPayloads::new(2);
        let t0 = Instant::now();
        recent.claim(b"a", t0).unwrap();
        recent.claim(b"b", t0).unwrap();
        assert_eq!(recent.claim(b"c", t0), Err(ClaimRefused::Full));
        assert_eq!(recent.claim(b"c", t0 + PAYLOAD_REUSE_WINDOW), Ok(()));
    }

    #[test]
    fn seen_messages_apply_the_window_both_ways_and_dedup_by_id() {
        let key = SidewireSecretKey::generate(&mut rand::rngs::OsRng);
        let me = key.public_key();
        let now = 1_700_000_000;
        let mut seen = SeenMessages::new(4, now - 10);
        assert_eq!(seen.check(me, &fields(1, now), now), Verdict::Fresh);
        assert_eq!(seen.check(me, &fields(1, now), now), Verdict::Duplicate);
        // Same text, another id: a different message (sidewire would call it a duplicate).
        assert_eq!(seen.check(me, &fields(2, now), now), Verdict::Fresh);
        assert_eq!(seen.check(me, &fields(3, now - 121), now), Verdict::Stale);
        assert_eq!(seen.check(me, &fields(3, now + 121), now), Verdict::Future);
        assert_eq!(
            seen.check(me, &fields(3, now - 11), now),
            Verdict::Stale,
            "before start"
        );
        assert_eq!(seen.check(me, &fields(3, now + 120), now), Verdict::Fresh);
        assert_eq!(seen.check(me, &fields(4, now), now), Verdict::Fresh);
        assert_eq!(seen.check(me, &fields(5, now), now), Verdict::Full);
        // Once the first ids leave the window, room comes back.
        let later = now + 121;
        assert_eq!(seen.check(me, &fields(5, later), later), Verdict::Fresh);
        assert_eq!(seen.len(), 2, "ids 3 (stamped now + 120) and 5 remain");
    }
}
