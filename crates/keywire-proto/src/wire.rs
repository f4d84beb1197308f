//! Small pieces shared by keywire's hand-written codecs: a bounds-checked reader that cannot
//! panic, and the socket-address encoding used in tickets and gate messages.
//!
//! Address: `0x04 | IPv4 (4) | port (2)` or `0x06 | IPv6 (16) | port (2)`, big-endian.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended before the value did.
    #[error("input ended early")]
    Truncated,
    /// An address family byte other than 4 or 6.
    #[error("unknown address family {0}")]
    UnknownAddressFamily(u8),
}

/// Reads values off the front of a byte slice, checking every length first.
#[derive(Debug, Clone)]
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    /// Takes `N` bytes.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let bytes = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Takes `len` bytes.
    pub fn bytes(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < len {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A socket address.
    pub fn addr(&mut self) -> Result<SocketAddr, WireError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            other => return Err(WireError::UnknownAddressFamily(other)),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Appends a socket address.
pub fn put_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_fixture_and_truncation() {
        let mut out = Vec::new();
        put_addr(&mut out, &"192.0.2.1:443".parse().unwrap());
        assert_eq!(out, [4, 192, 0, 2, 1, 0x01, 0xbb]);
        assert_eq!(Reader(&out).addr(), Ok("192.0.2.1:443".parse().unwrap()));
        for cut in 0..out.len() {
            assert_eq!(Reader(&out[..cut]).addr(), Err(WireError::Truncated));
        }
        assert_eq!(
            Reader(&[5, 0]).addr(),
            Err(WireError::UnknownAddressFamily(5))
        );
    }
}
