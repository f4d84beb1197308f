//! Token buckets for publish rate caps: public brokers ban clients that publish too fast.

use std::time::{Duration, Instant};

/// Millitokens per token: integer arithmetic keeps refills exact and free of float rounding.
const MILLI: u64 = 1000;

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u32,
    burst: u32,
    millitokens: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`. A `rate` of 0 means unlimited.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate,
            burst: burst.max(1),
            millitokens: u64::from(burst.max(1)) * MILLI,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        if self.millitokens >= MILLI {
            self.millitokens -= MILLI;
            true
        } else {
            false
        }
    }

    /// How long until a token is available (zero if one is).
    pub fn poll_timeout(&mut self, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.refill(now);
        let missing = MILLI.saturating_sub(self.millitokens);
        // millitokens accrue at rate per ms; round up so that waiting that long suffices.
        Duration::from_millis(missing.div_ceil(u64::from(self.rate)))
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return;
        }
        self.last += Duration::from_millis(ms);
        let cap = u64::from(self.burst) * MILLI;
        let added = ms.saturating_mul(u64::from(self.rate));
        self.millitokens = self.millitokens.saturating_add(added).min(cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        assert!((0..3).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0));
        assert_eq!(b.poll_timeout(t0), Duration::from_millis(100));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(150)));
        // Never more than the burst saved up.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
        let mut unlimited = TokenBucket::new(0, 1, t0);
        assert!((0..1000).all(|_| unlimited.try_take(t0)));
    }
}
