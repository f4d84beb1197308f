//! Path probes: authenticated checks that a direct path to the peer of a connection works.
//!
//! Both ends of a QUIC connection derive the same probe key from the TLS exporter
//! ([`PROBE_EXPORTER_LABEL`]), so only the two of them can make or check a probe. A probe is the
//! payload of a control packet of kind [`crate::datagram::ControlKind::Probe`]:
//!
//! ```text
//! request:  type | tag (8) | nonce (16) | mac (16) | zero padding to 64 bytes
//! response: type | tag (8) | nonce (16) | observed address (7 or 19) | mac (16)
//! ```
//!
//! `type` says request or response and which side sent it (so a request reflected back at its
//! sender is no response): `0x11`/`0x12` request from dialer/acceptor, `0x13`/`0x14` response.
//! (`0x01`/`0x02` on the same control kind are the gate's address observation,
//! [`crate::gate::observe`]; [`is_path_probe`] tells them apart.) `tag` names the connection (it is derived from the key, and lets the
//! receiver find the key without trying every one). The response echoes the nonce and the source
//! address it saw the request come from; `mac` is a 16-byte keyed BLAKE3 over everything before
//! it. Requests are padded so that a response is never larger than the request it answers: a
//! probe cannot amplify.
//!
//! A captured request replayed from elsewhere gets its answer sent to the replayer, which
//! learns nothing; a captured response is useless, because a prober accepts a response only for
//! a nonce it sent to exactly the address the response came from, once.

mod prober;
pub mod punch;
pub mod signal;

use std::net::SocketAddr;

pub use prober::{Decision, Prober, ProberConfig};

use crate::network_id::Role;
use crate::wire::{put_addr, Reader};

/// TLS exporter label the probe key is derived with (RFC 5705 / RFC 8446 §7.5).
pub const PROBE_EXPORTER_LABEL: &[u8] = b"EXPORTER-keywire-path-probe-v1";
/// Bytes of the MAC at the end of every probe.
pub const MAC_LEN: usize = 16;
/// Every request is padded to this length; no response is longer.
pub const REQUEST_LEN: usize = 64;
const HEADER_LEN: usize = 1 + 8 + 16;

/// Names a connection on the wire; derived from the probe key.
pub type ConnTag = [u8; 8];

/// The probe key of one connection.
#[derive(Clone)]
pub struct ProbeKeys {
    key: [u8; 32],
    tag: ConnTag,
}

impl std::fmt::Debug for ProbeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeKeys")
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

impl ProbeKeys {
    /// Keys from 32 bytes exported under [`PROBE_EXPORTER_LABEL`].
    pub fn from_exported(exported: [u8; 32]) -> Self {
        let tag_hash = blake3::keyed_hash(&exported, b"keywire probe connection tag");
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&tag_hash.as_bytes()[..8]);
        Self { key: exported, tag }
    }

    /// The connection's tag.
    pub fn tag(&self) -> ConnTag {
        self.tag
    }

    fn mac(&self, covered: &[u8]) -> [u8; MAC_LEN] {
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&blake3::keyed_hash(&self.key, covered).as_bytes()[..MAC_LEN]);
        out
    }

    /// Encodes a request from `sender` (the probe payload, without the control header).
    pub fn request(&self, sender: Role, nonce: [u8; 16]) -> Vec<u8> {
        let mut out = Vec::with_capacity(REQUEST_LEN);
        out.push(type_byte(Kind::Request, sender));
        out.extend_from_slice(&self.tag);
        out.extend_from_slice(&nonce);
        let mac = self.mac(&out);
        out.extend_from_slice(&mac);
        out.resize(REQUEST_LEN, 0);
        out
    }

    /// Encodes a response from `sender` to the request with `nonce` that came from `observed`.
    pub fn response(&self, sender: Role, nonce: [u8; 16], observed: SocketAddr) -> Vec<u8> {
        let mut out = Vec::with_capacity(REQUEST_LEN);
        out.push(type_byte(Kind::Response, sender));
        out.extend_from_slice(&self.tag);
        out.extend_from_slice(&nonce);
        put_addr(&mut out, &crate::ticket::canonical_addr(observed));
        let mac = self.mac(&out);
        out.extend_from_slice(&mac);
        out
    }

    /// Checks a probe that carries this key's tag. The sender must be the other side.
    pub fn open(&self, payload: &[u8], receiver: Role) -> Result<Probe, ProbeError> {
        let header = parse_header(payload)?;
        if header.tag != self.tag {
            return Err(ProbeError::UnknownConnection);
        }
        if header.sender == receiver {
            return Err(ProbeError::Reflected);
        }
        let (covered, mac) = match header.kind {
            Kind::Request => {
                if payload.len() < REQUEST_LEN {
                    return Err(ProbeError::Malformed("request shorter than its padding"));
                }
                let end = HEADER_LEN + MAC_LEN;
                (&payload[..HEADER_LEN], &payload[HEADER_LEN..end])
            }
            Kind::Response => {
                if payload.len() < HEADER_LEN + MAC_LEN {
                    return Err(ProbeError::Malformed("truncated response"));
                }
                payload.split_at(payload.len() - MAC_LEN)
            }
        };
        // Not constant-time: a forger learns at most whether a guess of one packet's MAC was
        // right, and every wrong guess costs a round trip; 128 bits are out of reach either way.
        if self.mac(covered) != mac {
            return Err(ProbeError::BadMac);
        }
        match header.kind {
            Kind::Request => Ok(Probe::Request {
                nonce: header.nonce,
            }),
            Kind::Response => {
                let mut reader = Reader(&covered[HEADER_LEN..]);
                let observed = reader
                    .addr()
                    .map_err(|_| ProbeError::Malformed("bad observed address"))?;
                if !reader.is_empty() {
                    return Err(ProbeError::Malformed("bytes after the observed address"));
                }
                Ok(Probe::Response {
                    nonce: header.nonce,
                    observed,
                })
            }
        }
    }
}

/// A probe that passed its MAC check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The peer asks whether this path works.
    Request {
        /// To echo.
        nonce: [u8; 16],
    },
    /// The peer answers one of our requests.
    Response {
        /// The request's nonce.
        nonce: [u8; 16],
        /// Where the peer saw our request come from.
        observed: SocketAddr,
    },
}

/// Why a probe was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Too short, an unknown type, or bad fields.
    #[error("malformed probe: {0}")]
    Malformed(&'static str),
    /// The tag names no connection we know.
    #[error("probe for an unknown connection")]
    UnknownConnection,
    /// Our own probe, sent back to us.
    #[error("probe reflected back at its sender")]
    Reflected,
    /// The MAC does not verify: forged or corrupted.
    #[error("probe MAC does not verify")]
    BadMac,
    /// A request whose nonce was answered already.
    #[error("replayed probe request")]
    Replayed,
    /// A response to no request of ours (wrong nonce, from another address, or answered).
    #[error("response to no outstanding request")]
    Unsolicited,
    /// More requests than the response rate allows.
    #[error("probe responses rate-limited")]
    RateLimited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Response,
}

fn type_byte(kind: Kind, sender: Role) -> u8 {
    match (kind, sender) {
        (Kind::Request, Role::Dialer) => 0x11,
        (Kind::Request, Role::Acceptor) => 0x12,
        (Kind::Response, Role::Dialer) => 0x13,
        (Kind::Response, Role::Acceptor) => 0x14,
    }
}

struct Header {
    kind: Kind,
    sender: Role,
    tag: ConnTag,
    nonce: [u8; 16],
}

fn parse_header(payload: &[u8]) -> Result<Header, ProbeError> {
    let mut reader = Reader(payload);
    let short = |_| ProbeError::Malformed("truncated header");
    let (kind, sender) = match reader.u8().map_err(short)? {
        0x11 => (Kind::Request, Role::Dialer),
        0x12 => (Kind::Request, Role::Acceptor),
        0x13 => (Kind::Response, Role::Dialer),
        0x14 => (Kind::Response, Role::Acceptor),
        _ => return Err(ProbeError::Malformed("unknown probe type")),
    };
    Ok(Header {
        kind,
        sender,
        tag: reader.array().map_err(short)?,
        nonce: reader.array().map_err(short)?,
    })
}

/// Whether a `Probe`-kind payload is a path probe or a punch signal ([`signal`]), rather than
/// an address observation.
pub fn is_path_probe(payload: &[u8]) -> bool {
    matches!(payload.first(), Some(0x11..=0x16))
}

/// The connection tag of a probe or signal payload, to find its key; `None` if too short or of
/// an unknown type.
pub fn tag_of(payload: &[u8]) -> Option<ConnTag> {
    if signal::is_signal(payload) {
        return payload.get(1..9)?.try_into().ok();
    }
    parse_header(payload).ok().map(|h| h.tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8) -> ProbeKeys {
        ProbeKeys::from_exported([seed; 32])
    }

    #[test]
    fn request_and_response_round_trip_and_never_amplify() {
        let k = keys(1);
        let nonce = [7u8; 16];
        let request = k.request(Role::Dialer, nonce);
        assert_eq!(request.len(), REQUEST_LEN);
        assert_eq!(tag_of(&request), Some(k.tag()));
        assert_eq!(
            k.open(&request, Role::Acceptor),
            Ok(Probe::Request { nonce })
        );
        let observed: SocketAddr = "[2001:db8::1]:65535".parse().unwrap();
        let response = k.response(Role::Acceptor, nonce, observed);
        assert!(response.len() <= request.len(), "{} bytes", response.len());
        assert_eq!(
            k.open(&response, Role::Dialer),
            Ok(Probe::Response { nonce, observed })
        );
    }

    #[test]
    fn forged_reflected_foreign_and_truncated_probes_are_refused() {
        let k = keys(1);
        let request = k.request(Role::Dialer, [1; 16]);
        assert_eq!(k.open(&request, Role::Dialer), Err(ProbeError::Reflected));
        assert_eq!(
            keys(2).open(&request, Role::Acceptor),
            Err(ProbeError::UnknownConnection)
        );
        for i in 0..HEADER_LEN + MAC_LEN {
            let mut flipped = request.clone();
            flipped[i] ^= 1;
            assert!(k.open(&flipped, Role::Acceptor).is_err(), "byte {i}");
        }
        let response = k.response(Role::Acceptor, [1; 16], "192.0.2.1:9".parse().unwrap());
        for i in 0..response.len() {
            let mut flipped = response.clone();
            flipped[i] ^= 0x80;
            assert!(k.open(&flipped, Role::Dialer).is_err(), "byte {i}");
        }
        for cut in 0..response.len() {
            assert!(k.open(&response[..cut], Role::Dialer).is_err(), "cut {cut}");
        }
        for cut in 0..REQUEST_LEN {
            assert!(
                k.open(&request[..cut], Role::Acceptor).is_err(),
                "cut {cut}"
            );
        }
    }
}
