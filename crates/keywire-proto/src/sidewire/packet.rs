//! sidewire 0.1.9's packet (its `AppPacket`): what one MQTT PUBLISH carries.
//!
//! ```text
//! offset size field
//!      0   33 source: compressed secp256k1 public key
//!     33   64 signature r ‖ s: ECDSA over SHA-1 of bytes 97..
//!     97   32 queue id (random per message in sidewire's SmartPipe)
//!    129    4 sequence, big-endian
//!    133    8 timestamp, seconds since the Unix epoch, big-endian
//!    141    1 type: 1 message, 2 acknowledgement, 3 probe
//!    142    n message (ASCII text in practice; length implied by the PUBLISH)
//! ```
//!
//! What the signature does not cover: the destination (the MQTT topic). A packet to A can be
//! republished to B unchanged and verifies there; the receiver's (source, queue, sequence) memory
//! is what refuses it as a replay only if the same receiver saw it before.

use super::key::{SidewirePublicKey, PUBLIC_KEY_LEN};

/// Length of the queue id.
pub const QUEUE_ID_LEN: usize = 32;
const SIGNATURE_LEN: usize = 64;
const SIGNED_START: usize = PUBLIC_KEY_LEN + SIGNATURE_LEN;
/// Bytes before the message: source, signature, queue id, sequence, timestamp, type.
pub const HEADER_LEN: usize = SIGNED_START + QUEUE_ID_LEN + 4 + 8 + 1;
/// The longest message keywire sends or accepts (sidewire sets no limit; keywire's own envelope
/// has the same one).
pub const MAX_MESSAGE: usize = 2048;
/// The longest packet accepted: longer ones are refused before any signature check.
pub const MAX_PACKET: usize = HEADER_LEN + MAX_MESSAGE;

/// sidewire's message types (`MsgEnum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SidewireKind {
    /// Application text; the receiver answers with an [`SidewireKind::Ack`].
    Message = 1,
    /// Acknowledges the (queue id, sequence) it carries; the text is `"ack"`.
    Ack = 2,
    /// Asks whether the peer is subscribed here; answered with an [`SidewireKind::Ack`], never
    /// shown to the application.
    Probe = 3,
}

impl SidewireKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Message),
            2 => Some(Self::Ack),
            3 => Some(Self::Probe),
            _ => None,
        }
    }
}

/// The signed fields of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidewireFields {
    /// Which conversation: sidewire picks 32 random bytes per message sent.
    pub queue_id: [u8; QUEUE_ID_LEN],
    /// Position in the queue (0 for sidewire's one-message queues).
    pub sequence: u32,
    /// When the sender first packed it, seconds since the Unix epoch; retransmissions keep it.
    pub timestamp_secs: u64,
    /// The type.
    pub kind: SidewireKind,
    /// The text.
    pub message: Vec<u8>,
}

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Shorter than the fixed header.
    #[error("sidewire packet of {0} bytes is shorter than its {HEADER_LEN}-byte header")]
    TooShort(usize),
    /// Longer than [`MAX_PACKET`].
    #[error("sidewire packet of {0} bytes exceeds the {MAX_PACKET}-byte limit")]
    TooLong(usize),
    /// The source is not a compressed secp256k1 key.
    #[error("sidewire packet source is not a compressed secp256k1 key")]
    BadSource,
    /// The signature does not verify under the source key.
    #[error("sidewire packet signature does not verify")]
    BadSignature,
    /// A type byte sidewire does not define.
    #[error("sidewire packet type {0} is unknown")]
    UnknownKind(u8),
}

/// Encodes and signs a packet from `key`.
///
/// # Panics
/// If `fields.message` is longer than [`MAX_MESSAGE`] (callers check it first).
pub fn encode_packet(key: &super::SidewireSecretKey, fields: &SidewireFields) -> Vec<u8> {
    assert!(
        fields.message.len() <= MAX_MESSAGE,
        "message over MAX_MESSAGE"
    );
    let mut signed = Vec::with_capacity(HEADER_LEN - SIGNED_START + fields.message.len());
    signed.extend_from_slice(&fields.queue_id);
    signed.extend_from_slice(&fields.sequence.to_be_bytes());
    signed.extend_from_slice(&fields.timestamp_secs.to_be_bytes());
    signed.push(fields.kind as u8);
    signed.extend_from_slice(&fields.message);
    let signature = key.sign(&signed);
    let mut out = Vec::with_capacity(SIGNED_START + signed.len());
    out.extend_from_slice(key.public_key().as_bytes());
    out.extend_from_slice(&signature);
    out.extend_from_slice(&signed);
    out
}

/// Decodes a packet and verifies its signature. Never panics on any input.
pub fn decode_packet(bytes: &[u8]) -> Result<(SidewirePublicKey, SidewireFields), PacketError> {
    let (fields, _) = decode_unverified(bytes)?;
    let source = SidewirePublicKey::from_bytes(&bytes[..PUBLIC_KEY_LEN])
        .map_err(|_| PacketError::BadSource)?;
    let mut signature = [0u8; SIGNATURE_LEN];
    signature.copy_from_slice(&bytes[PUBLIC_KEY_LEN..SIGNED_START]);
    if !source.verify(&bytes[SIGNED_START..], &signature) {
        return Err(PacketError::BadSignature);
    }
    Ok((source, fields))
}

/// The layout alone, signature unchecked: the fields and the claimed source bytes. For tools and
/// fuzzing; receivers use [`decode_packet`]. Never panics on any input.
pub fn decode_unverified(
    bytes: &[u8],
) -> Result<(SidewireFields, [u8; PUBLIC_KEY_LEN]), PacketError> {
    if bytes.len() < HEADER_LEN {
        return Err(PacketError::TooShort(bytes.len()));
    }
    if bytes.len() > MAX_PACKET {
        return Err(PacketError::TooLong(bytes.len()));
    }
    let (source, rest) = bytes.split_at(PUBLIC_KEY_LEN);
    let signed = &rest[SIGNATURE_LEN..];
    let (queue, rest) = signed.split_at(QUEUE_ID_LEN);
    let (sequence, rest) = rest.split_at(4);
    let (timestamp, rest) = rest.split_at(8);
    let (kind_byte, message) = rest.split_at(1);
    let kind =
        SidewireKind::from_byte(kind_byte[0]).ok_or(PacketError::UnknownKind(kind_byte[0]))?;
    let mut source_bytes = [0u8; PUBLIC_KEY_LEN];
    source_bytes.copy_from_slice(source);
    let mut queue_id = [0u8; QUEUE_ID_LEN];
    queue_id.copy_from_slice(queue);
    let mut sequence_bytes = [0u8; 4];
    sequence_bytes.copy_from_slice(sequence);
    let mut timestamp_bytes = [0u8; 8];
    timestamp_bytes.copy_from_slice(timestamp);
    Ok((
        SidewireFields {
            queue_id,
            sequence: u32::from_be_bytes(sequence_bytes),
            timestamp_secs: u64::from_be_bytes(timestamp_bytes),
            kind,
            message: message.to_vec(),
        },
        source_bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidewire::SidewireSecretKey;

    /// Packed by sidewire 0.1.9 itself (`AppPacket(queue_id_hex="ab"*32, seq_no=5,
    /// timestamp=1700000000, msg_type=1, msg="hello keywire").pack(client)` with the secret key
    /// `07 × 32`). python-ecdsa's nonce is random, so this is one of many valid signatures.
    const SIDEWIRE_PACKET: &str = concat!(
        "02989c0b76cb563971fdc9bef31ec06c3560f3249d6ee9e5d83c57625596e05f6f",
        "0cad8eb8f21e36c5ae3f8ad43c9400a03ca9d5628c54af2687712159b4593bb5",
        "968522f2a4d9df745efe171d671eb1be405e203bd8df6ae26942ad6e3f8befae",
        "abababababababababababababababababababababababababababababababab",
        "00000005000000006553f1000168656c6c6f206b657977697265"
    );

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len() / 2)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    fn fields() -> SidewireFields {
        SidewireFields {
            queue_id: [0xab; 32],
            sequence: 5,
            timestamp_secs: 1_700_000_000,
            kind: SidewireKind::Message,
            message: b"hello keywire".to_vec(),
        }
    }

    #[test]
    fn decodes_a_packet_packed_by_sidewire() {
        let (source, decoded) = decode_packet(&hex(SIDEWIRE_PACKET)).unwrap();
        let key = SidewireSecretKey::from_bytes(&[7; 32]).unwrap();
        assert_eq!(&source, key.public_key());
        assert_eq!(decoded, fields());
    }

    #[test]
    fn our_encoding_matches_sidewire_byte_for_byte_outside_the_signature() {
        let key = SidewireSecretKey::from_bytes(&[7; 32]).unwrap();
        let ours = encode_packet(&key, &fields());
        let theirs = hex(SIDEWIRE_PACKET);
        assert_eq!(ours.len(), theirs.len());
        assert_eq!(ours[..PUBLIC_KEY_LEN], theirs[..PUBLIC_KEY_LEN]);
        assert_eq!(ours[SIGNED_START..], theirs[SIGNED_START..]);
        assert_eq!(decode_packet(&ours).unwrap().1, fields());
    }

    #[test]
    fn refuses_tampering_and_malformed_input() {
        let key = SidewireSecretKey::generate(&mut rand::rngs::OsRng);
        let good = encode_packet(&key, &fields());
        for i in [0, 40, SIGNED_START, SIGNED_START + 33, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(
                decode_packet(&bad).is_err(),
                "flipping byte {i} must be refused"
            );
        }
        assert_eq!(
            decode_packet(&good[..HEADER_LEN - 1]),
            Err(PacketError::TooShort(HEADER_LEN - 1))
        );
        let mut unknown = good.clone();
        unknown[HEADER_LEN - 1] = 9;
        assert_eq!(decode_packet(&unknown), Err(PacketError::UnknownKind(9)));
        let long = vec![2u8; MAX_PACKET + 1];
        assert_eq!(
            decode_packet(&long),
            Err(PacketError::TooLong(MAX_PACKET + 1))
        );
        // The message may be empty (probes carry none).
        let probe = SidewireFields {
            kind: SidewireKind::Probe,
            message: Vec::new(),
            ..fields()
        };
        assert_eq!(
            decode_packet(&encode_packet(&key, &probe)).unwrap().1,
            probe
        );
    }
}
