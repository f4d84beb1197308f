//! TLS 1.3 with raw public keys (RFC 7250): both ends prove their ed25519 node keys, no X.509.
//!
//! How the dialed key is enforced, resumption included:
//! - the client's server name is derived from the dialed [`NodeId`] ([`server_name_for`]); SNI is
//!   not sent, so the name never leaves the host;
//! - the server verifier takes the expected key from that name and accepts only that key;
//! - rustls caches resumption tickets per server name, so a ticket from node A is only ever
//!   offered when dialing A; and after every handshake the endpoint compares the peer's proven
//!   key with the dialed one (see `endpoint`), so a resumed session cannot skip the check either.
//!
//! Allow and deny lists are enforced here, in the verifiers, so a refused key never completes a
//! handshake.

use std::collections::HashSet;
use std::sync::Arc;

use keywire_proto::{NodeId, SecretKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature_with_raw_key, CryptoProvider};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::metrics::Metrics;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (33 bytes, no unused bits) }; the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410 §7); the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// Domain under which node server names live; `.invalid` (RFC 6761) can never be resolved.
const SERVER_NAME_SUFFIX: &str = ".node.keywire.invalid";
/// Marker in the rustls error text that lets the dialer report a typed `WrongPeer`.
pub(crate) const WRONG_PEER_MARKER: &str = "keywire: the peer proved a different key";

/// Which keys may connect.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// If set, only these keys complete handshakes (in both directions).
    pub allow: Option<HashSet<NodeId>>,
    /// These keys never complete a handshake.
    pub deny: HashSet<NodeId>,
}

impl PeerPolicy {
    /// Whether `node` may complete a handshake with us.
    pub fn permits(&self, node: &NodeId) -> bool {
        !self.deny.contains(node) && self.allow.as_ref().is_none_or(|allow| allow.contains(node))
    }
}

/// The SubjectPublicKeyInfo DER of a node key.
pub(crate) fn spki_der(node: &NodeId) -> Vec<u8> {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(node.as_bytes());
    der
}

/// Reads a node key back from SubjectPublicKeyInfo DER; `None` for anything but Ed25519.
pub(crate) fn node_id_from_spki(der: &[u8]) -> Option<NodeId> {
    let key = der.strip_prefix(&ED25519_SPKI_PREFIX)?;
    NodeId::from_bytes(key.try_into().ok()?).ok()
}

/// The TLS server name used when dialing `node`. Never sent (SNI is off).
pub(crate) fn server_name_for(node: &NodeId) -> ServerName<'static> {
    // A node id is 61 characters of [a-z0-9]: a valid DNS label (at most 63).
    ServerName::try_from(format!("{node}{SERVER_NAME_SUFFIX}"))
        .expect("node ids are valid DNS labels")
}

fn node_id_from_server_name(name: &ServerName<'_>) -> Option<NodeId> {
    let ServerName::DnsName(dns) = name else {
        return None;
    };
    dns.as_ref().strip_suffix(SERVER_NAME_SUFFIX)?.parse().ok()
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(
    secret: &SecretKey,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&secret.to_seed());
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    let signing_key = provider.key_provider.load_private_key(der)?;
    let spki = CertificateDer::from(spki_der(&secret.node_id()));
    Ok(Arc::new(CertifiedKey::new(vec![spki], signing_key)))
}

/// The rustls client configuration shared by every dial (ALPN is set per dial).
pub(crate) fn client_config(
    secret: &SecretKey,
    policy: Arc<PeerPolicy>,
    metrics: Arc<Metrics>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let key = certified_key(secret, &provider)?;
    let verifier = Arc::new(NodeVerifier {
        policy,
        metrics,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(key),
        ));
    config.enable_sni = false;
    // 0-RTT stays off: early data can be replayed, and no handler has opted in.
    config.enable_early_data = false;
    Ok(config)
}

/// The rustls server configuration; `alpns` are the protocols this node accepts.
pub(crate) fn server_config(
    secret: &SecretKey,
    policy: Arc<PeerPolicy>,
    metrics: Arc<Metrics>,
    alpns: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = provider();
    let key = certified_key(secret, &provider)?;
    let verifier = Arc::new(NodeVerifier {
        policy,
        metrics,
        provider: provider.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(key),
        ));
    config.alpn_protocols = alpns;
    config.max_early_data_size = 0;
    Ok(config)
}

/// Verifies raw Ed25519 public keys against the dialed key and the peer policy.
#[derive(Debug)]
struct NodeVerifier {
    policy: Arc<PeerPolicy>,
    metrics: Arc<Metrics>,
    provider: Arc<CryptoProvider>,
}

impl NodeVerifier {
    fn check_policy(&self, node: &NodeId) -> Result<(), rustls::Error> {
        if self.policy.permits(node) {
            Ok(())
        } else {
            Metrics::inc(&self.metrics.handshakes_denied);
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn peer_key(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<NodeId, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        node_id_from_spki(end_entity).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Metrics::inc(&self.metrics.peer_keys_verified);
        let presented = Self::peer_key(end_entity, intermediates)?;
        let expected = node_id_from_server_name(server_name).ok_or_else(|| {
            rustls::Error::General("keywire: server name is not a node id".into())
        })?;
        if presented != expected {
            Metrics::inc(&self.metrics.handshakes_wrong_peer);
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(WrongPeerError)),
            )));
        }
        self.check_policy(&presented)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered; a TLS 1.2 signature means a confused or hostile peer.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for NodeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Metrics::inc(&self.metrics.peer_keys_verified);
        let presented = Self::peer_key(end_entity, intermediates)?;
        self.check_policy(&presented)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Carried inside rustls's error; its `Debug` form (which rustls prints) is the marker.
struct WrongPeerError;

impl std::fmt::Debug for WrongPeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(WRONG_PEER_MARKER)
    }
}

impl std::fmt::Display for WrongPeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(WRONG_PEER_MARKER)
    }
}

impl std::error::Error for WrongPeerError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trip_and_fixture() {
        let node = SecretKey::from_seed([5; 32]).node_id();
        let der = spki_der(&node);
        assert_eq!(der.len(), 44);
        assert_eq!(&der[..12], &ED25519_SPKI_PREFIX);
        assert_eq!(node_id_from_spki(&der), Some(node));
        assert_eq!(node_id_from_spki(&der[..43]), None);
        let mut other_alg = der.clone();
        other_alg[8] = 0x71; // Ed448's OID ends in 113.
        assert_eq!(node_id_from_spki(&other_alg), None);
    }

    #[test]
    fn server_name_carries_the_key() {
        let node = SecretKey::from_seed([6; 32]).node_id();
        assert_eq!(
            node_id_from_server_name(&server_name_for(&node)),
            Some(node)
        );
        let other = ServerName::try_from("example.com").unwrap();
        assert_eq!(node_id_from_server_name(&other), None);
    }

    #[test]
    fn ring_loads_our_pkcs8() {
        let secret = SecretKey::from_seed([8; 32]);
        let key = certified_key(&secret, &provider()).unwrap();
        assert_eq!(key.cert[0].as_ref(), spki_der(&secret.node_id()).as_slice());
    }

    #[test]
    fn policy() {
        let a = SecretKey::from_seed([1; 32]).node_id();
        let b = SecretKey::from_seed([2; 32]).node_id();
        let mut policy = PeerPolicy::default();
        assert!(policy.permits(&a));
        policy.deny.insert(a);
        assert!(!policy.permits(&a) && policy.permits(&b));
        policy.allow = Some([a].into_iter().collect());
        assert!(!policy.permits(&a) && !policy.permits(&b));
    }
}
