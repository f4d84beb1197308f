//! Gates: public keywire nodes that observe their clients' addresses (on two ports), introduce
//! clients to each other and relay end-to-end encrypted QUIC packets between them.
//!
//! - [`Gate`] serves: registrations over QUIC (ALPN `keywire/gate/1`), a relay loop on the
//!   `Relay` control channel of its one UDP port, and an observation responder on a second port.
//! - [`GateClient`] registers with a gate and asks for introductions.
//!
//! Wire formats: `keywire_proto::gate`, `docs/relay.md`.

mod client;
mod limits;
mod link_fallback;
pub(crate) mod registry;
mod relay;
mod server;
mod stream_listener;

pub use client::{GateClient, GateError, Introduction};
pub use server::{Gate, GateConfig, GateMetrics};
