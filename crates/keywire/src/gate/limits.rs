//! Per-client relay budgets.

use std::time::Instant;

/// A token bucket over bytes: `rate` per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub(crate) struct ByteBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl ByteBucket {
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes `bytes` if the budget allows; whether it did.
    pub(crate) fn take(&mut self, bytes: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let cost = bytes as f64;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut bucket = ByteBucket::new(1000, 1500, t0);
        assert!(bucket.take(1500, t0));
        assert!(!bucket.take(1, t0));
        assert!(bucket.take(500, t0 + Duration::from_millis(500)));
        assert!(!bucket.take(100, t0 + Duration::from_millis(500)));
        // Idle for a minute: only the burst is saved up.
        assert!(bucket.take(1500, t0 + Duration::from_secs(60)));
        assert!(!bucket.take(1, t0 + Duration::from_secs(60)));
    }
}
