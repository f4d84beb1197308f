//! What kind of NAT a node sits behind, from the addresses observers report (sans-IO).
//!
//! A gate reports the source address it saw on two ports: its main port (at registration) and
//! its observation port. The same mapped address on both means the NAT maps endpoint-
//! independently (one mapping for every destination: the easy case for hole punching); two
//! different ones, endpoint-dependently (a new mapping per destination: the hard case). An
//! observed address that is one of the node's own means no NAT at all.

use std::net::SocketAddr;

use crate::ticket::canonical_addr;

/// How the NAT maps one local address to outside addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mapping {
    /// No NAT: observers see one of the node's own addresses.
    None,
    /// Every destination sees the same outside address.
    EndpointIndependent,
    /// Destinations see different outside addresses.
    EndpointDependent,
    /// Not enough observations to tell.
    Unknown,
}

impl Mapping {
    /// A short name for reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::EndpointIndependent => "endpoint-independent",
            Self::EndpointDependent => "endpoint-dependent",
            Self::Unknown => "unknown",
        }
    }
}

/// What the observations say about this node's NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatReport {
    /// The mapping behaviour.
    pub mapping: Mapping,
    /// Whether the outside port equals the local one (with a NAT; `false` without one).
    pub port_preserving: bool,
    /// The outside address the first observer saw.
    pub observed: Option<SocketAddr>,
    /// How many observers answered (0 to 2).
    pub observers: u8,
}

/// Classifies from the node's `local` addresses (bound or per interface) and what two
/// different observer endpoints saw (`None`: that observer did not answer).
pub fn classify(
    local: &[SocketAddr],
    first: Option<SocketAddr>,
    second: Option<SocketAddr>,
) -> NatReport {
    let first = first.map(canonical_addr);
    let second = second.map(canonical_addr);
    let observers = u8::from(first.is_some()) + u8::from(second.is_some());
    let Some(seen) = first.or(second) else {
        return NatReport {
            mapping: Mapping::Unknown,
            port_preserving: false,
            observed: None,
            observers,
        };
    };
    if local.iter().any(|l| canonical_addr(*l) == seen) {
        return NatReport {
            mapping: Mapping::None,
            port_preserving: false,
            observed: Some(seen),
            observers,
        };
    }
    let mapping = match (first, second) {
        (Some(a), Some(b)) if a == b => Mapping::EndpointIndependent,
        (Some(_), Some(_)) => Mapping::EndpointDependent,
        _ => Mapping::Unknown,
    };
    NatReport {
        mapping,
        port_preserving: local.iter().any(|l| l.port() == seen.port()),
        observed: Some(seen),
        observers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_case() {
        let local = [a("192.168.1.5:4000")];
        assert_eq!(classify(&local, None, None).mapping, Mapping::Unknown);
        let public = classify(&[a("203.0.113.1:4000")], Some(a("203.0.113.1:4000")), None);
        assert_eq!(public.mapping, Mapping::None);
        let eim = classify(
            &local,
            Some(a("198.51.100.9:4000")),
            Some(a("198.51.100.9:4000")),
        );
        assert_eq!(
            (eim.mapping, eim.port_preserving),
            (Mapping::EndpointIndependent, true)
        );
        let edm = classify(
            &local,
            Some(a("198.51.100.9:31000")),
            Some(a("198.51.100.9:31002")),
        );
        assert_eq!(
            (edm.mapping, edm.port_preserving),
            (Mapping::EndpointDependent, false)
        );
        let half = classify(&local, Some(a("198.51.100.9:31000")), None);
        assert_eq!(half.mapping, Mapping::Unknown);
        assert_eq!(half.observed, Some(a("198.51.100.9:31000")));
        assert_eq!((half.observers, eim.observers), (1, 2));
        // v4-mapped spellings are the same address.
        let mapped = classify(
            &local,
            Some(a("[::ffff:198.51.100.9]:4000")),
            Some(a("198.51.100.9:4000")),
        );
        assert_eq!(mapped.mapping, Mapping::EndpointIndependent);
    }
}
