//! Relay data frames.
//!
//! A control packet of kind `Relay` (`0x11`), version 1:
//!
//! ```text
//! 0      1      2                   10            14
//! +------+------+-------------------+-------------+------------------------+
//! | 0x11 | 0x01 | session id (8)    | channel (4) | payload (a QUIC packet) |
//! +------+------+-------------------+-------------+------------------------+
//! ```
//!
//! Client to gate, `session` is the sender's session id: the gate accepts the frame only from the
//! address that session registered from. Gate to client, it is the recipient's session id, which
//! an off-path attacker cannot guess (64 random bits). `channel` names the pair of clients the
//! gate set up. The header is 14 bytes, within the 16 that keywire's MTU ceiling keeps free
//! (`docs/socket.md`), so a packet sized for a direct path still fits relayed.

use crate::datagram::{ControlError, ControlKind, ControlPacket};

/// Bytes before the payload.
pub const RELAY_HEADER_LEN: usize = 14;
/// Payload bytes after the control header (kind and version).
const IDS_LEN: usize = RELAY_HEADER_LEN - crate::datagram::CONTROL_HEADER_LEN;

/// A relay data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayFrame<'a> {
    /// The sender's session (client to gate) or the recipient's (gate to client).
    pub session: u64,
    /// The client pair this frame belongs to.
    pub channel: u32,
    /// The relayed packet, opaque to the gate.
    pub payload: &'a [u8],
}

/// Why a datagram is not a relay frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayFrameError {
    /// Not a valid control packet.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A control packet of another kind.
    #[error("not a relay frame")]
    WrongKind,
    /// Too short for the ids.
    #[error("relay frame shorter than its header")]
    Truncated,
    /// Nothing to relay.
    #[error("empty relay frame")]
    Empty,
}

impl<'a> RelayFrame<'a> {
    /// Parses a whole datagram (including the control header); never panics.
    pub fn decode(datagram: &'a [u8]) -> Result<Self, RelayFrameError> {
        let packet = ControlPacket::decode(datagram)?;
        if packet.kind != ControlKind::Relay {
            return Err(RelayFrameError::WrongKind);
        }
        Self::decode_payload(packet.payload)
    }

    /// Parses what follows the control header.
    pub fn decode_payload(bytes: &'a [u8]) -> Result<Self, RelayFrameError> {
        if bytes.len() < IDS_LEN {
            return Err(RelayFrameError::Truncated);
        }
        let (ids, payload) = bytes.split_at(IDS_LEN);
        if payload.is_empty() {
            return Err(RelayFrameError::Empty);
        }
        let mut session = [0u8; 8];
        session.copy_from_slice(&ids[..8]);
        let mut channel = [0u8; 4];
        channel.copy_from_slice(&ids[8..]);
        Ok(Self {
            session: u64::from_be_bytes(session),
            channel: u32::from_be_bytes(channel),
            payload,
        })
    }

    /// Appends the whole datagram, control header included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(RELAY_HEADER_LEN + self.payload.len());
        out.push(ControlKind::Relay.to_byte());
        out.push(crate::datagram::CONTROL_VERSION);
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.channel.to_be_bytes());
        out.extend_from_slice(self.payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixture() {
        let frame = RelayFrame {
            session: 0x0102_0304_0506_0708,
            channel: 0x0a0b_0c0d,
            payload: &[0xc3, 0xff],
        };
        let mut out = Vec::new();
        frame.encode(&mut out);
        assert_eq!(
            out,
            [0x11, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d, 0xc3, 0xff]
        );
        assert_eq!(out.len(), RELAY_HEADER_LEN + 2);
        assert_eq!(RelayFrame::decode(&out), Ok(frame));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            RelayFrame::decode(&[0x11, 0x01, 1, 2, 3]),
            Err(RelayFrameError::Truncated)
        );
        let mut empty = Vec::new();
        RelayFrame {
            session: 1,
            channel: 2,
            payload: &[],
        }
        .encode(&mut empty);
        assert_eq!(RelayFrame::decode(&empty), Err(RelayFrameError::Empty));
        assert_eq!(
            RelayFrame::decode(&[0x10, 0x01, 0, 0]),
            Err(RelayFrameError::WrongKind)
        );
        assert_eq!(
            RelayFrame::decode(&[0x11, 0x02, 0]),
            Err(RelayFrameError::Control(ControlError::UnsupportedVersion(
                2
            )))
        );
    }

    proptest! {
        #[test]
        fn round_trip(session in any::<u64>(), channel in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 1..1500)) {
            let frame = RelayFrame { session, channel, payload: &payload };
            let mut out = Vec::new();
            frame.encode(&mut out);
            prop_assert_eq!(RelayFrame::decode(&out), Ok(frame));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = RelayFrame::decode(&bytes);
        }
    }
}
