//! Punch signals: what the two ends of a relayed connection tell each other *through the relay*
//! to set up hole punching (see [`super::punch`]).
//!
//! ```text
//! type | tag (8) | seq (4) | what (1) | body | mac (16)
//! ```
//!
//! `type` is `0x15` from the dialer, `0x16` from the acceptor; `tag` and `mac` are the path
//! probes' ([`super::ProbeKeys`]), so only the two ends can make or check a signal. `seq` counts
//! up from 1 per sender; a receiver takes each seq once and only above the highest it took, so
//! a captured signal replayed later changes nothing. Bodies:
//!
//! - `what = 1` hello: `mapping (1) | heard (1) | has_reflexive (1) | [reflexive address]`: the
//!   sender's NAT as its gate sees it, and whether it has had our hello;
//! - `what = 2` birthday go: `attempt (1)`: the sender (the endpoint-dependent side) has opened
//!   its extra sockets for that attempt and each has sent; the receiver may spray now;
//! - `what = 3` sync: `round (1)`: the dialer asks for a timed retry of plain probing.

use std::net::SocketAddr;

use super::{ProbeError, ProbeKeys, MAC_LEN};
use crate::nat::Mapping;
use crate::network_id::Role;
use crate::ticket::canonical_addr;
use crate::wire::{put_addr, Reader};

/// Largest signal: a hello with an IPv6 address.
pub const MAX_SIGNAL_LEN: usize = 1 + 8 + 4 + 1 + 3 + 19 + MAC_LEN;

/// A punch signal that passed its MAC check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The sender's NAT.
    Hello {
        /// How its NAT maps.
        mapping: Mapping,
        /// Its address as its gate saw it.
        reflexive: Option<SocketAddr>,
        /// Whether it has had a hello of ours.
        heard: bool,
    },
    /// The sender's extra sockets for birthday attempt `attempt` are open and have sent.
    BirthdayGo {
        /// Counts from 1 per connection.
        attempt: u8,
    },
    /// The dialer asks for a timed retry of plain probing: the receiver probes at once, the
    /// dialer half a relayed round trip after sending, so that both sides' probes cross.
    Sync {
        /// Counts from 1 per connection.
        round: u8,
    },
}

fn mapping_byte(mapping: Mapping) -> u8 {
    match mapping {
        Mapping::None => 1,
        Mapping::EndpointIndependent => 2,
        Mapping::EndpointDependent => 3,
        Mapping::Unknown => 0,
    }
}

fn mapping_of(byte: u8) -> Result<Mapping, ProbeError> {
    Ok(match byte {
        0 => Mapping::Unknown,
        1 => Mapping::None,
        2 => Mapping::EndpointIndependent,
        3 => Mapping::EndpointDependent,
        _ => return Err(ProbeError::Malformed("unknown mapping")),
    })
}

/// Whether a `Probe`-kind payload is a punch signal.
pub fn is_signal(payload: &[u8]) -> bool {
    matches!(payload.first(), Some(0x15 | 0x16))
}

impl ProbeKeys {
    /// Encodes `signal` from `sender` with sequence number `seq`.
    pub fn signal(&self, sender: Role, seq: u32, signal: &Signal) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_SIGNAL_LEN);
        out.push(match sender {
            Role::Dialer => 0x15,
            Role::Acceptor => 0x16,
        });
        out.extend_from_slice(&self.tag);
        out.extend_from_slice(&seq.to_be_bytes());
        match signal {
            Signal::Hello {
                mapping,
                reflexive,
                heard,
            } => {
                out.extend_from_slice(&[1, mapping_byte(*mapping), u8::from(*heard)]);
                match reflexive {
                    Some(addr) => {
                        out.push(1);
                        put_addr(&mut out, &canonical_addr(*addr));
                    }
                    None => out.push(0),
                }
            }
            Signal::BirthdayGo { attempt } => out.extend_from_slice(&[2, *attempt]),
            Signal::Sync { round } => out.extend_from_slice(&[3, *round]),
        }
        let mac = self.mac(&out);
        out.extend_from_slice(&mac);
        out
    }

    /// Checks a signal received by `receiver`; returns its seq and content.
    pub fn open_signal(&self, payload: &[u8], receiver: Role) -> Result<(u32, Signal), ProbeError> {
        if payload.len() < 1 + 8 + 4 + 1 + MAC_LEN {
            return Err(ProbeError::Malformed("truncated signal"));
        }
        let (covered, mac) = payload.split_at(payload.len() - MAC_LEN);
        let mut reader = Reader(covered);
        let short = |_| ProbeError::Malformed("truncated signal");
        let sender = match reader.u8().map_err(short)? {
            0x15 => Role::Dialer,
            0x16 => Role::Acceptor,
            _ => return Err(ProbeError::Malformed("not a signal")),
        };
        let tag: [u8; 8] = reader.array().map_err(short)?;
        if tag != self.tag {
            return Err(ProbeError::UnknownConnection);
        }
        if sender == receiver {
            return Err(ProbeError::Reflected);
        }
        if self.mac(covered) != mac {
            return Err(ProbeError::BadMac);
        }
        let seq = reader.u32().map_err(short)?;
        let signal = match reader.u8().map_err(short)? {
            1 => {
                let mapping = mapping_of(reader.u8().map_err(short)?)?;
                let heard = match reader.u8().map_err(short)? {
                    0 => false,
                    1 => true,
                    _ => return Err(ProbeError::Malformed("bad heard flag")),
                };
                let reflexive = match reader.u8().map_err(short)? {
                    0 => None,
                    1 => Some(
                        reader
                            .addr()
                            .map_err(|_| ProbeError::Malformed("bad reflexive address"))?,
                    ),
                    _ => return Err(ProbeError::Malformed("bad address flag")),
                };
                Signal::Hello {
                    mapping,
                    reflexive,
                    heard,
                }
            }
            2 => Signal::BirthdayGo {
                attempt: reader.u8().map_err(short)?,
            },
            3 => Signal::Sync {
                round: reader.u8().map_err(short)?,
            },
            _ => return Err(ProbeError::Malformed("unknown signal")),
        };
        if !reader.is_empty() {
            return Err(ProbeError::Malformed("bytes after the signal"));
        }
        Ok((seq, signal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8) -> ProbeKeys {
        ProbeKeys::from_exported([seed; 32])
    }

    #[test]
    fn signals_round_trip() {
        let k = keys(3);
        for signal in [
            Signal::Hello {
                mapping: Mapping::EndpointDependent,
                reflexive: Some("[2001:db8::7]:4000".parse().unwrap()),
                heard: true,
            },
            Signal::Hello {
                mapping: Mapping::Unknown,
                reflexive: None,
                heard: false,
            },
            Signal::BirthdayGo { attempt: 2 },
            Signal::Sync { round: 1 },
        ] {
            let bytes = k.signal(Role::Acceptor, 9, &signal);
            assert!(bytes.len() <= MAX_SIGNAL_LEN);
            assert!(is_signal(&bytes));
            assert_eq!(super::super::tag_of(&bytes), Some(k.tag()));
            assert_eq!(k.open_signal(&bytes, Role::Dialer), Ok((9, signal)));
        }
    }

    #[test]
    fn forged_reflected_foreign_and_truncated_signals_are_refused() {
        let k = keys(3);
        let bytes = k.signal(Role::Dialer, 1, &Signal::BirthdayGo { attempt: 1 });
        assert_eq!(
            k.open_signal(&bytes, Role::Dialer),
            Err(ProbeError::Reflected)
        );
        assert_eq!(
            keys(4).open_signal(&bytes, Role::Acceptor),
            Err(ProbeError::UnknownConnection)
        );
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x40;
            assert!(k.open_signal(&flipped, Role::Acceptor).is_err(), "byte {i}");
        }
        for cut in 0..bytes.len() {
            assert!(
                k.open_signal(&bytes[..cut], Role::Acceptor).is_err(),
                "cut {cut}"
            );
        }
    }
}
