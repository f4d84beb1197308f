//! sidewire compatibility: exchange messages with peers of an existing sidewire 0.1.9 network.
//!
//! A [`SidewireNode`] speaks sidewire's wire format ([`keywire_proto::sidewire`]): MQTT 3.1.1,
//! QoS 1, the topic is the destination's compressed secp256k1 key in lowercase hex, packets are
//! signed with ECDSA over SHA-1. It uses its own secp256k1 identity, separate from the node's
//! ed25519 key. sidewire peers pick brokers by connection speed and may subscribe at only some of
//! a pool, so this node publishes and subscribes on **every** broker of the pool.
//!
//! It behaves as a polite sidewire peer: ASCII text only, never the same text twice within
//! 130 s (sidewire receivers would acknowledge and drop it), bounded retransmission, ACKs sent on
//! the broker a message came in on, probes answered, duplicate ACKs ignored. See
//! `docs/mqtt-signalling.md` for the format and the weaknesses keywire's native envelope fixes.

mod inbound;
mod metrics;
mod node;

pub use keywire_proto::sidewire::{SidewireKeyError, SidewirePublicKey, SidewireSecretKey};
pub use metrics::SidewireMetrics;
pub use node::{SidewireConfig, SidewireNode, SidewireReceived};

use std::time::Duration;

/// Why a sidewire send could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidewireError {
    /// The pool has no broker.
    #[error("the broker pool is empty")]
    NoBrokers,
    /// No broker connection came up before the send timed out; nothing was published.
    #[error("no broker of the pool is connected; nothing was published")]
    NoBrokerUp,
    /// sidewire peers expect ASCII text.
    #[error("sidewire messages are ASCII text: byte {0:#04x} is not ASCII")]
    NotAscii(u8),
    /// Longer than [`keywire_proto::sidewire::MAX_MESSAGE`].
    #[error("message of {0} bytes exceeds the {max}-byte limit", max = keywire_proto::sidewire::MAX_MESSAGE)]
    TooLong(usize),
    /// The same text went out less than 130 s ago: sidewire receivers would acknowledge it and
    /// drop it without delivering.
    #[error("the same text was sent less than 130 s ago; sidewire peers would drop it (retry in {0:?}, or vary the text)")]
    RepeatedText(Duration),
    /// Too many distinct texts sent within 130 s, or too many sends waiting for ACKs.
    #[error("too many sends at once")]
    Busy,
}
