//! Gate control messages, exchanged on one bidirectional stream of the client's QUIC connection
//! to the gate (ALPN `keywire/gate/1`).
//!
//! Each message is framed as `length (2, big-endian) | type (1) | body`, where `length` counts
//! type and body and is at most [`MAX_MESSAGE_LEN`]. Addresses use [`crate::wire`]'s encoding.
//!
//! | type | message | direction | body |
//! |---|---|---|---|
//! | 0x01 | `Register` | client → gate | version (1) |
//! | 0x02 | `Registered` | gate → client | session (8) · observed address · observation port (2) · relay byte rate (4) |
//! | 0x03 | `Refused` | gate → client | code (1) · retry after, ms (4) |
//! | 0x04 | `Introduce` | client → gate | peer node id (32) · count (1) · candidates |
//! | 0x05 | `Introduction` | gate → client | channel (4) · peer node id (32) · count (1) · candidates |
//! | 0x06 | `NoSuchPeer` | gate → client | peer node id (32) |
//! | 0x07 | `Ping` | client → gate | nonce (8) |
//! | 0x08 | `Pong` | gate → client | the ping's nonce (8) |

use std::net::SocketAddr;

use crate::identity::{NodeId, NodeIdError};
use crate::wire::{put_addr, Reader, WireError};

/// Largest framed message (type and body).
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Most candidate addresses in one message.
pub const MAX_CANDIDATES: usize = 16;
/// The registration protocol version this keywire speaks.
pub const GATE_PROTOCOL_VERSION: u8 = 1;

/// Why a gate refused a registration; the client shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The gate serves as many clients as it may.
    GateFull,
    /// This client (or its address) asked too often.
    RateLimited,
    /// The gate serves only listed keys.
    NotAllowed,
    /// A code this keywire does not know (a newer gate).
    Other(u8),
}

impl RefusalCode {
    fn to_byte(self) -> u8 {
        match self {
            Self::GateFull => 1,
            Self::RateLimited => 2,
            Self::NotAllowed => 3,
            Self::Other(code) => code,
        }
    }

    fn from_byte(byte: u8) -> Self {
        match byte {
            1 => Self::GateFull,
            2 => Self::RateLimited,
            3 => Self::NotAllowed,
            other => Self::Other(other),
        }
    }
}

/// A gate control message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GateMessage {
    /// Client asks to be served.
    Register {
        /// The client's protocol version.
        version: u8,
    },
    /// Gate accepts: the session, and the client's address as the gate saw it.
    Registered {
        /// Session id; relay frames must carry it (random, 64 bits).
        session: u64,
        /// The client's reflexive address, as seen on the gate's main port.
        observed: SocketAddr,
        /// The gate's second port, for telling endpoint-independent from endpoint-dependent
        /// mapping.
        observation_port: u16,
        /// Bytes per second this client may relay.
        relay_bytes_per_second: u32,
    },
    /// Gate refuses.
    Refused {
        /// Why.
        code: RefusalCode,
        /// When to try again (0: don't).
        retry_after_ms: u32,
    },
    /// Client asks to be introduced to (and relayed to) another client of the gate.
    Introduce {
        /// Who.
        peer: NodeId,
        /// The asking client's own candidate addresses, passed on to the peer.
        candidates: Vec<SocketAddr>,
    },
    /// Gate introduces a peer; sent to both clients of a new channel.
    Introduction {
        /// Relay channel for the pair.
        channel: u32,
        /// The other client.
        peer: NodeId,
        /// Its candidates: those it announced, then its reflexive address.
        candidates: Vec<SocketAddr>,
    },
    /// Client checks the gate is alive (twice a second); the gate echoes the nonce in a
    /// [`GateMessage::Pong`].
    Ping {
        /// Echoed.
        nonce: u64,
    },
    /// The gate answers a [`GateMessage::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The peer asked for is not a client of this gate.
    NoSuchPeer {
        /// Who was asked for.
        peer: NodeId,
    },
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Bytes missing or an unknown address family.
    #[error("malformed gate message: {0}")]
    Wire(#[from] WireError),
    /// The length field is 0 or over [`MAX_MESSAGE_LEN`].
    #[error("gate message length {0} out of range")]
    BadLength(usize),
    /// A type this keywire does not know.
    #[error("unknown gate message type {0:#04x}")]
    UnknownType(u8),
    /// More than [`MAX_CANDIDATES`] addresses.
    #[error("{0} candidates, at most {MAX_CANDIDATES}")]
    TooManyCandidates(usize),
    /// Bytes left after the message body.
    #[error("trailing bytes in gate message")]
    Trailing,
    /// A node id that is not a key.
    #[error(transparent)]
    NodeId(#[from] NodeIdError),
}

impl GateMessage {
    /// Appends the framed message (length prefix included). Candidates beyond
    /// [`MAX_CANDIDATES`] are not sent.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0, 0]);
        match self {
            Self::Register { version } => out.extend_from_slice(&[0x01, *version]),
            Self::Registered {
                session,
                observed,
                observation_port,
                relay_bytes_per_second,
            } => {
                out.push(0x02);
                out.extend_from_slice(&session.to_be_bytes());
                put_addr(out, observed);
                out.extend_from_slice(&observation_port.to_be_bytes());
                out.extend_from_slice(&relay_bytes_per_second.to_be_bytes());
            }
            Self::Refused {
                code,
                retry_after_ms,
            } => {
                out.extend_from_slice(&[0x03, code.to_byte()]);
                out.extend_from_slice(&retry_after_ms.to_be_bytes());
            }
            Self::Introduce { peer, candidates } => {
                out.push(0x04);
                put_peer_and_candidates(out, peer, candidates);
            }
            Self::Introduction {
                channel,
                peer,
                candidates,
            } => {
                out.push(0x05);
                out.extend_from_slice(&channel.to_be_bytes());
                put_peer_and_candidates(out, peer, candidates);
            }
            Self::NoSuchPeer { peer } => {
                out.push(0x06);
                out.extend_from_slice(peer.as_bytes());
            }
            Self::Ping { nonce } => {
                out.push(0x07);
                out.extend_from_slice(&nonce.to_be_bytes());
            }
            Self::Pong { nonce } => {
                out.push(0x08);
                out.extend_from_slice(&nonce.to_be_bytes());
            }
        }
        // Every message is far below 64 KiB (at most 1 + 4 + 32 + 1 + 16 × 19 bytes).
        let len = (out.len() - start - 2) as u16;
        out[start..start + 2].copy_from_slice(&len.to_be_bytes());
    }

    /// The length of the framed message starting `buf`, once its 2-byte prefix is there:
    /// `Ok(None)` means read more. Refuses lengths out of range before any body is buffered.
    pub fn framed_len(buf: &[u8]) -> Result<Option<usize>, MessageError> {
        let [hi, lo, ..] = buf else { return Ok(None) };
        let len = u16::from_be_bytes([*hi, *lo]) as usize;
        if len == 0 || len > MAX_MESSAGE_LEN {
            return Err(MessageError::BadLength(len));
        }
        Ok(Some(2 + len))
    }

    /// Decodes one framed message that fills `framed` exactly; never panics.
    pub fn decode(framed: &[u8]) -> Result<Self, MessageError> {
        let total = Self::framed_len(framed)?.ok_or(WireError::Truncated)?;
        if framed.len() < total {
            return Err(WireError::Truncated.into());
        }
        if framed.len() > total {
            return Err(MessageError::Trailing);
        }
        let mut input = Reader(&framed[2..]);
        let message = match input.u8()? {
            0x01 => Self::Register {
                version: input.u8()?,
            },
            0x02 => Self::Registered {
                session: input.u64()?,
                observed: input.addr()?,
                observation_port: input.u16()?,
                relay_bytes_per_second: input.u32()?,
            },
            0x03 => Self::Refused {
                code: RefusalCode::from_byte(input.u8()?),
                retry_after_ms: input.u32()?,
            },
            0x04 => {
                let (peer, candidates) = read_peer_and_candidates(&mut input)?;
                Self::Introduce { peer, candidates }
            }
            0x05 => {
                let channel = input.u32()?;
                let (peer, candidates) = read_peer_and_candidates(&mut input)?;
                Self::Introduction {
                    channel,
                    peer,
                    candidates,
                }
            }
            0x06 => Self::NoSuchPeer {
                peer: NodeId::from_bytes(input.array()?)?,
            },
            0x07 => Self::Ping {
                nonce: input.u64()?,
            },
            0x08 => Self::Pong {
                nonce: input.u64()?,
            },
            other => return Err(MessageError::UnknownType(other)),
        };
        if !input.is_empty() {
            return Err(MessageError::Trailing);
        }
        Ok(message)
    }
}

fn put_peer_and_candidates(out: &mut Vec<u8>, peer: &NodeId, candidates: &[SocketAddr]) {
    out.extend_from_slice(peer.as_bytes());
    let sent = &candidates[..candidates.len().min(MAX_CANDIDATES)];
    out.push(sent.len() as u8);
    for addr in sent {
        put_addr(out, addr);
    }
}

fn read_peer_and_candidates(
    input: &mut Reader<'_>,
) -> Result<(NodeId, Vec<SocketAddr>), MessageError> {
    let peer = NodeId::from_bytes(input.array()?)?;
    let count = input.u8()? as usize;
    if count > MAX_CANDIDATES {
        return Err(MessageError::TooManyCandidates(count));
    }
    let mut candidates = Vec::with_capacity(count);
    for _ in 0..count {
        candidates.push(input.addr()?);
    }
    Ok((peer, candidates))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;
    use proptest::prelude::*;

    fn peer() -> NodeId {
        SecretKey::from_seed([4; 32]).node_id()
    }

    fn round_trip(message: GateMessage) -> Vec<u8> {
        let mut out = Vec::new();
        message.encode(&mut out);
        assert_eq!(GateMessage::framed_len(&out), Ok(Some(out.len())));
        assert_eq!(GateMessage::decode(&out), Ok(message));
        out
    }

    #[test]
    fn fixtures() {
        assert_eq!(
            round_trip(GateMessage::Register { version: 1 }),
            [0, 2, 0x01, 1]
        );
        assert_eq!(
            round_trip(GateMessage::Ping { nonce: 258 }),
            [0, 9, 0x07, 0, 0, 0, 0, 0, 0, 1, 2]
        );
        assert_eq!(
            round_trip(GateMessage::Pong { nonce: 1 }),
            [0, 9, 0x08, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        let registered = GateMessage::Registered {
            session: 7,
            observed: "203.0.113.5:4000".parse().unwrap(),
            observation_port: 4001,
            relay_bytes_per_second: 1 << 20,
        };
        assert_eq!(
            round_trip(registered),
            [
                0, 22, 0x02, 0, 0, 0, 0, 0, 0, 0, 7, 4, 203, 0, 113, 5, 0x0f, 0xa0, 0x0f, 0xa1, 0,
                0x10, 0, 0
            ]
        );
        let refused = GateMessage::Refused {
            code: RefusalCode::GateFull,
            retry_after_ms: 1000,
        };
        assert_eq!(round_trip(refused), [0, 6, 0x03, 1, 0, 0, 0x03, 0xe8]);
        let intro = GateMessage::Introduction {
            channel: 9,
            peer: peer(),
            candidates: vec!["[2001:db8::1]:5".parse().unwrap()],
        };
        let bytes = round_trip(intro);
        assert_eq!(bytes.len(), 2 + 1 + 4 + 32 + 1 + 19);
        round_trip(GateMessage::Introduce {
            peer: peer(),
            candidates: vec![],
        });
        round_trip(GateMessage::NoSuchPeer { peer: peer() });
    }

    #[test]
    fn refusals() {
        assert_eq!(GateMessage::framed_len(&[0]), Ok(None));
        assert_eq!(
            GateMessage::framed_len(&[0, 0]),
            Err(MessageError::BadLength(0))
        );
        assert_eq!(
            GateMessage::framed_len(&[0x40, 0]),
            Err(MessageError::BadLength(0x4000))
        );
        assert_eq!(
            GateMessage::decode(&[0, 1, 0x7f]),
            Err(MessageError::UnknownType(0x7f))
        );
        assert_eq!(
            GateMessage::decode(&[0, 3, 0x01, 1, 9]),
            Err(MessageError::Trailing)
        );
        assert_eq!(
            GateMessage::decode(&[0, 2, 0x01, 1, 9]),
            Err(MessageError::Trailing)
        );
        assert_eq!(
            GateMessage::decode(&[0, 2, 0x01]),
            Err(WireError::Truncated.into())
        );
        let mut too_many = vec![0, 0, 0x04];
        too_many.extend_from_slice(peer().as_bytes());
        too_many.push(17);
        let len = (too_many.len() - 2) as u16;
        too_many[..2].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            GateMessage::decode(&too_many),
            Err(MessageError::TooManyCandidates(17))
        );
        let unknown_code = GateMessage::Refused {
            code: RefusalCode::Other(42),
            retry_after_ms: 0,
        };
        round_trip(unknown_code);
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> + Clone {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(ip.into(), p)),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(ip.into(), p)),
        ]
    }

    fn arb_message() -> impl Strategy<Value = GateMessage> {
        let peer = any::<[u8; 32]>().prop_map(|seed| SecretKey::from_seed(seed).node_id());
        let candidates = proptest::collection::vec(arb_addr(), 0..=MAX_CANDIDATES);
        prop_oneof![
            any::<u8>().prop_map(|version| GateMessage::Register { version }),
            (any::<u64>(), arb_addr(), any::<u16>(), any::<u32>()).prop_map(
                |(session, observed, observation_port, relay_bytes_per_second)| {
                    GateMessage::Registered {
                        session,
                        observed,
                        observation_port,
                        relay_bytes_per_second,
                    }
                }
            ),
            (any::<u8>(), any::<u32>()).prop_map(|(c, retry_after_ms)| GateMessage::Refused {
                code: RefusalCode::from_byte(c),
                retry_after_ms
            }),
            (peer.clone(), candidates.clone())
                .prop_map(|(peer, candidates)| GateMessage::Introduce { peer, candidates }),
            (any::<u32>(), peer.clone(), candidates).prop_map(|(channel, peer, candidates)| {
                GateMessage::Introduction {
                    channel,
                    peer,
                    candidates,
                }
            }),
            peer.prop_map(|peer| GateMessage::NoSuchPeer { peer }),
            any::<u64>().prop_map(|nonce| GateMessage::Ping { nonce }),
            any::<u64>().prop_map(|nonce| GateMessage::Pong { nonce }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(message in arb_message()) {
            let mut out = Vec::new();
            message.encode(&mut out);
            prop_assert!(out.len() <= 2 + MAX_MESSAGE_LEN);
            prop_assert_eq!(GateMessage::decode(&out), Ok(message));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = GateMessage::framed_len(&bytes);
            let _ = GateMessage::decode(&bytes);
        }
    }
}
