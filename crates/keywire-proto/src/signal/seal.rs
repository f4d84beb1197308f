//! The sealed box around an envelope: only the destination can open it.
//!
//! ```text
//! offset size field
//!      0    1 version (1)
//!      1   32 ephemeral x25519 public key, fresh per envelope
//!     33    m ChaCha20-Poly1305 ciphertext of the inner envelope, with its 16-byte tag
//! ```
//!
//! The key is BLAKE3 `derive_key(KEY_CONTEXT, ephemeral ‖ recipient ‖ X25519(ephemeral, recipient))`
//! where `recipient` is the destination's ed25519 key converted to its Montgomery form (as
//! libsodium's `crypto_sign_ed25519_pk_to_curve25519` does). Each key encrypts exactly one
//! message, so the nonce is all zero. The associated data is bytes 0..33, which binds the version.
//! Brokers see only the length and the timing; source, sequence and type stay hidden.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::signal::{Envelope, OpenError, MAX_SEALED, VERSION};
use crate::{NodeId, SecretKey};

/// BLAKE3 key-derivation context for the per-envelope AEAD key.
const KEY_CONTEXT: &str = "keywire 2026-11 mqtt signal sealed box v1";
/// Bytes the sealed box adds: version, ephemeral key, Poly1305 tag.
pub const OUTER_OVERHEAD: usize = 1 + 32 + 16;
const HEADER_LEN: usize = 33;

/// Why an envelope could not be sealed (local misuse, never network input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The payload exceeds [`crate::signal::MAX_PAYLOAD`].
    #[error("payload of {0} bytes exceeds the limit")]
    PayloadTooLarge(usize),
    /// The key given is not the envelope's source.
    #[error("the signing key is not the envelope's source")]
    WrongKey,
    /// The destination key has no usable x25519 form (a low-order point).
    #[error("the destination key cannot receive sealed envelopes")]
    BadDestination,
}

/// Signs `envelope` with `key` (its source) and seals it to `envelope.destination`.
pub fn seal<R: CryptoRngCore + ?Sized>(
    key: &SecretKey,
    envelope: &Envelope,
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    if envelope.payload.len() > crate::signal::MAX_PAYLOAD {
        return Err(SealError::PayloadTooLarge(envelope.payload.len()));
    }
    let inner = envelope.encode_signed(key).ok_or(SealError::WrongKey)?;
    seal_raw(&inner, &envelope.destination, rng)
}

/// Seals arbitrary inner bytes to `destination` without signing them.
///
/// Anyone can do this (that is what a sealed box is); tests and tools use it to forge envelopes
/// and check that receivers refuse and count them.
pub fn seal_raw<R: CryptoRngCore + ?Sized>(
    inner: &[u8],
    destination: &NodeId,
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    let recipient = montgomery(destination).ok_or(SealError::BadDestination)?;
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let ephemeral = StaticSecret::from(seed);
    let ephemeral_public = PublicKey::from(&ephemeral);
    let shared = ephemeral.diffie_hellman(&recipient);
    if !shared.was_contributory() {
        return Err(SealError::BadDestination);
    }
    let cipher = cipher(
        ephemeral_public.as_bytes(),
        recipient.as_bytes(),
        shared.as_bytes(),
    );
    let mut out = Vec::with_capacity(OUTER_OVERHEAD + inner.len());
    out.push(VERSION);
    out.extend_from_slice(ephemeral_public.as_bytes());
    let sealed = cipher
        .encrypt(
            &Default::default(),
            Payload {
                msg: inner,
                aad: &out,
            },
        )
        .map_err(|_| SealError::BadDestination)?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a sealed envelope addressed to `key`, checks its destination and signature.
///
/// Replay and timestamp checks are the [`crate::signal::ReplayGuard`]'s job. A receiver opening
/// many envelopes should build an [`Opener`] once instead.
pub fn open(key: &SecretKey, sealed: &[u8]) -> Result<Envelope, OpenError> {
    Opener::new(key).open(sealed)
}

/// A receiver's key material for opening envelopes, derived once (two scalar multiplications
/// saved per envelope).
pub struct Opener {
    me: NodeId,
    secret: StaticSecret,
    public: PublicKey,
}

impl Opener {
    /// Derives the x25519 form of `key`.
    pub fn new(key: &SecretKey) -> Self {
        let secret = StaticSecret::from(SigningKey::from_bytes(&key.to_seed()).to_scalar_bytes());
        Self {
            me: key.node_id(),
            public: PublicKey::from(&secret),
            secret,
        }
    }

    /// Opens a sealed envelope, checks its destination and signature.
    pub fn open(&self, sealed: &[u8]) -> Result<Envelope, OpenError> {
        Envelope::decode_verified(&self.open_raw(sealed)?, &self.me)
    }

    /// Opens a sealed box made by [`seal_raw`] and returns what is inside, unchecked.
    pub fn open_raw(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() > MAX_SEALED {
            return Err(OpenError::Oversized(sealed.len()));
        }
        if sealed.len() < OUTER_OVERHEAD {
            return Err(OpenError::Malformed("shorter than the sealed-box overhead"));
        }
        if sealed[0] != VERSION {
            return Err(OpenError::Malformed("unknown outer version"));
        }
        let mut ephemeral = [0u8; 32];
        ephemeral.copy_from_slice(&sealed[1..HEADER_LEN]);
        let shared = self.secret.diffie_hellman(&PublicKey::from(ephemeral));
        if !shared.was_contributory() {
            return Err(OpenError::Malformed("low-order ephemeral key"));
        }
        let cipher = cipher(&ephemeral, self.public.as_bytes(), shared.as_bytes());
        let inner = cipher
            .decrypt(
                &Default::default(),
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad: &sealed[..HEADER_LEN],
                },
            )
            .map_err(|_| OpenError::Malformed("decryption failed"))?;
        Ok(inner)
    }
}

/// The destination's x25519 public key, from its ed25519 key.
fn montgomery(node: &NodeId) -> Option<PublicKey> {
    let key = VerifyingKey::from_bytes(node.as_bytes()).ok()?;
    Some(PublicKey::from(key.to_montgomery().to_bytes()))
}

fn cipher(ephemeral: &[u8; 32], recipient: &[u8; 32], shared: &[u8; 32]) -> ChaCha20Poly1305 {
    let mut material = [0u8; 96];
    material[..32].copy_from_slice(ephemeral);
    material[32..64].copy_from_slice(recipient);
    material[64..].copy_from_slice(shared);
    let key = blake3::derive_key(KEY_CONTEXT, &material);
    ChaCha20Poly1305::new(&key.into())
}
