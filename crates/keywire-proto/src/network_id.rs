//! Network ids partition keywire into separate networks without showing the id on the wire.
//!
//! ALPN, SNI and QUIC transport parameters travel in the clear, so the id cannot go there. Instead,
//! once the TLS handshake is done, each side sends a proof: a BLAKE3 keyed hash (a MAC, used here
//! where HMAC would be) keyed by the network id, over a domain tag, the sender's role and a value
//! exported from the TLS session (RFC 5705 / RFC 8446 §7.5). The exporter is unique per session,
//! so a proof cannot be replayed into another connection, and the role keeps a side from
//! reflecting its peer's proof back. The proof is sent inside the encrypted QUIC connection:
//! an observer learns nothing; a peer from another network learns only that the ids differ.
//!
//! One exception: the acceptor cannot use the exporter before its handshake completes (rustls
//! exposes it only then), so it sends [`NetworkId::acceptor_token`] instead, bound to its own
//! node id, in 0.5-RTT data with its handshake flight. That saves the dialer a round trip.
//!
//! A network id is a partition, not an access control: any host that starts a handshake with a
//! node gets its acceptor token and can test guesses of a low-entropy id offline against it.
//! Use a random id ([`NetworkId::from_bytes`]) where that matters.

use std::fmt;

use crate::NodeId;

/// Label for the TLS exporter (RFC 8446 §7.5) from which proofs are computed.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-keywire-network-proof-v1";
/// Length of the exported keying material.
pub const EXPORTER_LEN: usize = 32;
/// Domain tag inside the MAC, so the same key material is never used for anything else.
const PROOF_DOMAIN: &[u8] = b"keywire network proof v1";
const TOKEN_DOMAIN: &[u8] = b"keywire network acceptor token v1";
/// BLAKE3 key-derivation context that turns a network name into an id.
const NAME_CONTEXT: &str = "keywire 2026-11 network id from name";

/// Which end of the connection sends a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that dialed.
    Dialer,
    /// The side that accepted.
    Acceptor,
}

/// A 32-byte network id. Nodes complete connections only with nodes of the same id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetworkId([u8; 32]);

/// The proof one side sends: 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NetworkProof(pub [u8; 32]);

impl NetworkId {
    /// The public keywire network, the default.
    pub fn public() -> Self {
        Self::from_name("keywire public network")
    }

    /// Derives an id from a name, e.g. the name of an application or a test.
    pub fn from_name(name: &str) -> Self {
        Self(blake3::derive_key(NAME_CONTEXT, name.as_bytes()))
    }

    /// Uses 32 given bytes as the id (best drawn at random for a private network).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw id, for keyed derivations inside this crate (never for display or the wire).
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The proof that `role` sends, given the session's exported keying material.
    pub fn proof(&self, role: Role, exported: &[u8; EXPORTER_LEN]) -> NetworkProof {
        let mut mac = blake3::Hasher::new_keyed(&self.0);
        mac.update(PROOF_DOMAIN);
        mac.update(&[match role {
            Role::Dialer => 1,
            Role::Acceptor => 2,
        }]);
        mac.update(exported);
        NetworkProof(*mac.finalize().as_bytes())
    }

    /// Checks a peer's proof in constant time.
    pub fn verify(&self, role: Role, exported: &[u8; EXPORTER_LEN], proof: &NetworkProof) -> bool {
        // blake3::Hash's equality is constant-time.
        blake3::Hash::from(self.proof(role, exported).0) == blake3::Hash::from(proof.0)
    }

    /// The acceptor's token: a MAC of its own node id under the network id.
    ///
    /// The acceptor sends it in 0.5-RTT data, with its handshake flight, when the TLS exporter
    /// does not exist yet on its side. It is not bound to the session, and need not be: the
    /// dialer checks it against the key the acceptor just proved in TLS, so only that node can
    /// present it, and it travels encrypted to the dialer alone.
    pub fn acceptor_token(&self, acceptor: &NodeId) -> NetworkProof {
        let mut mac = blake3::Hasher::new_keyed(&self.0);
        mac.update(TOKEN_DOMAIN);
        mac.update(acceptor.as_bytes());
        NetworkProof(*mac.finalize().as_bytes())
    }

    /// Checks an acceptor's token in constant time.
    pub fn verify_acceptor_token(&self, acceptor: &NodeId, token: &NetworkProof) -> bool {
        blake3::Hash::from(self.acceptor_token(acceptor).0) == blake3::Hash::from(token.0)
    }
}

impl fmt::Debug for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Show a fingerprint, not the id itself: the id is meant to stay off logs and wires.
        let fp = blake3::hash(&self.0);
        write!(f, "NetworkId(fingerprint {})", &fp.to_hex()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_role_session_and_id() {
        let a = NetworkId::from_name("a");
        let b = NetworkId::from_name("b");
        let s1 = [1u8; 32];
        let s2 = [2u8; 32];
        let p = a.proof(Role::Dialer, &s1);
        assert!(a.verify(Role::Dialer, &s1, &p));
        assert!(!a.verify(Role::Acceptor, &s1, &p));
        assert!(!a.verify(Role::Dialer, &s2, &p));
        assert!(!b.verify(Role::Dialer, &s1, &p));
        assert_ne!(NetworkId::public(), a);
    }

    #[test]
    fn acceptor_tokens_bind_the_node_and_the_id() {
        let a = NetworkId::from_name("a");
        let b = NetworkId::from_name("b");
        let n1 = crate::SecretKey::from_seed([1; 32]).node_id();
        let n2 = crate::SecretKey::from_seed([2; 32]).node_id();
        let t = a.acceptor_token(&n1);
        assert!(a.verify_acceptor_token(&n1, &t));
        assert!(!a.verify_acceptor_token(&n2, &t));
        assert!(!b.verify_acceptor_token(&n1, &t));
        // Not a dialer proof in disguise.
        assert!(!a.verify(Role::Acceptor, n1.as_bytes(), &t));
        // Pinned; checked against the Python `blake3` package (node id of seed 01 × 32).
        let fixture = NetworkId::from_name("fixture").acceptor_token(&n1);
        assert_eq!(
            blake3::Hash::from(fixture.0).to_hex().as_str(),
            "d8b43d45d57666ba5856c87f4be5b4eae91272f9c10bf658ef9070ee452d1904"
        );
    }

    #[test]
    fn fixture() {
        // Pins the derivation so that nodes built from different versions agree; the value was
        // checked against the Python `blake3` package.
        let id = NetworkId::from_name("fixture");
        let proof = id.proof(Role::Acceptor, &[0u8; 32]);
        assert_eq!(
            blake3::Hash::from(proof.0).to_hex().as_str(),
            "bd2b9da2e88cca2727d3954152b9c5116d324c1d4c14065f7d569cce42c3f965"
        );
    }
}
