//! The secp256k1 identity sidewire peers address each other by, and its signatures: ECDSA over
//! SHA-1 with the 64-byte `r ‖ s` encoding (python-ecdsa's `sigencode_string`, its default hash).

use std::fmt;
use std::str::FromStr;

use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use k256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use sha1::{Digest, Sha1};

/// Length of a compressed secp256k1 public key.
pub const PUBLIC_KEY_LEN: usize = 33;

/// Why a sidewire key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SidewireKeyError {
    /// Not 66 hex digits.
    #[error("a sidewire key is 66 hex digits (a compressed secp256k1 key), got {0} characters")]
    Length(usize),
    /// A character that is not a hex digit.
    #[error("a sidewire key is hex: {0:?} is not a hex digit")]
    NotHex(char),
    /// The bytes are not a point on secp256k1 in compressed form.
    #[error("not a compressed secp256k1 public key")]
    NotOnCurve,
    /// The secret scalar is zero or not below the group order.
    #[error("not a valid secp256k1 secret key")]
    BadSecret,
}

/// A sidewire peer's address: a compressed secp256k1 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct SidewirePublicKey {
    bytes: [u8; PUBLIC_KEY_LEN],
    key: VerifyingKey,
}

impl std::hash::Hash for SidewirePublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl SidewirePublicKey {
    /// Reads a compressed key (33 bytes, first byte 2 or 3).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SidewireKeyError> {
        let array: [u8; PUBLIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| SidewireKeyError::Length(bytes.len() * 2))?;
        // Compressed form only: sidewire never sends the 65-byte form, and accepting two
        // spellings of one key would give one peer two identities.
        if array[0] != 2 && array[0] != 3 {
            return Err(SidewireKeyError::NotOnCurve);
        }
        let key =
            VerifyingKey::from_sec1_bytes(&array).map_err(|_| SidewireKeyError::NotOnCurve)?;
        Ok(Self { bytes: array, key })
    }

    /// The 33 compressed bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.bytes
    }

    /// The MQTT topic this peer listens on: its key in lowercase hex.
    pub fn topic(&self) -> String {
        self.to_string()
    }

    /// Whether `signature` (`r ‖ s`) signs `message` with ECDSA over SHA-1.
    ///
    /// High-S signatures are accepted, as python-ecdsa produces them half of the time; the
    /// signature is normalised first (the same signature in the other spelling).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(signature) = Signature::from_slice(signature) else {
            return false;
        };
        let signature = signature.normalize_s().unwrap_or(signature);
        let digest = Sha1::digest(message);
        self.key.verify_prehash(&digest, &signature).is_ok()
    }
}

impl fmt::Display for SidewirePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.bytes {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SidewirePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SidewirePublicKey({self})")
    }
}

impl FromStr for SidewirePublicKey {
    type Err = SidewireKeyError;

    /// Reads 66 hex digits (either case; sidewire writes lowercase).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.len() != PUBLIC_KEY_LEN * 2 {
            return Err(SidewireKeyError::Length(text.chars().count()));
        }
        if let Some(c) = text.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(SidewireKeyError::NotHex(c));
        }
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            // Checked above: every character is an ASCII hex digit.
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| SidewireKeyError::NotHex('?'))?;
        }
        Self::from_bytes(&bytes)
    }
}

/// A sidewire secret key (secp256k1). Kept apart from the node's ed25519 key: sidewire peers
/// know this one only.
#[derive(Clone)]
pub struct SidewireSecretKey {
    key: SigningKey,
    public: SidewirePublicKey,
}

impl SidewireSecretKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_signing_key(SigningKey::random(rng))
    }

    /// The key with this 32-byte big-endian secret scalar.
    pub fn from_bytes(secret: &[u8; 32]) -> Result<Self, SidewireKeyError> {
        let key = SigningKey::from_bytes(secret.into()).map_err(|_| SidewireKeyError::BadSecret)?;
        Ok(Self::from_signing_key(key))
    }

    fn from_signing_key(key: SigningKey) -> Self {
        let point = key.verifying_key().to_encoded_point(true);
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        bytes.copy_from_slice(point.as_bytes());
        let public = SidewirePublicKey {
            bytes,
            key: *key.verifying_key(),
        };
        Self { key, public }
    }

    /// The 32-byte secret scalar (for the key file).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes().into()
    }

    /// The address sidewire peers use for this key.
    pub fn public_key(&self) -> &SidewirePublicKey {
        &self.public
    }

    /// ECDSA over SHA-1, `r ‖ s` (deterministic nonce, low S).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let digest = Sha1::digest(message);
        let signature: Signature = self
            .key
            .sign_prehash(&digest)
            .expect("a 20-byte prehash is within k256's accepted length");
        signature.to_bytes().into()
    }
}

impl fmt::Debug for SidewireSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SidewireSecretKey({}, secret hidden)", self.public)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signature made by python-ecdsa 0.19.2 (`SigningKey.from_string(bytes([7]*32),
    /// SECP256k1).sign(b"sidewire fixture", sigencode=sigencode_string)`, default hash SHA-1).
    /// Its S is high: sidewire peers send such signatures and they must verify.
    const FIXTURE_PUBLIC: &str =
        "02989c0b76cb563971fdc9bef31ec06c3560f3249d6ee9e5d83c57625596e05f6f";
    const FIXTURE_SIGNATURE: &str = "8efe00b43259b0daf2877918ac9841d0cc6c860133fd13bdab8dc84b21969e91b26bcbcf48a7dc82f224d81e494f7cdbd940d5a0dd510f518fae284fedb56dc9";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len() / 2)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn key_from_fixed_secret_matches_python_ecdsa() {
        let key = SidewireSecretKey::from_bytes(&[7; 32]).unwrap();
        assert_eq!(key.public_key().to_string(), FIXTURE_PUBLIC);
    }

    #[test]
    fn verifies_a_python_ecdsa_high_s_signature() {
        let public: SidewirePublicKey = FIXTURE_PUBLIC.parse().unwrap();
        let signature: [u8; 64] = hex(FIXTURE_SIGNATURE).try_into().unwrap();
        let s = &signature[32..];
        assert!(s[0] >= 0x80, "the fixture must exercise the high-S path");
        assert!(public.verify(b"sidewire fixture", &signature));
        assert!(!public.verify(b"sidewire fixturE", &signature));
    }

    #[test]
    fn sign_then_verify_and_refuse_tampering() {
        let key = SidewireSecretKey::generate(&mut rand::rngs::OsRng);
        let mut signature = key.sign(b"hello");
        assert!(key.public_key().verify(b"hello", &signature));
        assert!(!key.public_key().verify(b"hellp", &signature));
        signature[5] ^= 1;
        assert!(!key.public_key().verify(b"hello", &signature));
        let other = SidewireSecretKey::generate(&mut rand::rngs::OsRng);
        assert!(!other.public_key().verify(b"hello", &key.sign(b"hello")));
    }

    #[test]
    fn parses_and_prints_hex_and_refuses_bad_keys() {
        let key = SidewireSecretKey::generate(&mut rand::rngs::OsRng);
        let text = key.public_key().to_string();
        assert_eq!(text.len(), 66);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(
            &text.to_uppercase().parse::<SidewirePublicKey>().unwrap(),
            key.public_key()
        );
        assert_eq!(
            "abc".parse::<SidewirePublicKey>(),
            Err(SidewireKeyError::Length(3))
        );
        let bad_char = format!("0g{}", &text[2..]);
        assert_eq!(
            bad_char.parse::<SidewirePublicKey>(),
            Err(SidewireKeyError::NotHex('g'))
        );
        let uncompressed_prefix = format!("04{}", &text[2..]);
        assert_eq!(
            uncompressed_prefix.parse::<SidewirePublicKey>(),
            Err(SidewireKeyError::NotOnCurve)
        );
        assert_eq!(
            SidewireSecretKey::from_bytes(&[0; 32]).unwrap_err(),
            SidewireKeyError::BadSecret
        );
    }
}
