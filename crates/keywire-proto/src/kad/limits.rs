//! Abuse resistance: stateless address-validation cookies and token-bucket rate limits.
//!
//! **Amplification.** Before a source address is validated, no reply is larger than its
//! request. A reply carries a cookie `BLAKE3-keyed(secret, epoch ‖ address)[..8]`; a request
//! that returns a valid cookie proves the sender receives at that address, and gets full-size
//! replies. A requester without a cookie pads its request to the size of the reply it wants
//! (the responder trims an unvalidated reply to fit, or stays silent). Cookies change every
//! [`COOKIE_EPOCH`] and the previous epoch's are still accepted, so the responder keeps no
//! state per requester.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::rpc::Cookie;
use super::wire::put_socket_addr;
use super::Timestamp;

/// How long a cookie epoch lasts; a cookie is accepted for one to two epochs.
pub const COOKIE_EPOCH: Duration = Duration::from_secs(300);
/// Sources tracked by the per-address rate limiter; when full, the source idle longest is
/// forgotten (it gets a full bucket if it comes back, which only errs on the lenient side).
pub const MAX_TRACKED_SOURCES: usize = 4096;

/// Makes and checks cookies.
#[derive(Debug, Clone)]
pub struct CookieJar {
    secret: [u8; 32],
}

impl CookieJar {
    /// A jar with a random secret.
    pub fn new(secret: [u8; 32]) -> Self {
        Self { secret }
    }

    fn make(&self, epoch: u64, addr: &SocketAddr) -> Cookie {
        let mut input = epoch.to_be_bytes().to_vec();
        put_socket_addr(&mut input, addr);
        let hash = blake3::keyed_hash(&self.secret, &input);
        let mut cookie = [0u8; 8];
        cookie.copy_from_slice(&hash.as_bytes()[..8]);
        cookie
    }

    fn epoch(now: Timestamp) -> u64 {
        now.as_unix_millis() / COOKIE_EPOCH.as_millis() as u64
    }

    /// The cookie for `addr` now.
    pub fn issue(&self, now: Timestamp, addr: &SocketAddr) -> Cookie {
        self.make(Self::epoch(now), addr)
    }

    /// Whether `cookie` was issued to `addr` in this epoch or the previous one.
    pub fn check(&self, now: Timestamp, addr: &SocketAddr, cookie: &Cookie) -> bool {
        let epoch = Self::epoch(now);
        self.make(epoch, addr) == *cookie || (epoch > 0 && self.make(epoch - 1, addr) == *cookie)
    }
}

/// A token bucket: `rate` tokens per second, at most `burst`.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    /// Thousandths of a token.
    milli_tokens: u64,
    last: Timestamp,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(now: Timestamp, burst: u32) -> Self {
        Self {
            milli_tokens: u64::from(burst) * 1000,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Timestamp, rate: u32, burst: u32) -> bool {
        let elapsed = now.saturating_since(self.last).as_millis() as u64;
        self.milli_tokens =
            (self.milli_tokens + elapsed * u64::from(rate)).min(u64::from(burst) * 1000);
        self.last = now;
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// Per-source-address token buckets, bounded to [`MAX_TRACKED_SOURCES`].
#[derive(Debug, Clone)]
pub struct SourceLimiter {
    rate: u32,
    burst: u32,
    buckets: BTreeMap<IpAddr, TokenBucket>,
}

impl SourceLimiter {
    /// `rate` requests per second per source address, bursts of `burst`.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate,
            burst,
            buckets: BTreeMap::new(),
        }
    }

    /// Whether a request from `ip` may be served now.
    pub fn allow(&mut self, now: Timestamp, ip: IpAddr) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_TRACKED_SOURCES {
            if let Some(idle) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(ip, _)| *ip)
            {
                self.buckets.remove(&idle);
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::full(now, burst))
            .try_take(now, rate, burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_bind_address_and_epoch() {
        let jar = CookieJar::new([1; 32]);
        let a: SocketAddr = "1.2.3.4:5".parse().unwrap();
        let b: SocketAddr = "1.2.3.4:6".parse().unwrap();
        let t = Timestamp::from_unix_millis(10 * 300_000 + 5);
        let c = jar.issue(t, &a);
        assert!(jar.check(t, &a, &c));
        assert!(!jar.check(t, &b, &c));
        assert!(jar.check(t + COOKIE_EPOCH, &a, &c));
        assert!(!jar.check(t + COOKIE_EPOCH * 2, &a, &c));
    }

    #[test]
    fn limiter_refills() {
        let mut l = SourceLimiter::new(10, 2);
        let ip: IpAddr = "1.2.3.4".parse().unwrap();
        let t = Timestamp::from_unix_millis(1000);
        assert!(l.allow(t, ip));
        assert!(l.allow(t, ip));
        assert!(!l.allow(t, ip));
        assert!(l.allow(t + Duration::from_millis(100), ip));
    }

    #[test]
    fn limiter_stays_bounded() {
        let mut l = SourceLimiter::new(1, 1);
        let t = Timestamp::from_unix_millis(1);
        for i in 0..(MAX_TRACKED_SOURCES as u32 + 10) {
            l.allow(t, IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(l.buckets.len(), MAX_TRACKED_SOURCES);
    }
}
