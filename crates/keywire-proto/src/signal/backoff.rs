//! Per-broker failure tracking with exponential back-off.
//!
//! A dead broker must not cost every send its timeout: after a failure the broker is "known
//! down" until its retry time, senders skip it and pick the next in rank, and the shell retries
//! it in the background. Times are monotonic instants passed in by the caller.

use std::time::{Duration, Instant};

/// Back-off limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Cap on the wait (doubling stops here): also how late a returning broker can be noticed.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unknown,
    Up,
    Down {
        since: Instant,
        failures: u32,
        retry_at: Instant,
    },
}

/// What one node knows about one broker's health.
#[derive(Debug, Clone)]
pub struct BrokerHealth {
    config: BackoffConfig,
    state: State,
}

impl BrokerHealth {
    /// A broker never tried.
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            state: State::Unknown,
        }
    }

    /// A connection (or reconnection) succeeded.
    pub fn handle_success(&mut self) {
        self.state = State::Up;
    }

    /// A connection attempt failed or an established one dropped at `now`.
    pub fn handle_failure(&mut self, now: Instant) {
        let (since, failures) = match self.state {
            State::Down {
                since, failures, ..
            } => (since, failures.saturating_add(1)),
            _ => (now, 1),
        };
        let doublings = (failures - 1).min(16);
        let wait = self
            .config
            .initial
            .saturating_mul(1u32 << doublings)
            .min(self.config.max);
        self.state = State::Down {
            since,
            failures,
            retry_at: now + wait,
        };
    }

    /// Whether senders should skip this broker at `now` (down and still backing off).
    pub fn is_backing_off(&self, now: Instant) -> bool {
        matches!(self.state, State::Down { retry_at, .. } if now < retry_at)
    }

    /// Whether the last thing known is a failure.
    pub fn is_down(&self) -> bool {
        matches!(self.state, State::Down { .. })
    }

    /// Whether the broker is known to be up.
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// How long the broker has been down without a success in between.
    pub fn down_for(&self, now: Instant) -> Option<Duration> {
        match self.state {
            State::Down { since, .. } => Some(now.saturating_duration_since(since)),
            _ => None,
        }
    }

    /// When the next attempt is due, if the broker is down.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Down { retry_at, .. } => Some(retry_at),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let t0 = Instant::now();
        let mut h = BrokerHealth::new(BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5),
        });
        assert!(!h.is_backing_off(t0));
        h.handle_failure(t0);
        assert_eq!(h.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        assert!(h.is_backing_off(t0));
        assert!(!h.is_backing_off(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        h.handle_failure(t1);
        assert_eq!(h.poll_timeout(), Some(t1 + Duration::from_secs(2)));
        for _ in 0..40 {
            h.handle_failure(t1);
        }
        assert_eq!(h.poll_timeout(), Some(t1 + Duration::from_secs(5)));
        assert_eq!(
            h.down_for(t0 + Duration::from_secs(70)),
            Some(Duration::from_secs(70))
        );
        h.handle_success();
        assert!(h.is_up());
        assert_eq!(h.down_for(t1), None);
        assert!(!h.is_backing_off(t1));
    }
}
