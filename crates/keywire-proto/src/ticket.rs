//! Tickets: everything needed to dial a node, as one line of text.
//!
//! Text form: bech32m with prefix `kwt` over a versioned binary payload.
//!
//! Version 1 payload (all integers big-endian):
//!
//! ```text
//! 0      1                         33        34
//! +------+-------------------------+---------+------------------------------+
//! | 0x01 | node id (32 bytes)      | count n | n addresses                  |
//! +------+-------------------------+---------+------------------------------+
//! address: 0x04 | IPv4 (4) | port (2)    or    0x06 | IPv6 (16) | port (2)
//! ```
//!
//! Version 2 adds the gates the node is registered with (written only when there are any, so a
//! ticket without gates stays version 1 and readable by older keywire):
//!
//! ```text
//! | 0x02 | node id (32) | count n | n addresses | gate count g | g gates |
//! gate: gate node id (32) | count m (1..=4) | m addresses
//! ```
//!
//! A version 2 ticket may carry no direct address (a node behind a NAT is reached through its
//! gates), but then it carries at least one gate.
//!
//! A ticket never carries an unspecified address (`0.0.0.0`, `::`) or port 0: such an address
//! names no reachable place, and dialing it would reach whatever happens to listen locally.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::checked_text::{self, CheckedTextError};
use crate::identity::{NodeId, NodeIdError};
use crate::wire::{put_addr, Reader, WireError};

const TICKET_PREFIX: &str = "kwt";
const VERSION_1: u8 = 1;
const VERSION_2: u8 = 2;
/// Most gates a ticket may carry.
pub const MAX_TICKET_GATES: usize = 4;
/// Most addresses per gate in a ticket.
pub const MAX_GATE_ADDRS: usize = 4;
/// Most addresses a ticket may carry; keeps tickets short enough to paste.
pub const MAX_TICKET_ADDRS: usize = 16;

/// A node and the addresses it may be reached at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    /// Who to reach: the far end must prove this key.
    pub node_id: NodeId,
    /// Where to try, in the order given (the dialer still prefers IPv6, RFC 8305).
    pub direct_addrs: Vec<SocketAddr>,
}

impl NodeAddr {
    /// A node address with the given direct addresses; v4-mapped IPv6 addresses become IPv4.
    pub fn new(node_id: NodeId, direct_addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in direct_addrs.into_iter().map(canonical_addr) {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        Self {
            node_id,
            direct_addrs: addrs,
        }
    }
}

impl From<NodeId> for NodeAddr {
    /// A key with no address: dialing it needs discovery (`keywire::discovery`).
    fn from(node_id: NodeId) -> Self {
        Self::new(node_id, [])
    }
}

impl From<&NodeAddr> for NodeAddr {
    fn from(addr: &NodeAddr) -> Self {
        addr.clone()
    }
}

/// Turns `::ffff:a.b.c.d` into `a.b.c.d`, so one place has one spelling.
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// A dialable ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The node and where to reach it directly.
    pub node: NodeAddr,
    /// Gates the node is registered with, to reach it through when no direct address works.
    pub gates: Vec<NodeAddr>,
}

/// Why a ticket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// The text is not a well-formed, correctly checksummed ticket.
    #[error("invalid ticket: {0}")]
    Text(#[from] CheckedTextError),
    /// The ticket was made by a newer keywire.
    #[error(
        "unsupported ticket version {0} (this keywire reads versions 1 and 2); upgrade keywire"
    )]
    UnsupportedVersion(u8),
    /// The payload ended early or carried extra bytes.
    #[error("invalid ticket: {0}")]
    Malformed(&'static str),
    /// The node id inside is not a valid key.
    #[error("invalid ticket: {0}")]
    NodeId(#[from] NodeIdError),
    /// An address that cannot be dialed.
    #[error("invalid ticket: address {0} is not dialable (unspecified address or port 0)")]
    UndialableAddress(SocketAddr),
    /// No way to reach the node.
    #[error("invalid ticket: it carries no address")]
    NoAddress,
    /// More addresses than a ticket may carry.
    #[error("invalid ticket: {0} addresses, at most {MAX_TICKET_ADDRS} allowed")]
    TooManyAddresses(usize),
    /// More gates than a ticket may carry, or a gate with no or too many addresses.
    #[error("invalid ticket: {0}")]
    BadGates(&'static str),
}

fn check_dialable(addr: SocketAddr) -> Result<(), TicketError> {
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(TicketError::UndialableAddress(addr));
    }
    Ok(())
}

impl Ticket {
    /// Makes a ticket, refusing undialable or too many addresses.
    pub fn new(node: NodeAddr) -> Result<Self, TicketError> {
        Self::with_gates(node, Vec::new())
    }

    /// Makes a ticket that also names the gates the node is registered with.
    pub fn with_gates(node: NodeAddr, gates: Vec<NodeAddr>) -> Result<Self, TicketError> {
        if node.direct_addrs.is_empty() && gates.is_empty() {
            return Err(TicketError::NoAddress);
        }
        if node.direct_addrs.len() > MAX_TICKET_ADDRS {
            return Err(TicketError::TooManyAddresses(node.direct_addrs.len()));
        }
        if gates.len() > MAX_TICKET_GATES {
            return Err(TicketError::BadGates("more than 4 gates"));
        }
        for gate in &gates {
            if gate.direct_addrs.is_empty() || gate.direct_addrs.len() > MAX_GATE_ADDRS {
                return Err(TicketError::BadGates("a gate needs 1 to 4 addresses"));
            }
            if gate.node_id == node.node_id {
                return Err(TicketError::BadGates("a node cannot be its own gate"));
            }
        }
        for addr in node
            .direct_addrs
            .iter()
            .chain(gates.iter().flat_map(|g| &g.direct_addrs))
        {
            check_dialable(*addr)?;
        }
        Ok(Self { node, gates })
    }

    /// The binary payload: version 1 without gates, version 2 with.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(35 + 19 * self.node.direct_addrs.len());
        out.push(if self.gates.is_empty() {
            VERSION_1
        } else {
            VERSION_2
        });
        put_node_addr(&mut out, &self.node);
        if !self.gates.is_empty() {
            out.push(self.gates.len() as u8);
            for gate in &self.gates {
                put_node_addr(&mut out, gate);
            }
        }
        out
    }

    /// Parses a binary payload; never panics on any input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TicketError> {
        let mut input = Reader(bytes);
        let version = input.u8()?;
        if version != VERSION_1 && version != VERSION_2 {
            return Err(TicketError::UnsupportedVersion(version));
        }
        let node = read_node_addr(&mut input, MAX_TICKET_ADDRS)?;
        let mut gates = Vec::new();
        if version == VERSION_2 {
            let count = usize::from(input.u8()?);
            if count == 0 || count > MAX_TICKET_GATES {
                return Err(TicketError::BadGates(
                    "a version 2 ticket carries 1 to 4 gates",
                ));
            }
            for _ in 0..count {
                gates.push(read_node_addr(&mut input, MAX_GATE_ADDRS)?);
            }
        }
        if !input.is_empty() {
            return Err(TicketError::Malformed("trailing bytes"));
        }
        Self::with_gates(node, gates)
    }
}

fn put_node_addr(out: &mut Vec<u8>, node: &NodeAddr) {
    out.extend_from_slice(node.node_id.as_bytes());
    out.push(node.direct_addrs.len() as u8);
    for addr in &node.direct_addrs {
        put_addr(out, addr);
    }
}

fn read_node_addr(input: &mut Reader<'_>, max_addrs: usize) -> Result<NodeAddr, TicketError> {
    let node_id = NodeId::from_bytes(input.array::<32>()?)?;
    let count = usize::from(input.u8()?);
    if count > max_addrs {
        return Err(TicketError::TooManyAddresses(count));
    }
    let mut addrs = Vec::with_capacity(count);
    for _ in 0..count {
        addrs.push(input.addr()?);
    }
    let node = NodeAddr::new(node_id, addrs);
    if node.direct_addrs.len() != count {
        // The same address twice (or in two spellings): one ticket has one encoding.
        return Err(TicketError::Malformed("duplicate address"));
    }
    Ok(node)
}

impl From<WireError> for TicketError {
    fn from(error: WireError) -> Self {
        match error {
            WireError::UnknownAddressFamily(_) => Self::Malformed("unknown address family"),
            _ => Self::Malformed("ended early"),
        }
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&checked_text::encode(TICKET_PREFIX, &self.to_bytes()))
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(&checked_text::decode(TICKET_PREFIX, s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn node() -> NodeId {
        SecretKey::from_seed([9; 32]).node_id()
    }

    #[test]
    fn byte_fixture() {
        let addrs = [
            "127.0.0.1:4433".parse().unwrap(),
            "[::1]:80".parse().unwrap(),
        ];
        let ticket = Ticket::new(NodeAddr::new(node(), addrs)).unwrap();
        let bytes = ticket.to_bytes();
        let mut expected = vec![1u8];
        expected.extend_from_slice(node().as_bytes());
        expected.extend_from_slice(&[2, 4, 127, 0, 0, 1, 0x11, 0x51, 6]);
        expected.extend_from_slice(&[0; 15]);
        expected.extend_from_slice(&[1, 0, 80]);
        assert_eq!(bytes, expected);
        assert_eq!(Ticket::from_bytes(&bytes).unwrap(), ticket);
        let text = ticket.to_string();
        assert!(text.starts_with("kwt1"));
        assert_eq!(text.parse::<Ticket>().unwrap(), ticket);
    }

    #[test]
    fn refuses_bad_tickets() {
        let id = node();
        let unspecified = NodeAddr::new(id, ["0.0.0.0:5".parse().unwrap()]);
        assert!(matches!(
            Ticket::new(unspecified),
            Err(TicketError::UndialableAddress(_))
        ));
        let port0 = NodeAddr::new(id, ["[::1]:0".parse().unwrap()]);
        assert!(matches!(
            Ticket::new(port0),
            Err(TicketError::UndialableAddress(_))
        ));
        assert_eq!(
            Ticket::new(NodeAddr::new(id, [])),
            Err(TicketError::NoAddress)
        );

        let good = Ticket::new(NodeAddr::new(id, ["10.0.0.1:9".parse().unwrap()])).unwrap();
        let mut bytes = good.to_bytes();
        bytes[0] = 3;
        assert_eq!(
            Ticket::from_bytes(&bytes),
            Err(TicketError::UnsupportedVersion(3))
        );
        let mut bytes = good.to_bytes();
        bytes.push(0);
        assert_eq!(
            Ticket::from_bytes(&bytes),
            Err(TicketError::Malformed("trailing bytes"))
        );
        let bytes = good.to_bytes();
        for cut in 0..bytes.len() {
            assert!(Ticket::from_bytes(&bytes[..cut]).is_err());
        }
        let node_text = id.to_string();
        let err = node_text.parse::<Ticket>().unwrap_err();
        assert!(
            err.to_string()
                .contains("expected text starting with \"kwt1\""),
            "{err}"
        );
    }

    #[test]
    fn gates_make_a_version_2_ticket() {
        let gate = NodeAddr::new(
            SecretKey::from_seed([4; 32]).node_id(),
            ["203.0.113.9:7000".parse().unwrap()],
        );
        // Behind a NAT: no direct address, one gate.
        let ticket = Ticket::with_gates(NodeAddr::new(node(), []), vec![gate.clone()]).unwrap();
        let bytes = ticket.to_bytes();
        let mut expected = vec![2u8];
        expected.extend_from_slice(node().as_bytes());
        expected.push(0);
        expected.push(1);
        expected.extend_from_slice(gate.node_id.as_bytes());
        expected.extend_from_slice(&[1, 4, 203, 0, 113, 9, 0x1b, 0x58]);
        assert_eq!(bytes, expected);
        assert_eq!(Ticket::from_bytes(&bytes).unwrap(), ticket);
        assert_eq!(ticket.to_string().parse::<Ticket>().unwrap(), ticket);
        for cut in 0..bytes.len() {
            assert!(Ticket::from_bytes(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut no_gates = bytes[..34].to_vec();
        no_gates.push(0);
        assert!(matches!(
            Ticket::from_bytes(&no_gates),
            Err(TicketError::BadGates(_))
        ));
        let self_gate = NodeAddr::new(node(), ["203.0.113.9:7000".parse().unwrap()]);
        assert!(matches!(
            Ticket::with_gates(NodeAddr::new(node(), []), vec![self_gate]),
            Err(TicketError::BadGates(_))
        ));
        assert!(matches!(
            Ticket::with_gates(NodeAddr::new(node(), []), vec![gate.clone(); 5]),
            Err(TicketError::BadGates(_))
        ));
    }

    #[test]
    fn v4_mapped_addresses_are_canonical() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:7".parse().unwrap();
        let addr = NodeAddr::new(node(), [mapped, "192.0.2.1:7".parse().unwrap()]);
        assert_eq!(
            addr.direct_addrs,
            vec!["192.0.2.1:7".parse::<SocketAddr>().unwrap()]
        );
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), 1u16..)
                .prop_map(|(ip, p)| SocketAddr::new(Ipv4Addr::from(ip).into(), p)),
            (any::<[u8; 16]>(), 1u16..)
                .prop_map(|(ip, p)| SocketAddr::new(Ipv6Addr::from(ip).into(), p)),
        ]
        .prop_filter("dialable", |a| !a.ip().is_unspecified())
    }

    proptest! {
        #[test]
        fn round_trip(seed in any::<[u8; 32]>(), addrs in proptest::collection::vec(arb_addr(), 1..=MAX_TICKET_ADDRS)) {
            let node = NodeAddr::new(SecretKey::from_seed(seed).node_id(), addrs);
            let ticket = Ticket::new(node).unwrap();
            prop_assert_eq!(Ticket::from_bytes(&ticket.to_bytes()).unwrap(), ticket.clone());
            prop_assert_eq!(ticket.to_string().parse::<Ticket>().unwrap(), ticket);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Ticket::from_bytes(&bytes);
        }
    }
}
