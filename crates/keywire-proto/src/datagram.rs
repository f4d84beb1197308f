//! Telling the protocols apart on keywire's one UDP port, from the first byte alone.
//!
//! Every keywire endpoint turns QUIC bit greasing off (RFC 9287), so every QUIC packet it sends
//! has the fixed bit (0x40) set. That leaves first bytes with both top bits clear, `0x00..=0x3F`,
//! for other protocols on the same port (the demultiplexing idea of RFC 7983):
//!
//! | first byte | class |
//! |---|---|
//! | `0x00..=0x03` | STUN (RFC 7983 §7 reserves it; keywire answers none yet) |
//! | `0x04..=0x3F` | keywire control packet (see [`ControlPacket`]) |
//! | `0x40..=0xFF` | QUIC |
//!
//! An empty datagram is malformed.

/// What a datagram is, by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramClass {
    /// A QUIC packet: goes to quinn.
    Quic,
    /// A keywire control packet.
    Control,
    /// STUN (reserved, RFC 7983).
    Stun,
    /// Nothing valid (an empty datagram).
    Empty,
}

/// Classifies a datagram by its first byte. Never panics.
#[inline]
pub fn classify(datagram: &[u8]) -> DatagramClass {
    match datagram.first() {
        None => DatagramClass::Empty,
        Some(&b) if b & 0xC0 != 0 => DatagramClass::Quic,
        Some(&b) if b <= 0x03 => DatagramClass::Stun,
        Some(_) => DatagramClass::Control,
    }
}

/// The only control-packet version this keywire speaks.
pub const CONTROL_VERSION: u8 = 1;
/// Bytes before a control packet's payload.
pub const CONTROL_HEADER_LEN: usize = 2;

/// The kinds of control packet. Values are the packet's first byte, in `0x04..=0x3F`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ControlKind {
    /// Reachability and path probes.
    Probe,
    /// Relay frames between a gate and its clients.
    Relay,
    /// DHT RPCs.
    Dht,
    /// Introduction nudges: "I heard your introduction, here I am" (`intro`).
    Intro,
}

impl ControlKind {
    /// The first byte of packets of this kind.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Probe => 0x10,
            Self::Relay => 0x11,
            Self::Dht => 0x20,
            Self::Intro => 0x21,
        }
    }

    /// The kind for a first byte, if it names one.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0x10 => Some(Self::Probe),
            0x11 => Some(Self::Relay),
            0x20 => Some(Self::Dht),
            0x21 => Some(Self::Intro),
            _ => None,
        }
    }
}

/// A control packet: `kind (1) | version (1) | payload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlPacket<'a> {
    /// What protocol the payload belongs to.
    pub kind: ControlKind,
    /// The protocol's payload.
    pub payload: &'a [u8],
}

/// Why a control packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Not in the control range at all.
    #[error("not a control packet")]
    NotControl,
    /// Shorter than the header.
    #[error("control packet shorter than its header")]
    Truncated,
    /// A first byte in the control range that names no kind this keywire knows.
    #[error("unknown control kind {0:#04x}")]
    UnknownKind(u8),
    /// A version this keywire does not speak.
    #[error("unsupported control version {0}")]
    UnsupportedVersion(u8),
}

impl<'a> ControlPacket<'a> {
    /// Parses a control packet; never panics, whatever the input.
    pub fn decode(datagram: &'a [u8]) -> Result<Self, ControlError> {
        if classify(datagram) != DatagramClass::Control {
            return Err(ControlError::NotControl);
        }
        let [kind, version, payload @ ..] = datagram else {
            return Err(ControlError::Truncated);
        };
        let kind = ControlKind::from_byte(*kind).ok_or(ControlError::UnknownKind(*kind))?;
        if *version != CONTROL_VERSION {
            return Err(ControlError::UnsupportedVersion(*version));
        }
        Ok(Self { kind, payload })
    }

    /// Appends the encoded packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(CONTROL_HEADER_LEN + self.payload.len());
        out.push(self.kind.to_byte());
        out.push(CONTROL_VERSION);
        out.extend_from_slice(self.payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classes_by_first_byte() {
        assert_eq!(classify(&[]), DatagramClass::Empty);
        for b in 0u8..=0x03 {
            assert_eq!(classify(&[b]), DatagramClass::Stun);
        }
        for b in 0x04u8..=0x3F {
            assert_eq!(classify(&[b, 0]), DatagramClass::Control);
        }
        for b in 0x40u8..=0xFF {
            assert_eq!(classify(&[b]), DatagramClass::Quic);
        }
    }

    #[test]
    fn fixture() {
        let mut out = Vec::new();
        ControlPacket {
            kind: ControlKind::Probe,
            payload: b"hi",
        }
        .encode(&mut out);
        assert_eq!(out, [0x10, 0x01, b'h', b'i']);
        assert_eq!(
            ControlPacket::decode(&out),
            Ok(ControlPacket {
                kind: ControlKind::Probe,
                payload: b"hi"
            })
        );
        assert_eq!(ControlPacket::decode(&[0x10]), Err(ControlError::Truncated));
        assert_eq!(
            ControlPacket::decode(&[0x3F, 1]),
            Err(ControlError::UnknownKind(0x3F))
        );
        assert_eq!(
            ControlPacket::decode(&[0x20, 2]),
            Err(ControlError::UnsupportedVersion(2))
        );
        assert_eq!(
            ControlPacket::decode(&[0x40, 1]),
            Err(ControlError::NotControl)
        );
        assert_eq!(
            ControlPacket::decode(&[0x01, 1]),
            Err(ControlError::NotControl)
        );
    }

    #[test]
    fn every_kind_is_in_the_control_range() {
        for kind in [
            ControlKind::Probe,
            ControlKind::Relay,
            ControlKind::Dht,
            ControlKind::Intro,
        ] {
            let b = kind.to_byte();
            assert_eq!(classify(&[b]), DatagramClass::Control);
            assert_eq!(ControlKind::from_byte(b), Some(kind));
        }
    }

    proptest! {
        #[test]
        fn round_trip(kind in prop_oneof![Just(ControlKind::Probe), Just(ControlKind::Relay), Just(ControlKind::Dht), Just(ControlKind::Intro)],
                      payload in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let mut out = Vec::new();
            ControlPacket { kind, payload: &payload }.encode(&mut out);
            prop_assert_eq!(ControlPacket::decode(&out), Ok(ControlPacket { kind, payload: &payload }));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ControlPacket::decode(&bytes);
            let _ = classify(&bytes);
        }
    }
}
