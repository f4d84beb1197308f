//! What happens between QUIC's handshake and handing a connection to the application: reading
//! the proven peer key, and exchanging network-id proofs (see [`keywire_proto::network_id`]).
//!
//! Proof frame, sent by each side on the first unidirectional stream it opens (then finished):
//!
//! ```text
//! +---------+------------------+-------+------------------------------+
//! | version | proof (32 bytes) | count | count candidate addresses    |   version = 0x02
//! +---------+------------------+-------+------------------------------+
//! ```
//!
//! Candidates are the sender's direct addresses (bound, announced, and as its gates see it),
//! at most [`MAX_CANDIDATES`], each in keywire's address encoding (`keywire_proto::wire`). A
//! relayed connection probes them to go direct (see `upgrade`); they cost no extra round trip.
//!
//! The application never sees these streams: a connection is handed over only after both proofs
//! were checked, so the first unidirectional stream of each side is always the proof.

use std::net::SocketAddr;
use std::time::Duration;

use keywire_proto::ticket::canonical_addr;
use keywire_proto::wire::{put_addr, Reader};

use keywire_proto::network_id::{EXPORTER_LABEL, EXPORTER_LEN};
use keywire_proto::{NetworkId, NetworkProof, NodeId, Role};
use quinn::{ConnectionError, TransportErrorCode, VarInt};

use crate::error::{close_code, AttemptFailure};
use crate::tls;

const PROOF_VERSION: u8 = 2;
/// Most candidate addresses one side sends.
pub(crate) const MAX_CANDIDATES: usize = 8;
/// Longest proof frame: every candidate an IPv6 address (1 + 16 + 2 bytes).
const MAX_PROOF_FRAME_LEN: usize = 1 + 32 + 1 + MAX_CANDIDATES * 19;
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

/// Sends our proof and candidates, checks the peer's proof and returns its candidates; closes
/// the connection on any failure.
pub(crate) async fn exchange_network_proofs(
    conn: &quinn::Connection,
    network: &NetworkId,
    role: Role,
    candidates: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<SocketAddr>, CheckError> {
    let result = tokio::time::timeout(timeout, exchange(conn, network, role, candidates))
        .await
        .unwrap_or(Err(CheckError::TimedOut));
    match &result {
        Ok(_) | Err(CheckError::Connection(_)) => {}
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
    candidates: &[SocketAddr],
) -> Result<Vec<SocketAddr>, CheckError> {
    let mut exported = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exported, EXPORTER_LABEL, b"")
        .map_err(|_| CheckError::Malformed("no TLS exporter"))?;
    let peer_role = match role {
        Role::Dialer => Role::Acceptor,
        Role::Acceptor => Role::Dialer,
    };
    let send = async {
        let mut stream = conn.open_uni().await.map_err(CheckError::Connection)?;
        let mut frame = Vec::with_capacity(MAX_PROOF_FRAME_LEN);
        frame.push(PROOF_VERSION);
        frame.extend_from_slice(&network.proof(role, &exported).0);
        let candidates = &candidates[..candidates.len().min(MAX_CANDIDATES)];
        frame.push(candidates.len() as u8);
        for candidate in candidates {
            put_addr(&mut frame, &canonical_addr(*candidate));
        }
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
        let frame = stream
            .read_to_end(MAX_PROOF_FRAME_LEN)
            .await
            .map_err(|e| match e {
                quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e)) => {
                    CheckError::Connection(e)
                }
                quinn::ReadToEndError::TooLong => CheckError::Malformed("network proof too long"),
                _ => CheckError::Malformed("network proof stream reset"),
            })?;
        let (proof, candidates) = parse_proof_frame(&frame)?;
        if network.verify(peer_role, &exported, &proof) {
            Ok(candidates)
        } else {
            Err(CheckError::NetworkMismatch)
        }
    };
    let (sent, received) = tokio::join!(send, receive);
    // A mismatch seen by the peer first arrives here as its close frame.
    // The peer's proof (or its close) says more than our send failing, so its error wins.
    let outcome = match (sent, received) {
        (_, Err(e)) | (Err(e), Ok(_)) => Err(e),
        (Ok(()), Ok(candidates)) => Ok(candidates),
    };
    outcome.map_err(|e| match e {
        CheckError::Connection(c) if is_network_mismatch(&c) => CheckError::NetworkMismatch,
        other => other,
    })
}

/// Splits a proof frame into the proof and the sender's candidates (unusable ones left out).
fn parse_proof_frame(frame: &[u8]) -> Result<(NetworkProof, Vec<SocketAddr>), CheckError> {
    let mut reader = Reader(frame);
    let short = |_| CheckError::Malformed("short network proof");
    if reader.u8().map_err(short)? != PROOF_VERSION {
        return Err(CheckError::Malformed("unknown network proof version"));
    }
    let proof = NetworkProof(reader.array().map_err(short)?);
    let count = usize::from(reader.u8().map_err(short)?);
    if count > MAX_CANDIDATES {
        return Err(CheckError::Malformed("too many candidate addresses"));
    }
    let mut candidates = Vec::with_capacity(count);
    for _ in 0..count {
        let addr = reader
            .addr()
            .map_err(|_| CheckError::Malformed("bad candidate address"))?;
        if addr.port() != 0 && !addr.ip().is_unspecified() {
            candidates.push(canonical_addr(addr));
        }
    }
    if !reader.is_empty() {
        return Err(CheckError::Malformed("bytes after the candidates"));
    }
    Ok((proof, candidates))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_frames_parse_strictly() {
        let mut frame = vec![PROOF_VERSION];
        frame.extend_from_slice(&[7; 32]);
        frame.push(2);
        put_addr(&mut frame, &"192.0.2.1:5".parse().unwrap());
        put_addr(&mut frame, &"192.0.2.2:0".parse().unwrap());
        let (proof, candidates) = parse_proof_frame(&frame).unwrap();
        assert_eq!(proof.0, [7; 32]);
        assert_eq!(
            candidates,
            ["192.0.2.1:5".parse().unwrap()],
            "port 0 left out"
        );
        for cut in 0..frame.len() {
            assert!(parse_proof_frame(&frame[..cut]).is_err(), "cut {cut}");
        }
        let mut trailing = frame.clone();
        trailing.push(0);
        assert!(parse_proof_frame(&trailing).is_err());
        let mut old = frame.clone();
        old[0] = 1;
        assert!(parse_proof_frame(&old).is_err());
        let mut too_many = frame[..33].to_vec();
        too_many.push(MAX_CANDIDATES as u8 + 1);
        assert!(parse_proof_frame(&too_many).is_err());
    }
}
