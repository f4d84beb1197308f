//! Signalling over a pool of MQTT brokers (issue 8; the sidewire design, done better).
//!
//! A [`SignalNode`] listens on its own topic at the top `k` brokers of its rendezvous ranking and
//! sends sealed, signed envelopes to peers by key: fanned out over the destination's brokers in
//! parallel, the first end-to-end acknowledgement wins. The wire format and the sans-IO parts
//! live in [`keywire_proto::signal`]; `docs/mqtt-signalling.md` documents the rules.

mod clock;
mod config;
mod copies;
mod health;
mod inbound;
mod link;
mod metrics;
mod node;
mod pool;
pub mod sidewire;

pub use clock::{OffsetClock, SystemClock, WallClock};
pub use config::{PoolConfig, RateCap, SignalConfig};
pub use keywire_proto::signal::{
    AddressFamily, BrokerId, BrokerSpec, MessageType, UnixMillis, MAX_PAYLOAD,
};
pub use metrics::SignalMetrics;
pub use node::{Received, SendReport, SignalNode};

use keywire_proto::signal::SealError;

/// Errors of the signalling API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// A pool file or broker list is invalid (local misuse).
    #[error("invalid signalling configuration: {0}")]
    Config(String),
    /// The payload exceeds [`MAX_PAYLOAD`] (local misuse).
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge(usize),
    /// Too many sends are already waiting for acknowledgements.
    #[error("too many sends awaiting acknowledgement")]
    Busy,
    /// No broker of the pool is usable (all known down, or the pool is empty).
    #[error("no usable broker in the pool")]
    NoBrokers,
    /// The envelope could not be sealed (e.g. a destination key with no x25519 form).
    #[error("cannot seal the envelope: {0}")]
    Seal(#[from] SealError),
}
