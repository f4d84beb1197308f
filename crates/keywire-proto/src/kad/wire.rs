//! Reading and writing the DHT's byte layouts: bounds-checked, big-endian, never panicking.

use std::net::SocketAddr;

use crate::identity::NodeId;

/// Why bytes from the network were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended before a field did.
    #[error("truncated: the input ended before a field did")]
    Truncated,
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

impl From<crate::wire::WireError> for WireError {
    fn from(error: crate::wire::WireError) -> Self {
        match error {
            crate::wire::WireError::UnknownAddressFamily(family) => {
                WireError::UnknownAddressFamily(family)
            }
            // `Truncated` and any later variant: the input ended or was malformed.
            _ => WireError::Truncated,
        }
    }
}

/// The shared bounds-checked reader ([`crate::wire::Reader`]) plus the DHT's own fields: keys,
/// validated addresses and capped counts.
#[derive(Debug)]
pub struct Reader<'a> {
    inner: crate::wire::Reader<'a>,
}

impl<'a> Reader<'a> {
    /// Starts reading `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Self {
            inner: crate::wire::Reader(input),
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.inner.0
    }

    /// Reads `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        Ok(self.inner.bytes(n)?)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.inner.array()?)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.inner.u8()?)
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(self.inner.u16()?)
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(self.inner.u64()?)
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

    /// Reads an address in the shared layout ([`crate::wire::put_addr`]). Port 0 and
    /// unspecified addresses name no reachable place, and a v4-mapped IPv6 address has a
    /// shorter canonical form (family 4); all three are refused, so one address has exactly
    /// one encoding.
    pub fn socket_addr(&mut self) -> Result<SocketAddr, WireError> {
        let addr = self.inner.addr()?;
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(WireError::Invalid("address"));
        }
        if crate::ticket::canonical_addr(addr) != addr {
            return Err(WireError::Invalid(
                "address: v4-mapped IPv6 must be sent as IPv4",
            ));
        }
        Ok(addr)
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
    crate::wire::put_addr(out, &crate::ticket::canonical_addr(*addr));
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
        let mut mapped_v6 = vec![6];
        mapped_v6.extend_from_slice(
            &"::ffff:1.2.3.4"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        mapped_v6.extend_from_slice(&[1, 2]);
        assert!(matches!(
            Reader::new(&mapped_v6).socket_addr(),
            Err(WireError::Invalid(_))
        ));
        assert_eq!(
            Reader::new(&[5]).socket_addr(),
            Err(WireError::UnknownAddressFamily(5))
        );
        assert_eq!(
            Reader::new(&[6, 0]).socket_addr(),
            Err(WireError::Truncated)
        );
    }
}
