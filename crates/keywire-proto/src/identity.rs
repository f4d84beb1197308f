//! Node identity: an ed25519 key pair whose public half is the [`NodeId`] peers dial.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::checked_text::{self, CheckedTextError};

/// Human-readable prefix of a node id's text form.
const NODE_ID_PREFIX: &str = "kw";

/// A node's public key: what peers dial, and what TLS proves at the far end.
///
/// The text form is bech32m with the prefix `kw` (61 characters); every single-character typo in
/// it is rejected (see [`crate::checked_text`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

/// Why a node id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeIdError {
    /// The text was not a well-formed, correctly checksummed node id.
    #[error("invalid node id: {0}")]
    Text(#[from] CheckedTextError),
    /// The text decoded to the wrong number of bytes.
    #[error("invalid node id: {0} bytes, expected 32")]
    WrongLength(usize),
    /// The 32 bytes are not a valid ed25519 public key.
    #[error("invalid node id: not an ed25519 public key")]
    NotAPublicKey,
}

impl NodeId {
    /// Makes a node id from raw key bytes, checking that they are a valid ed25519 point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, NodeIdError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| NodeIdError::NotAPublicKey)?;
        Ok(Self(bytes))
    }

    /// Makes a node id without checking that the bytes are a curve point (point decompression
    /// costs about as much as hashing a kilobyte). Only for keys that are claims, never
    /// verified against: `verify` on such an id simply fails.
    pub(crate) fn from_bytes_unchecked(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Verifies an ed25519 signature by this key over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }

    /// A short prefix of the text form, for logs. Not unique: never use it to identify a node.
    pub fn short(&self) -> String {
        self.to_string().chars().skip(3).take(10).collect()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&checked_text::encode(NODE_ID_PREFIX, &self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = checked_text::decode(NODE_ID_PREFIX, s)?;
        let bytes: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| NodeIdError::WrongLength(bytes.len()))?;
        Self::from_bytes(bytes)
    }
}

/// A node's secret key. Its [`Debug`] form never shows the secret.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// Makes a new random key from a cryptographically secure RNG.
    pub fn generate<R: rand_core::CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        Self(SigningKey::generate(rng))
    }

    /// Rebuilds a key from its 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The 32-byte seed. Handle with care: whoever has it is this node.
    pub fn to_seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half: this node's id.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.0.verifying_key().to_bytes())
    }

    /// Signs `message` with ed25519.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(for {:?})", self.node_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALPHABET: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

    #[test]
    fn fixture() {
        let key = SecretKey::from_seed([7u8; 32]);
        let text = key.node_id().to_string();
        assert_eq!(text.len(), 61);
        assert!(text.starts_with("kw1"));
        assert_eq!(text.parse::<NodeId>().unwrap(), key.node_id());
    }

    #[test]
    fn every_single_character_typo_is_rejected() {
        for seed in 0u8..8 {
            let text = SecretKey::from_seed([seed; 32]).node_id().to_string();
            let bytes = text.as_bytes();
            let mut tried = 0;
            for pos in 0..bytes.len() {
                let mut candidates: Vec<u8> = ALPHABET.to_vec();
                candidates.extend_from_slice(b"1bio");
                candidates.push(bytes[pos].to_ascii_uppercase());
                for &c in &candidates {
                    if c == bytes[pos] {
                        continue;
                    }
                    let mut typo = bytes.to_vec();
                    typo[pos] = c;
                    let typo = String::from_utf8(typo).unwrap();
                    tried += 1;
                    assert!(typo.parse::<NodeId>().is_err(), "typo accepted: {typo}");
                }
            }
            assert!(tried > 61 * 31);
        }
    }

    #[test]
    fn typo_in_data_says_checksum() {
        let text = SecretKey::from_seed([1; 32]).node_id().to_string();
        let mut typo = text.into_bytes();
        typo[10] = if typo[10] == b'q' { b'p' } else { b'q' };
        let err = String::from_utf8(typo)
            .unwrap()
            .parse::<NodeId>()
            .unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn rejects_non_keys_and_wrong_lengths() {
        let short = checked_text::encode("kw", &[1u8; 31]);
        assert_eq!(short.parse::<NodeId>(), Err(NodeIdError::WrongLength(31)));
        // The y-coordinate 2 is not on the curve.
        let mut not_point = [0u8; 32];
        not_point[0] = 2;
        assert!(NodeId::from_bytes(not_point).is_err());
    }

    #[test]
    fn signatures() {
        let key = SecretKey::from_seed([3; 32]);
        let sig = key.sign(b"hello");
        assert!(key.node_id().verify(b"hello", &sig));
        assert!(!key.node_id().verify(b"hellp", &sig));
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.to_seed())));
    }

    proptest! {
        #[test]
        fn text_round_trip(seed in any::<[u8; 32]>()) {
            let id = SecretKey::from_seed(seed).node_id();
            prop_assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        }

        #[test]
        fn decode_never_panics(s in "\\PC{0,120}") {
            let _ = s.parse::<NodeId>();
        }
    }
}
