//! What happens between QUIC's handshake and handing a connection to the application: reading
//! the proven peer key, and exchanging network-id proofs (see [`keywire_proto::network_id`]).
//!
//! Proof frame, sent by each side on the first unidirectional stream it opens:
//!
//! ```text
//! +---------+----------------------+
//! | version | proof (32 bytes)     |      version = 0x01
//! +---------+----------------------+
//! ```
//!
//! The application never sees these streams: a connection is handed over only after both proofs
//! were checked, so the first unidirectional stream of each side is always the proof.

use std::time::Duration;

use keywire_proto::network_id::{EXPORTER_LABEL, EXPORTER_LEN};
use keywire_proto::{NetworkId, NetworkProof, NodeId, Role};
use quinn::{ConnectionError, TransportErrorCode, VarInt};

use crate::error::{close_code, AttemptFailure};
use crate::tls;

const PROOF_VERSION: u8 = 1;
const PROOF_FRAME_LEN: usize = 1 + 32;
/// TLS alert access_denied (RFC 8446 §6.2), as a QUIC crypto error (RFC 9001 §4.8).
const ALERT_ACCESS_DENIED: u8 = 49;
/// TLS alert no_application_protocol (RFC 7301 §3.2).
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

/// Why a connection did not pass the post-handshake checks.
#[derive(Debug)]
pub(crate) enum CheckError {
    /// The peer is on another network.
    NetworkMismatch,
    /// The peer's proof was malformed or never came.
    Malformed(&'static str),
    /// No proof in time.
    TimedOut,
    /// The connection failed meanwhile.
    Connection(ConnectionError),
}

/// The key the peer proved in the TLS handshake.
pub(crate) fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
    match certs.as_slice() {
        [only] => tls::node_id_from_spki(only),
        _ => None,
    }
}

/// The ALPN protocol the handshake settled on.
pub(crate) fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let data = conn.handshake_data()?;
    data.downcast_ref::<quinn::crypto::rustls::HandshakeData>()?
        .protocol
        .clone()
}

/// Sends our proof and checks the peer's; closes the connection on any failure.
pub(crate) async fn exchange_network_proofs(
    conn: &quinn::Connection,
    network: &NetworkId,
    role: Role,
    timeout: Duration,
) -> Result<(), CheckError> {
    let result = tokio::time::timeout(timeout, exchange(conn, network, role))
        .await
        .unwrap_or(Err(CheckError::TimedOut));
    match &result {
        Ok(()) | Err(CheckError::Connection(_)) => {}
        Err(CheckError::NetworkMismatch) => conn.close(
            VarInt::from_u32(close_code::NETWORK_MISMATCH),
            b"network id mismatch",
        ),
        Err(CheckError::Malformed(why)) => conn.close(
            VarInt::from_u32(close_code::PROTOCOL_VIOLATION),
            why.as_bytes(),
        ),
        Err(CheckError::TimedOut) => conn.close(
            VarInt::from_u32(close_code::PROTOCOL_VIOLATION),
            b"network proof timed out",
        ),
    }
    result
}

async fn exchange(
    conn: &quinn::Connection,
    network: &NetworkId,
    role: Role,
) -> Result<(), CheckError> {
    let mut exported = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exported, EXPORTER_LABEL, b"")
        .map_err(|_| CheckError::Malformed("no TLS exporter"))?;
    let peer_role = match role {
        Role::Dialer => Role::Acceptor,
        Role::Acceptor => Role::Dialer,
    };
    let send = async {
        let mut stream = conn.open_uni().await.map_err(CheckError::Connection)?;
        let mut frame = [0u8; PROOF_FRAME_LEN];
        frame[0] = PROOF_VERSION;
        frame[1..].copy_from_slice(&network.proof(role, &exported).0);
        stream.write_all(&frame).await.map_err(|e| match e {
            quinn::WriteError::ConnectionLost(e) => CheckError::Connection(e),
            _ => CheckError::Malformed("peer stopped the proof stream"),
        })?;
        // Finishing only fails if the stream was already reset, which we never do.
        let _ = stream.finish();
        if role == Role::Acceptor {
            // The dialer completes only on our proof; an application that closes the connection
            // the moment it gets it must not cut the proof off in flight. The dialer's own proof
            // needs no such wait: it is what makes us send ours.
            stream.stopped().await.map_err(|e| match e {
                quinn::StoppedError::ConnectionLost(e) => CheckError::Connection(e),
                _ => CheckError::Malformed("proof stream stopped"),
            })?;
        }
        Ok(())
    };
    let receive = async {
        let mut stream = conn.accept_uni().await.map_err(CheckError::Connection)?;
        let mut frame = [0u8; PROOF_FRAME_LEN];
        stream.read_exact(&mut frame).await.map_err(|e| match e {
            quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => {
                CheckError::Connection(e)
            }
            _ => CheckError::Malformed("short network proof"),
        })?;
        if frame[0] != PROOF_VERSION {
            return Err(CheckError::Malformed("unknown network proof version"));
        }
        let mut proof = [0u8; 32];
        proof.copy_from_slice(&frame[1..]);
        if network.verify(peer_role, &exported, &NetworkProof(proof)) {
            Ok(())
        } else {
            Err(CheckError::NetworkMismatch)
        }
    };
    let (sent, received) = tokio::join!(send, receive);
    // A mismatch seen by the peer first arrives here as its close frame.
    received.and(sent).map_err(|e| match e {
        CheckError::Connection(c) if is_network_mismatch(&c) => CheckError::NetworkMismatch,
        other => other,
    })
}

fn is_network_mismatch(error: &ConnectionError) -> bool {
    matches!(error, ConnectionError::ApplicationClosed(close)
        if close.error_code == VarInt::from_u32(close_code::NETWORK_MISMATCH))
}

/// Classifies a QUIC connection error seen while dialing.
pub(crate) fn classify(error: &ConnectionError) -> AttemptFailure {
    match error {
        ConnectionError::TransportError(local) if local.reason.contains(tls::WRONG_PEER_MARKER) => {
            AttemptFailure::WrongPeer
        }
        ConnectionError::ConnectionClosed(remote)
            if remote.error_code == TransportErrorCode::crypto(ALERT_ACCESS_DENIED) =>
        {
            AttemptFailure::Refused
        }
        ConnectionError::ConnectionClosed(remote)
            if remote.error_code == TransportErrorCode::crypto(ALERT_NO_APPLICATION_PROTOCOL) =>
        {
            AttemptFailure::NoCommonProtocol
        }
        ConnectionError::TimedOut => AttemptFailure::TimedOut,
        e if is_network_mismatch(e) => AttemptFailure::NetworkMismatch,
        ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(close_code::BUSY) =>
        {
            AttemptFailure::Transport(
                "the peer is busy (accept queue or connection limit full)".into(),
            )
        }
        ConnectionError::ConnectionClosed(_) | ConnectionError::ApplicationClosed(_) => {
            AttemptFailure::Transport(format!("the peer closed the connection: {error}"))
        }
        other => AttemptFailure::Transport(other.to_string()),
    }
}

impl CheckError {
    pub(crate) fn into_failure(self) -> AttemptFailure {
        match self {
            Self::NetworkMismatch => AttemptFailure::NetworkMismatch,
            Self::Malformed(why) => AttemptFailure::ProtocolViolation(why.into()),
            Self::TimedOut => AttemptFailure::TimedOut,
            Self::Connection(e) => classify(&e),
        }
    }
}
