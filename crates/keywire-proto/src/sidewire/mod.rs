//! sidewire 0.1.9 compatibility: its signed packet format and the rules a polite peer follows.
//!
//! sidewire (PyPI `sidewire`) is the MQTT signalling layer of an existing network. Its peers are
//! addressed by a compressed secp256k1 public key; a message to a peer is an MQTT 3.1.1 QoS 1
//! PUBLISH on the topic that is the destination key in lowercase hex, carrying the packet
//! decoded here. This module is sans-IO: no sockets, no clocks. The async node lives in
//! `keywire::sidewire`; `docs/mqtt-signalling.md` documents the format and what keywire's own
//! envelope does better (encryption, a signed destination, SHA-256-era signatures, dedup by
//! message id, a bounded timestamp window).

mod guard;
mod key;
mod packet;

pub use guard::{
    ClaimRefused, RecentPayloads, SeenMessages, Verdict, PAYLOAD_REUSE_WINDOW, TIMESTAMP_WINDOW,
};
pub use key::{SidewireKeyError, SidewirePublicKey, SidewireSecretKey};
pub use packet::{
    decode_packet, decode_unverified, encode_packet, PacketError, SidewireFields, SidewireKind,
    HEADER_LEN, MAX_MESSAGE, MAX_PACKET, QUEUE_ID_LEN,
};

/// The text sidewire puts in every acknowledgement; keywire sends the same.
pub const ACK_TEXT: &[u8] = b"ack";
