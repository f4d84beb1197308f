//! Kademlia DHT core (sans-IO): the overlay of the Mist seed, on keywire's one UDP port.
//!
//! - [`id`]: overlay ids derived from node keys, XOR distance.
//! - [`routing`]: k-buckets with liveness checks, replacement caches and subnet limits.
//! - [`wire`] and [`rpc`]: the versioned, size-capped RPC codec.
//! - [`record`]: signed address records and signed publications.
//! - [`lookup`]: the iterative lookup state machine.
//! - [`store`]: bounded record storage and subscription tables.
//! - [`limits`]: stateless cookies and rate limits (abuse resistance).
//! - [`node`]: [`KadNode`], the core a driver (the async shell or the simulator) feeds.
//!
//! Time is a [`Timestamp`] (milliseconds since the Unix epoch) passed in by the caller: records
//! carry absolute expiry times, so the core's clock must be the wall clock in real use; the
//! simulator starts its own at a fixed epoch. Byte layouts are in `docs/dht.md`.

pub mod id;
pub mod limits;
pub mod lookup;
pub mod node;
pub mod record;
pub mod routing;
pub mod rpc;
pub mod store;
pub mod wire;

use std::ops::{Add, Sub};
use std::time::Duration;

pub use id::{Distance, KadId};
pub use node::{KadConfig, KadEvent, KadNode, KadStatus, LookupId, Mode, Transmit};
pub use record::{AddressRecord, GateRef, Publication, RecordError};
pub use routing::Contact;
pub use rpc::{Message, Rpc};
pub use wire::WireError;

/// Replication parameter and bucket size (Kademlia paper, §2.2: k = 20).
pub const K: usize = 20;

/// A point in time: milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The time `millis` milliseconds after the Unix epoch.
    pub const fn from_unix_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_unix_millis(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}
