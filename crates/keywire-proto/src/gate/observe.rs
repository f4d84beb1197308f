//! Address observation on the gate's second port.
//!
//! A client sends an `ObserveRequest` (a control packet of kind `Probe`) to the gate's
//! observation port; the gate answers from that port with the source address it saw. Comparing
//! it with the address the gate's main port saw tells endpoint-independent mapping (same) from
//! endpoint-dependent mapping (different). The request is padded so that the reply is never
//! larger than the request: an observer cannot be used to amplify a spoofed flood.
//!
//! ```text
//! request: 0x10 | 0x01 | 0x01 | nonce (8) | zero padding to 40 bytes
//! reply:   0x10 | 0x01 | 0x02 | nonce (8) | observed address (7 or 19)
//! ```

use std::net::SocketAddr;

use crate::datagram::{ControlKind, ControlPacket, CONTROL_VERSION};
use crate::wire::{put_addr, Reader};

/// Size of every request, and the most a reply may take.
pub const OBSERVE_REQUEST_LEN: usize = 40;
const REQUEST: u8 = 0x01;
const REPLY: u8 = 0x02;

/// An observation message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observe {
    /// "What address do you see?"
    Request {
        /// Echoed in the reply, so that a reply cannot be forged off-path.
        nonce: u64,
    },
    /// "This one."
    Reply {
        /// The request's nonce.
        nonce: u64,
        /// The source address of the request, as the observer saw it.
        observed: SocketAddr,
    },
}

impl Observe {
    /// The whole datagram (control header included).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ControlKind::Probe.to_byte(), CONTROL_VERSION];
        match self {
            Self::Request { nonce } => {
                out.push(REQUEST);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.resize(OBSERVE_REQUEST_LEN, 0);
            }
            Self::Reply { nonce, observed } => {
                out.push(REPLY);
                out.extend_from_slice(&nonce.to_be_bytes());
                put_addr(&mut out, observed);
            }
        }
        out
    }

    /// Parses a datagram; `None` for anything else (never panics). A request shorter than
    /// [`OBSERVE_REQUEST_LEN`] is refused, so no reply outgrows its request.
    pub fn decode(datagram: &[u8]) -> Option<Self> {
        let packet = ControlPacket::decode(datagram).ok()?;
        if packet.kind != ControlKind::Probe {
            return None;
        }
        let mut input = Reader(packet.payload);
        match input.u8().ok()? {
            REQUEST if datagram.len() >= OBSERVE_REQUEST_LEN => Some(Self::Request {
                nonce: input.u64().ok()?,
            }),
            REPLY => {
                let nonce = input.u64().ok()?;
                let observed = input.addr().ok()?;
                input.is_empty().then_some(Self::Reply { nonce, observed })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixture_and_no_amplification() {
        let request = Observe::Request { nonce: 5 }.encode();
        assert_eq!(request.len(), OBSERVE_REQUEST_LEN);
        assert_eq!(&request[..11], &[0x10, 1, 1, 0, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(
            Observe::decode(&request),
            Some(Observe::Request { nonce: 5 })
        );
        let v6: SocketAddr = "[2001:db8::1]:65535".parse().unwrap();
        let reply = Observe::Reply {
            nonce: 5,
            observed: v6,
        }
        .encode();
        assert!(
            reply.len() <= request.len(),
            "a reply must never outgrow its request"
        );
        assert_eq!(
            Observe::decode(&reply),
            Some(Observe::Reply {
                nonce: 5,
                observed: v6
            })
        );
        // An unpadded request gets nothing.
        assert_eq!(Observe::decode(&request[..20]), None);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Observe::decode(&bytes);
        }

        #[test]
        fn replies_round_trip(nonce in any::<u64>(), ip in any::<[u8; 16]>(), port in any::<u16>()) {
            let observed = SocketAddr::new(ip.into(), port);
            let reply = Observe::Reply { nonce, observed };
            prop_assert_eq!(Observe::decode(&reply.encode()), Some(reply));
        }
    }
}
