//! The inner envelope: what the source signs and the sealed box hides from brokers.
//!
//! Layout (all integers big-endian), documented with a literal example in
//! `docs/mqtt-signalling.md`:
//!
//! ```text
//! offset size field
//!      0    1 version (1)
//!      1    1 type: 0 data, 1 ack, 2 control
//!      2   32 source node id (ed25519 public key)
//!     34   32 destination node id
//!     66    8 queue id (random per sender process)
//!     74    8 sequence number within the queue
//!     82    8 timestamp, ms since the Unix epoch (sender's wall clock)
//!     90    2 payload length n (at most MAX_PAYLOAD)
//!     92    n payload
//!   92+n   64 ed25519 signature over SIGNATURE_DOMAIN ‖ bytes[0 .. 92+n]
//! ```
//!
//! The destination travels inside (not only inside the signature) so that a receiver can tell
//! "re-sealed to me by a third party" apart from "forged", and count each.

use crate::signal::{OpenError, UnixMillis, MAX_PAYLOAD, VERSION};
use crate::{NodeId, SecretKey};

/// Domain tag of the envelope signature: a signature made here is valid nowhere else.
pub const SIGNATURE_DOMAIN: &[u8] = b"keywire mqtt signal envelope v1";
/// Bytes before the payload.
pub const HEADER_LEN: usize = 92;
/// Length of the ed25519 signature that ends the envelope.
pub const SIGNATURE_LEN: usize = 64;
/// Inner bytes an envelope adds to its payload.
pub const INNER_OVERHEAD: usize = HEADER_LEN + SIGNATURE_LEN;

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Application payload; the receiver acknowledges it.
    Data,
    /// End-to-end acknowledgement; the payload is an [`AckBody`].
    Ack,
    /// keywire's own control traffic (e.g. introductions); delivered like data, never acked.
    Control,
}

impl MessageType {
    fn to_byte(self) -> u8 {
        match self {
            Self::Data => 0,
            Self::Ack => 1,
            Self::Control => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Data),
            1 => Some(Self::Ack),
            2 => Some(Self::Control),
            _ => None,
        }
    }
}

/// A sender's queue: random per sender process, so a restarted sender never reuses a
/// (queue, sequence) pair a receiver has already seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

/// One signalling message, before sealing or after opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// What the payload is.
    pub kind: MessageType,
    /// The signer.
    pub source: NodeId,
    /// The node the envelope is sealed to.
    pub destination: NodeId,
    /// The sender's queue.
    pub queue: QueueId,
    /// Position in the queue; starts at 1 and only grows.
    pub sequence: u64,
    /// Sender's wall clock when sending.
    pub timestamp: UnixMillis,
    /// Application bytes, at most [`MAX_PAYLOAD`].
    pub payload: Vec<u8>,
}

impl Envelope {
    /// The bytes before the signature (the signature covers these after the domain tag).
    ///
    /// The caller has checked `payload.len() <= MAX_PAYLOAD`.
    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len() + SIGNATURE_LEN);
        out.push(VERSION);
        out.push(self.kind.to_byte());
        out.extend_from_slice(self.source.as_bytes());
        out.extend_from_slice(self.destination.as_bytes());
        out.extend_from_slice(&self.queue.0.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.0.to_be_bytes());
        // Fits: the payload was checked against MAX_PAYLOAD (< 65 536).
        out.extend_from_slice(&(self.payload.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Encodes and signs. `None` if the payload is too large or `key` is not the source.
    pub fn encode_signed(&self, key: &SecretKey) -> Option<Vec<u8>> {
        if self.payload.len() > MAX_PAYLOAD || key.node_id() != self.source {
            return None;
        }
        let mut out = self.body();
        let signature = key.sign(&signed_message(&out));
        out.extend_from_slice(&signature);
        Some(out)
    }

    /// Decodes inner bytes and verifies the signature; `me` is the node that opened the box.
    pub fn decode_verified(bytes: &[u8], me: &NodeId) -> Result<Self, OpenError> {
        let (envelope, signature) = Self::decode_unverified(bytes)?;
        if envelope.destination != *me {
            return Err(OpenError::WrongDestination);
        }
        let body = &bytes[..bytes.len() - SIGNATURE_LEN];
        if !envelope.source.verify(&signed_message(body), &signature) {
            return Err(OpenError::BadSignature);
        }
        Ok(envelope)
    }

    /// Decodes without checking the signature (tests and fuzzing use this directly).
    pub fn decode_unverified(bytes: &[u8]) -> Result<(Self, [u8; 64]), OpenError> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return Err(OpenError::Malformed("unknown inner version"));
        }
        let kind = MessageType::from_byte(r.u8()?).ok_or(OpenError::Malformed("unknown type"))?;
        let source = node_id(r.array()?)?;
        let destination = node_id(r.array()?)?;
        let queue = QueueId(u64::from_be_bytes(r.array()?));
        let sequence = u64::from_be_bytes(r.array()?);
        let timestamp = UnixMillis(u64::from_be_bytes(r.array()?));
        let len = usize::from(u16::from_be_bytes(r.array()?));
        if len > MAX_PAYLOAD {
            return Err(OpenError::Malformed("payload length above the limit"));
        }
        let payload = r.take(len)?.to_vec();
        let signature: [u8; 64] = r.array()?;
        if !r.0.is_empty() {
            return Err(OpenError::Malformed("trailing bytes"));
        }
        let envelope = Self {
            kind,
            source,
            destination,
            queue,
            sequence,
            timestamp,
            payload,
        };
        Ok((envelope, signature))
    }
}

/// The payload of an [`MessageType::Ack`]: which data envelope is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckBody {
    /// Queue of the acknowledged envelope.
    pub queue: QueueId,
    /// Its sequence number.
    pub sequence: u64,
}

impl AckBody {
    /// Encoded length.
    pub const LEN: usize = 16;

    /// Encodes as queue ‖ sequence, big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&self.queue.0.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out
    }

    /// Decodes exactly [`Self::LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        let (q, s) = bytes.split_at(8);
        Some(Self {
            queue: QueueId(u64::from_be_bytes(q.try_into().ok()?)),
            sequence: u64::from_be_bytes(s.try_into().ok()?),
        })
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNATURE_DOMAIN.len() + body.len());
    msg.extend_from_slice(SIGNATURE_DOMAIN);
    msg.extend_from_slice(body);
    msg
}

fn node_id(bytes: [u8; 32]) -> Result<NodeId, OpenError> {
    NodeId::from_bytes(bytes).map_err(|_| OpenError::Malformed("not a public key"))
}

/// A cursor that checks every length before reading.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], OpenError> {
        if self.0.len() < n {
            return Err(OpenError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, OpenError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], OpenError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
