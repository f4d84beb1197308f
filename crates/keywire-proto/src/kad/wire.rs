//! Reading and writing the DHT's byte layouts: bounds-checked, big-endian, never panicking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::identity::NodeId;

/// Why bytes from the network were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended before a field did.
    #[error("truncated: needed {needed} more bytes")]
    Truncated {
        /// Bytes missing.
        needed: usize,
    },
    /// A DHT wire version this node does not speak.
    #[error("unsupported DHT wire version {0}")]
    UnsupportedVersion(u8),
    /// An unknown message type.
    #[error("unknown DHT message type {0:#04x}")]
    UnknownType(u8),
    /// An address family tag other than 4 or 6.
    #[error("unknown address family {0}")]
    UnknownAddressFamily(u8),
    /// A 32-byte field that should be an ed25519 key is not one.
    #[error("not an ed25519 public key")]
    BadKey,
    /// A count or length over its documented cap.
    #[error("{what}: {got} over the cap of {cap}")]
    OverCap {
        /// Which field.
        what: &'static str,
        /// The value found.
        got: usize,
        /// The cap.
        cap: usize,
    },
    /// Bytes after the message that are not zero padding.
    #[error("non-zero bytes after the message")]
    TrailingBytes,
    /// The message is larger than [`crate::kad::rpc::MAX_RPC_LEN`].
    #[error("message of {0} bytes is over the size cap")]
    TooLarge(usize),
    /// A field value the format does not allow (e.g. port 0, unspecified address).
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A cursor over input bytes; every read checks the length first.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    /// Reads `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::Truncated {
                needed: n - self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a node key, checking it is a valid ed25519 point.
    pub fn node_id(&mut self) -> Result<NodeId, WireError> {
        NodeId::from_bytes(self.array()?).map_err(|_| WireError::BadKey)
    }

    /// Reads a key that is only a claim (a contact's or a sender's), without checking it is a
    /// curve point: the DHT never verifies anything against such keys, and checking costs
    /// more than the rest of decoding a reply.
    pub fn claimed_node_id(&mut self) -> Result<NodeId, WireError> {
        Ok(NodeId::from_bytes_unchecked(self.array()?))
    }

    /// Reads an address: `4 | ip (4) | port (2)` or `6 | ip (16) | port (2)`. Port 0 and
    /// unspecified addresses name no reachable place and are refused.
    pub fn socket_addr(&mut self) -> Result<SocketAddr, WireError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            other => return Err(WireError::UnknownAddressFamily(other)),
        };
        let port = self.u16()?;
        if port == 0 || ip.is_unspecified() {
            return Err(WireError::Invalid("address"));
        }
        Ok(SocketAddr::new(ip, port))
    }

    /// Reads a one-byte count and checks it against `cap`.
    pub fn count(&mut self, what: &'static str, cap: usize) -> Result<usize, WireError> {
        let got = usize::from(self.u8()?);
        if got > cap {
            return Err(WireError::OverCap { what, got, cap });
        }
        Ok(got)
    }
}

/// Appends an address in the layout [`Reader::socket_addr`] reads. v4-mapped IPv6 addresses
/// are written as IPv4, so one address has one encoding.
pub fn put_socket_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match crate::ticket::canonical_addr(*addr) {
        SocketAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.ip().octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Encoded length of an address.
pub fn socket_addr_len(addr: &SocketAddr) -> usize {
    match crate::ticket::canonical_addr(*addr) {
        SocketAddr::V4(_) => 7,
        SocketAddr::V6(_) => 19,
    }
}

/// Whether an address can appear on the wire (the decoder refuses the others).
pub fn is_wire_addr(addr: &SocketAddr) -> bool {
    addr.port() != 0 && !addr.ip().is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_fixtures() {
        let mut out = Vec::new();
        put_socket_addr(&mut out, &"1.2.3.4:258".parse().unwrap());
        assert_eq!(out, [4, 1, 2, 3, 4, 1, 2]);
        let mut r = Reader::new(&out);
        assert_eq!(r.socket_addr().unwrap(), "1.2.3.4:258".parse().unwrap());
        let mut mapped = Vec::new();
        put_socket_addr(&mut mapped, &"[::ffff:1.2.3.4]:258".parse().unwrap());
        assert_eq!(mapped, out);
        assert_eq!(
            Reader::new(&[4, 0, 0, 0, 0, 0, 1]).socket_addr(),
            Err(WireError::Invalid("address"))
        );
        assert_eq!(
            Reader::new(&[4, 1, 2, 3, 4, 0, 0]).socket_addr(),
            Err(WireError::Invalid("address"))
        );
        assert_eq!(
            Reader::new(&[5]).socket_addr(),
            Err(WireError::UnknownAddressFamily(5))
        );
        assert_eq!(
            Reader::new(&[6, 0]).socket_addr(),
            Err(WireError::Truncated { needed: 15 })
        );
    }
}
