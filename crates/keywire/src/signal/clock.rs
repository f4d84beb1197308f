//! The wall clock a signalling node stamps envelopes with and checks their timestamps against.
//!
//! There is deliberately no default: clock skew between hosts is a real signalling failure, and
//! making the caller choose (the system clock, an NTP-corrected one, a test's offset clock)
//! keeps it visible. Timers never use this clock; they use tokio's monotonic time.

use std::time::{SystemTime, UNIX_EPOCH};

use keywire_proto::signal::UnixMillis;

/// A source of wall-clock time.
pub trait WallClock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch, now.
    fn now(&self) -> UnixMillis;
}

/// The operating system's wall clock, as is (no correction).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> UnixMillis {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        UnixMillis(ms)
    }
}

/// The system clock shifted by a fixed number of milliseconds (tests of skew, or a correction
/// learned elsewhere).
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock(pub i64);

impl WallClock for OffsetClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(SystemClock.now().0.saturating_add_signed(self.0))
    }
}
