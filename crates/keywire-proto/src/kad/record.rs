//! Signed address records (where a key can be reached) and signed publications (pub/sub).
//!
//! Address record, version 1 (integers big-endian):
//!
//! ```text
//! node key (32) | seq (8) | expires, unix ms (8) | n (1, ≤ 8) | n addresses
//!   | g (1, ≤ 4) | g × (gate key (32) | gate address) | ed25519 signature (64)
//! ```
//!
//! Publication, version 1:
//!
//! ```text
//! topic (32) | publisher key (32) | seq (8) | time, unix ms (8) | len (2, ≤ 512) | payload
//!   | ed25519 signature (64)
//! ```
//!
//! Each signature covers a domain tag and every byte before it, so a record cannot pass as a
//! publication (or a future version of either), and no field can change unnoticed.

use std::net::SocketAddr;
use std::time::Duration;

use super::wire::{put_socket_addr, Reader, WireError};
use super::Timestamp;
use crate::identity::{NodeId, SecretKey};

const RECORD_DOMAIN: &[u8] = b"keywire dht address record v1";
const PUBLICATION_DOMAIN: &[u8] = b"keywire dht publication v1";
/// Most direct addresses in a record: a host rarely has more candidates worth trying.
pub const MAX_RECORD_ADDRS: usize = 8;
/// Most gates in a record.
pub const MAX_RECORD_GATES: usize = 4;
/// Largest publication payload: a publication and its forwarding header fit one datagram.
pub const MAX_PUBLICATION_PAYLOAD: usize = 512;
/// How far ahead of our clock a timestamp may be (clock skew between honest hosts).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a record or publication was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Malformed bytes.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Expired before now.
    #[error("expired")]
    Expired,
    /// Claims a time (or an expiry) further ahead than any honest clock would.
    #[error("from the future")]
    FromTheFuture,
    /// Local misuse: too many addresses, gates or payload bytes to build one.
    #[error("too large: {0}")]
    TooLarge(&'static str),
}

/// A gate through which a node can be reached: its key and its public address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateRef {
    /// The gate's key.
    pub node_id: NodeId,
    /// The gate's public address.
    pub addr: SocketAddr,
}

/// A signed statement "key K is reachable at these addresses and/or through these gates".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRecord {
    /// Whose record (the signer).
    pub node_id: NodeId,
    /// Higher is fresher.
    pub seq: u64,
    /// Not valid at or after this time.
    pub expires: Timestamp,
    /// Candidate direct addresses (empty when publishing gates only).
    pub addrs: Vec<SocketAddr>,
    /// Gates that relay for this node.
    pub gates: Vec<GateRef>,
    /// ed25519 signature by `node_id` over the domain tag and all fields above.
    pub signature: [u8; 64],
}

impl AddressRecord {
    /// Builds and signs a record.
    pub fn sign(
        key: &SecretKey,
        seq: u64,
        expires: Timestamp,
        addrs: Vec<SocketAddr>,
        gates: Vec<GateRef>,
    ) -> Result<Self, RecordError> {
        if addrs.len() > MAX_RECORD_ADDRS {
            return Err(RecordError::TooLarge("addresses"));
        }
        if gates.len() > MAX_RECORD_GATES {
            return Err(RecordError::TooLarge("gates"));
        }
        if !addrs
            .iter()
            .chain(gates.iter().map(|g| &g.addr))
            .all(super::wire::is_wire_addr)
        {
            return Err(RecordError::TooLarge("unspecified address or port 0"));
        }
        let mut record = Self {
            node_id: key.node_id(),
            seq,
            expires,
            addrs,
            gates,
            signature: [0; 64],
        };
        record.signature = key.sign(&record.signed_bytes());
        Ok(record)
    }

    fn put_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.node_id.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.expires.as_unix_millis().to_be_bytes());
        out.push(self.addrs.len() as u8);
        for addr in &self.addrs {
            put_socket_addr(out, addr);
        }
        out.push(self.gates.len() as u8);
        for gate in &self.gates {
            out.extend_from_slice(gate.node_id.as_bytes());
            put_socket_addr(out, &gate.addr);
        }
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = RECORD_DOMAIN.to_vec();
        self.put_fields(&mut out);
        out
    }

    /// Appends the encoded record.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.put_fields(out);
        out.extend_from_slice(&self.signature);
    }

    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        let mut out = Vec::new();
        self.encode(&mut out);
        out.len()
    }

    /// Reads a record (without checking its signature or times: see [`Self::validate`]).
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let node_id = r.node_id()?;
        let seq = r.u64()?;
        let expires = Timestamp::from_unix_millis(r.u64()?);
        let n = r.count("record addresses", MAX_RECORD_ADDRS)?;
        let addrs = (0..n).map(|_| r.socket_addr()).collect::<Result<_, _>>()?;
        let g = r.count("record gates", MAX_RECORD_GATES)?;
        let gates = (0..g)
            .map(|_| {
                Ok(GateRef {
                    node_id: r.node_id()?,
                    addr: r.socket_addr()?,
                })
            })
            .collect::<Result<_, WireError>>()?;
        let signature = r.array()?;
        Ok(Self {
            node_id,
            seq,
            expires,
            addrs,
            gates,
            signature,
        })
    }

    /// Checks the signature, that it has not expired, and that its expiry is no further ahead
    /// than `max_ttl` (plus clock skew): a record "valid for a year" is refused, so a stolen
    /// key's old record cannot outlive a republication for long.
    pub fn validate(&self, now: Timestamp, max_ttl: Duration) -> Result<(), RecordError> {
        if self.expires <= now {
            return Err(RecordError::Expired);
        }
        if self.expires > now + max_ttl + CLOCK_SKEW {
            return Err(RecordError::FromTheFuture);
        }
        if !self.node_id.verify(&self.signed_bytes(), &self.signature) {
            return Err(RecordError::BadSignature);
        }
        Ok(())
    }

    /// Whether `self` should replace `other` (same key): higher seq, then later expiry.
    pub fn is_fresher_than(&self, other: &AddressRecord) -> bool {
        (self.seq, self.expires) > (other.seq, other.expires)
    }
}

/// A signed message to a topic, routed to the topic's subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The topic (any 32 bytes; e.g. a hash of a name, or a node key).
    pub topic: [u8; 32],
    /// Who signed it.
    pub publisher: NodeId,
    /// Per publisher, higher is newer; receivers drop repeats.
    pub seq: u64,
    /// When it was made; receivers drop ones too old or from the future.
    pub time: Timestamp,
    /// The content.
    pub payload: Vec<u8>,
    /// ed25519 signature by `publisher` over the domain tag and all fields above.
    pub signature: [u8; 64],
}

/// How old a publication may be when it arrives; older ones are dropped as replays.
pub const MAX_PUBLICATION_AGE: Duration = Duration::from_secs(600);

impl Publication {
    /// Builds and signs a publication.
    pub fn sign(
        key: &SecretKey,
        topic: [u8; 32],
        seq: u64,
        time: Timestamp,
        payload: Vec<u8>,
    ) -> Result<Self, RecordError> {
        if payload.len() > MAX_PUBLICATION_PAYLOAD {
            return Err(RecordError::TooLarge("payload"));
        }
        let mut publication = Self {
            topic,
            publisher: key.node_id(),
            seq,
            time,
            payload,
            signature: [0; 64],
        };
        publication.signature = key.sign(&publication.signed_bytes());
        Ok(publication)
    }

    fn put_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.topic);
        out.extend_from_slice(self.publisher.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time.as_unix_millis().to_be_bytes());
        out.extend_from_slice(&(self.payload.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.payload);
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = PUBLICATION_DOMAIN.to_vec();
        self.put_fields(&mut out);
        out
    }

    /// Appends the encoded publication.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.put_fields(out);
        out.extend_from_slice(&self.signature);
    }

    /// Reads a publication (without checking it: see [`Self::validate`]).
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let topic = r.array()?;
        let publisher = r.node_id()?;
        let seq = r.u64()?;
        let time = Timestamp::from_unix_millis(r.u64()?);
        let len = usize::from(r.u16()?);
        if len > MAX_PUBLICATION_PAYLOAD {
            return Err(WireError::OverCap {
                what: "publication payload",
                got: len,
                cap: MAX_PUBLICATION_PAYLOAD,
            });
        }
        let payload = r.bytes(len)?.to_vec();
        let signature = r.array()?;
        Ok(Self {
            topic,
            publisher,
            seq,
            time,
            payload,
            signature,
        })
    }

    /// Checks the signature and that the time is neither too old nor ahead of our clock.
    pub fn validate(&self, now: Timestamp) -> Result<(), RecordError> {
        if self.time > now + CLOCK_SKEW {
            return Err(RecordError::FromTheFuture);
        }
        if self.time + MAX_PUBLICATION_AGE < now {
            return Err(RecordError::Expired);
        }
        if !self.publisher.verify(&self.signed_bytes(), &self.signature) {
            return Err(RecordError::BadSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn key() -> SecretKey {
        SecretKey::from_seed([9; 32])
    }

    #[test]
    fn record_fixture_and_checks() {
        let now = Timestamp::from_unix_millis(1_000_000);
        let record = AddressRecord::sign(
            &key(),
            7,
            Timestamp::from_unix_millis(2_000_000),
            vec!["1.2.3.4:5".parse().unwrap()],
            vec![],
        )
        .unwrap();
        let mut out = Vec::new();
        record.encode(&mut out);
        assert_eq!(&out[..32], key().node_id().as_bytes());
        assert_eq!(&out[32..40], &[0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(&out[40..48], &2_000_000u64.to_be_bytes());
        assert_eq!(&out[48..57], &[1, 4, 1, 2, 3, 4, 0, 5, 0]);
        assert_eq!(out.len(), 57 + 64);
        let back = AddressRecord::decode(&mut Reader::new(&out)).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.validate(now, HOUR), Ok(()));
        assert_eq!(
            back.validate(Timestamp::from_unix_millis(2_000_000), HOUR),
            Err(RecordError::Expired)
        );
        let mut tampered = back.clone();
        tampered.seq = 8;
        assert_eq!(tampered.validate(now, HOUR), Err(RecordError::BadSignature));
        let far = AddressRecord::sign(&key(), 1, now + HOUR * 3, vec![], vec![]).unwrap();
        assert_eq!(far.validate(now, HOUR), Err(RecordError::FromTheFuture));
    }

    #[test]
    fn publication_checks() {
        let now = Timestamp::from_unix_millis(10_000_000);
        let p = Publication::sign(&key(), [1; 32], 1, now, b"hi".to_vec()).unwrap();
        assert_eq!(p.validate(now), Ok(()));
        assert_eq!(
            p.validate(now + MAX_PUBLICATION_AGE + Duration::from_secs(1)),
            Err(RecordError::Expired)
        );
        assert_eq!(
            p.validate(now - CLOCK_SKEW - Duration::from_secs(1)),
            Err(RecordError::FromTheFuture)
        );
        let mut bad = p.clone();
        bad.payload = b"ho".to_vec();
        assert_eq!(bad.validate(now), Err(RecordError::BadSignature));
        assert!(Publication::sign(&key(), [1; 32], 1, now, vec![0; 513]).is_err());
    }

    proptest! {
        #[test]
        fn record_round_trip(seq in any::<u64>(), exp in any::<u64>(), ports in proptest::collection::vec(1u16.., 0..=8)) {
            let addrs = ports.iter().map(|p| SocketAddr::from(([10, 0, 0, 1], *p))).collect();
            let gates = vec![GateRef { node_id: key().node_id(), addr: "[2001:db8::1]:9".parse().unwrap() }];
            let r = AddressRecord::sign(&key(), seq, Timestamp::from_unix_millis(exp), addrs, gates).unwrap();
            let mut out = Vec::new();
            r.encode(&mut out);
            prop_assert_eq!(out.len(), r.encoded_len());
            prop_assert_eq!(AddressRecord::decode(&mut Reader::new(&out)).unwrap(), r);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = AddressRecord::decode(&mut Reader::new(&bytes));
            let _ = Publication::decode(&mut Reader::new(&bytes));
        }
    }
}
