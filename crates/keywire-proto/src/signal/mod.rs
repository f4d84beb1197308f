//! Signalling over a pool of MQTT brokers: the sans-IO parts.
//!
//! Two peers that know each other's [`NodeId`](crate::NodeId) exchange small signed, encrypted
//! envelopes through ordinary MQTT 3.1.1 brokers. Nothing here talks to a broker: this module
//! holds the envelope codec and its sealing ([`envelope`], [`seal`](mod@seal)), the topic a node listens on
//! ([`topic`]), the weighted rendezvous ranking that makes both ends pick the same brokers
//! ([`rendezvous`]), replay protection ([`replay`]) and the per-broker back-off and publish rate
//! caps ([`backoff`], [`rate`]). The async shell in the `keywire` crate drives them.
//!
//! `docs/mqtt-signalling.md` documents the byte layouts and the rules.

pub mod backoff;
pub mod envelope;
mod error;
pub mod rate;
pub mod rendezvous;
pub mod replay;
pub mod seal;
pub mod topic;

pub use backoff::{BackoffConfig, BrokerHealth};
pub use envelope::{AckBody, Envelope, MessageType, QueueId};
pub use error::{OpenError, RejectReason};
pub use rate::TokenBucket;
pub use rendezvous::{AddressFamily, BrokerId, BrokerSpec, MAX_WEIGHT};
pub use replay::{ReplayConfig, ReplayGuard};
pub use seal::{open, seal, seal_raw, Opener, SealError};
pub use topic::SignalTopic;

/// Wire version of the envelope (outer and inner), bumped on any layout change.
pub const VERSION: u8 = 1;

/// Largest application payload one envelope carries, in bytes.
///
/// Signalling messages are small (addresses, hole-punch timing); public brokers commonly cap
/// messages at a few KiB and ban clients that send large ones.
pub const MAX_PAYLOAD: usize = 2048;

/// Largest sealed envelope a receiver looks at: anything larger is refused before any crypto.
pub const MAX_SEALED: usize = seal::OUTER_OVERHEAD + envelope::INNER_OVERHEAD + MAX_PAYLOAD;

/// Wall-clock time in milliseconds since the Unix epoch, as the caller's clock says.
///
/// Only envelope timestamps use wall time; every timer uses a monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub u64);
