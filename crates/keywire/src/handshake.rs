//! What happens between QUIC's handshake and handing a connection to the application: reading
//! the proven peer key, and exchanging network-id proofs (see [`keywire_proto::network_id`]).
//!
//! Proof frame, sent by each side on the first unidirectional stream it opens (then finished):
//!
//! ```text
//! +---------+------------------+-------+------------------------------+
//! | version | proof (32 bytes) | count | count candidate addresses    |   version = 0x03
//! +---------+------------------+-------+------------------------------+
//! ```
//!
//! The acceptor sends its frame in 0.5-RTT data, with its handshake flight; its proof is the
//! acceptor token ([`NetworkId::acceptor_token`]), since its TLS exporter does not exist yet.
//! The dialer sends its frame once its handshake completes, with the exporter-bound proof, and
//! returns from `connect` as soon as the acceptor's token checks out: one round trip, as QUIC.
//! The acceptor hands the connection out only after checking the dialer's proof.
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

/// 3: the acceptor's frame carries its token (0.5-RTT) instead of an exporter proof.
const PROOF_VERSION: u8 = 3;
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

/// Acceptor, in 0.5-RTT data (before the handshake completes): opens the first unidirectional
/// stream and sends the acceptor token and our candidates with the handshake flight.
pub(crate) async fn announce_acceptor(
    conn: &quinn::Connection,
    network: &NetworkId,
    me: &NodeId,
    candidates: &[SocketAddr],
) -> Result<quinn::SendStream, CheckError> {
    write_frame(conn, &network.acceptor_token(me), candidates).await
}

/// Acceptor, once the handshake is complete: checks the dialer's proof and returns its
/// candidates; closes the connection on any failure.
pub(crate) async fn check_dialer(
    conn: &quinn::Connection,
    network: &NetworkId,
    announced: quinn::SendStream,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, CheckError> {
    let check = async {
        let exported = exporter(conn)?;
        let receive = async {
            let (proof, candidates) = read_frame(conn).await?;
            if network.verify(Role::Dialer, &exported, &proof) {
                Ok(candidates)
            } else {
                Err(CheckError::NetworkMismatch)
            }
        };
        // The dialer completes only on our token; an application that closes the connection
        // the moment it gets it must not cut the token off in flight. The wait costs nothing:
        // the dialer acknowledges the token with the flight that carries its own proof.
        let delivered = async {
            announced.stopped().await.map(|_| ()).map_err(|e| match e {
                quinn::StoppedError::ConnectionLost(e) => CheckError::Connection(e),
                _ => CheckError::Malformed("proof stream stopped"),
            })
        };
        let (received, delivered) = tokio::join!(receive, delivered);
        let candidates = received?;
        delivered?;
        Ok(candidates)
    };
    close_on_failure(conn, within(timeout, check).await)
}

/// Dialer, once the handshake is complete: sends our proof (without waiting for anything) and
/// checks the acceptor's token, which came with the handshake; returns the acceptor's
/// candidates. Closes the connection on any failure.
pub(crate) async fn check_acceptor(
    conn: &quinn::Connection,
    network: &NetworkId,
    acceptor: &NodeId,
    candidates: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<SocketAddr>, CheckError> {
    let check = async {
        let exported = exporter(conn)?;
        let proof = network.proof(Role::Dialer, &exported);
        let send = write_frame(conn, &proof, candidates);
        let receive = async {
            let (token, candidates) = read_frame(conn).await?;
            if network.verify_acceptor_token(acceptor, &token) {
                Ok(candidates)
            } else {
                Err(CheckError::NetworkMismatch)
            }
        };
        let (sent, received) = tokio::join!(send, receive);
        // The peer's token (or its close) says more than our send failing, so its error wins.
        let candidates = received?;
        sent?;
        Ok(candidates)
    };
    close_on_failure(conn, within(timeout, check).await)
}

async fn within<T>(
    timeout: Duration,
    check: impl std::future::Future<Output = Result<T, CheckError>>,
) -> Result<T, CheckError> {
    let result = tokio::time::timeout(timeout, check)
        .await
        .unwrap_or(Err(CheckError::TimedOut));
    // A mismatch seen by the peer first arrives here as its close frame.
    result.map_err(|e| match e {
        CheckError::Connection(c) if is_network_mismatch(&c) => CheckError::NetworkMismatch,
        other => other,
    })
}

fn close_on_failure<T>(
    conn: &quinn::Connection,
    result: Result<T, CheckError>,
) -> Result<T, CheckError> {
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

fn exporter(conn: &quinn::Connection) -> Result<[u8; EXPORTER_LEN], CheckError> {
    let mut exported = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exported, EXPORTER_LABEL, b"")
        .map_err(|_| CheckError::Malformed("no TLS exporter"))?;
    Ok(exported)
}

/// Opens our first unidirectional stream and sends the proof frame on it (then finishes it).
async fn write_frame(
    conn: &quinn::Connection,
    proof: &NetworkProof,
    candidates: &[SocketAddr],
) -> Result<quinn::SendStream, CheckError> {
    let mut stream = conn.open_uni().await.map_err(CheckError::Connection)?;
    let mut frame = Vec::with_capacity(MAX_PROOF_FRAME_LEN);
    frame.push(PROOF_VERSION);
    frame.extend_from_slice(&proof.0);
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
    Ok(stream)
}

/// Reads the peer's first unidirectional stream: its proof frame.
async fn read_frame(
    conn: &quinn::Connection,
) -> Result<(NetworkProof, Vec<SocketAddr>), CheckError> {
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
    parse_proof_frame(&frame)
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
