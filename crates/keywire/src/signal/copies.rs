//! Recognises identical copies of a sealed envelope before any crypto is spent on them.
//!
//! A send is published on up to `k` brokers per family (and republished while unacknowledged),
//! so a receiver sees the same bytes several times. Opening each copy costs an x25519 exchange
//! and a signature check, and acknowledging it a seal and a signature. Copies arriving shortly
//! after an acknowledged one are dropped here; later ones (a republish: the sender did not get
//! the acknowledgement) go through the full path and are acknowledged again.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// A repeat within this long of the last acknowledgement is not acknowledged again; longer
/// than a loopback or LAN round trip, shorter than any sensible republish interval.
pub(crate) const REACK_AFTER: Duration = Duration::from_millis(200);

/// Bounded: when full, the oldest entry is forgotten (its next copy is merely opened in full).
pub(crate) struct CopyFilter {
    cap: usize,
    last_ack: HashMap<[u8; 16], Instant>,
    order: VecDeque<[u8; 16]>,
}

impl CopyFilter {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            last_ack: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The fingerprint of a sealed envelope.
    pub(crate) fn fingerprint(bytes: &[u8]) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&blake3::hash(bytes).as_bytes()[..16]);
        out
    }

    /// Whether this copy can be dropped unopened.
    pub(crate) fn is_recent_copy(&self, fp: &[u8; 16], now: Instant) -> bool {
        self.last_ack
            .get(fp)
            .is_some_and(|at| now.saturating_duration_since(*at) < REACK_AFTER)
    }

    /// Records that the envelope with this fingerprint was just acknowledged.
    pub(crate) fn acked(&mut self, fp: [u8; 16], now: Instant) {
        if self.last_ack.insert(fp, now).is_none() {
            self.order.push_back(fp);
            if self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.last_ack.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_copies_only_and_bounded() {
        let t0 = Instant::now();
        let mut f = CopyFilter::new(2);
        let a = CopyFilter::fingerprint(b"a");
        assert!(!f.is_recent_copy(&a, t0));
        f.acked(a, t0);
        assert!(f.is_recent_copy(&a, t0 + Duration::from_millis(10)));
        assert!(!f.is_recent_copy(&a, t0 + REACK_AFTER));
        f.acked(CopyFilter::fingerprint(b"b"), t0);
        f.acked(CopyFilter::fingerprint(b"c"), t0);
        assert!(!f.is_recent_copy(&a, t0), "oldest forgotten when full");
    }
}
