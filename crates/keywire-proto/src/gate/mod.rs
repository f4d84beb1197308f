//! Gates: public nodes that observe addresses, introduce their clients to each other and relay
//! for them (srmudp's "gates", done with QUIC end to end).
//!
//! Two wire formats, both versioned and documented in `docs/relay.md`:
//! - [`frame`]: relay data frames, control packets of kind `Relay` on the one UDP port, carrying
//!   end-to-end encrypted QUIC packets between two clients through the gate;
//! - [`message`]: the gate's control messages, exchanged over a QUIC connection to the gate
//!   (ALPN [`GATE_ALPN`]): registration, refusals, introductions.

pub mod frame;
pub mod message;
pub mod observe;

/// ALPN of the connection a client registers over.
pub const GATE_ALPN: &[u8] = b"keywire/gate/1";
