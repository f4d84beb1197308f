//! Weighted rendezvous ranking: both ends pick the same brokers without talking.
//!
//! For a destination topic `t` and a broker with id `b` and integer weight `w`:
//!
//! ```text
//! score(b) = max over i in 0..w of  u64_be(BLAKE3(RANK_DOMAIN ‖ t ‖ len(b) ‖ b ‖ u32_be(i))[0..8])
//! ```
//!
//! Brokers rank by score, highest first, ties broken by id. A broker with weight `w` holds `w`
//! lottery tickets, so it comes first with probability proportional to `w`. Only integers and
//! BLAKE3 are involved: the ranking is bit-identical on every host (sidewire's
//! `-log(H)/weight` depends on the platform's floating point). Families rank separately.

use std::fmt;

use crate::signal::SignalTopic;

/// Domain tag of the rank hash.
const RANK_DOMAIN: &[u8] = b"keywire mqtt broker rank v1";
/// Largest weight honoured; larger weights are clamped (each unit costs one hash per ranking).
pub const MAX_WEIGHT: u32 = 64;

/// IPv4 or IPv6: brokers are ranked and picked per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressFamily {
    /// Reached over IPv4.
    V4,
    /// Reached over IPv6.
    V6,
}

/// A broker's identity: its canonical `host:port` (host lowercased, no trailing dot, IPv6
/// literals in brackets). Two pool entries with the same id are the same broker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrokerId(String);

impl BrokerId {
    /// The canonical id of `host` and `port`.
    pub fn new(host: &str, port: u16) -> Self {
        let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.contains(':') {
            Self(format!("[{host}]:{port}"))
        } else {
            Self(format!("{host}:{port}"))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BrokerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One broker of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerSpec {
    /// Host name or IP literal.
    pub host: String,
    /// TCP port (1883 for plain MQTT).
    pub port: u16,
    /// The family it is reached over.
    pub family: AddressFamily,
    /// Relative share of destinations, 0 (never picked) to [`MAX_WEIGHT`].
    pub weight: u32,
}

impl BrokerSpec {
    /// A broker of weight 1.
    pub fn new(host: impl Into<String>, port: u16, family: AddressFamily) -> Self {
        Self {
            host: host.into(),
            port,
            family,
            weight: 1,
        }
    }

    /// Its canonical identity.
    pub fn id(&self) -> BrokerId {
        BrokerId::new(&self.host, self.port)
    }
}

/// The score of one broker for one topic.
pub fn score(topic: &SignalTopic, broker: &BrokerId, weight: u32) -> u64 {
    let id = broker.as_str().as_bytes();
    (0..weight.min(MAX_WEIGHT))
        .map(|i| {
            let mut h = blake3::Hasher::new();
            h.update(RANK_DOMAIN);
            h.update(topic.as_bytes());
            // The id is length-prefixed so that no id/counter pair aliases another.
            h.update(&(id.len() as u32).to_be_bytes());
            h.update(id);
            h.update(&i.to_be_bytes());
            let mut first = [0u8; 8];
            first.copy_from_slice(&h.finalize().as_bytes()[..8]);
            u64::from_be_bytes(first)
        })
        .max()
        .unwrap_or(0)
}

/// The brokers of `family` in `pool`, best first for `topic`. Weight-0 entries and repeated ids
/// are left out.
pub fn rank<'a>(
    pool: &'a [BrokerSpec],
    topic: &SignalTopic,
    family: AddressFamily,
) -> Vec<&'a BrokerSpec> {
    let mut scored: Vec<(u64, BrokerId, &BrokerSpec)> = Vec::new();
    for spec in pool.iter().filter(|b| b.family == family && b.weight > 0) {
        let id = spec.id();
        if scored.iter().any(|(_, seen, _)| *seen == id) {
            continue;
        }
        scored.push((score(topic, &id, spec.weight), id, spec));
    }
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, _, spec)| spec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NetworkId, SecretKey};

    fn topic(seed: u8) -> SignalTopic {
        let node = SecretKey::from_seed([seed; 32]).node_id();
        SignalTopic::new(&NetworkId::from_name("fixture"), &node)
    }

    fn pool(n: u16) -> Vec<BrokerSpec> {
        (0..n)
            .map(|i| BrokerSpec::new("127.0.0.1", 1883 + i, AddressFamily::V4))
            .collect()
    }

    #[test]
    fn canonical_ids() {
        assert_eq!(
            BrokerId::new("Broker.Example.COM.", 1883).as_str(),
            "broker.example.com:1883"
        );
        assert_eq!(BrokerId::new("::1", 1883).as_str(), "[::1]:1883");
        assert_eq!(BrokerId::new("[::1]", 1883).as_str(), "[::1]:1883");
    }

    #[test]
    fn fixture_score_is_pinned() {
        // Pinned: every host must compute exactly this, or peers pick different brokers.
        let s = score(&topic(7), &BrokerId::new("127.0.0.1", 1883), 1);
        assert_eq!(s, FIXTURE_SCORE);
        let order: Vec<u16> = rank(&pool(5), &topic(7), AddressFamily::V4)
            .iter()
            .map(|b| b.port)
            .collect();
        assert_eq!(order, FIXTURE_ORDER);
    }

    const FIXTURE_SCORE: u64 = 4_803_009_017_693_008_051;
    const FIXTURE_ORDER: [u16; 5] = [1886, 1885, 1884, 1883, 1887];

    #[test]
    fn order_does_not_depend_on_pool_order_and_families_split() {
        let mut p = pool(8);
        p.push(BrokerSpec::new("::1", 1883, AddressFamily::V6));
        let a: Vec<BrokerId> = rank(&p, &topic(1), AddressFamily::V4)
            .iter()
            .map(|b| b.id())
            .collect();
        p.reverse();
        let b: Vec<BrokerId> = rank(&p, &topic(1), AddressFamily::V4)
            .iter()
            .map(|b| b.id())
            .collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 8);
        assert_eq!(rank(&p, &topic(1), AddressFamily::V6).len(), 1);
    }

    #[test]
    fn weights_pull_share() {
        let mut p = pool(2);
        p[0].weight = 3;
        let firsts = (0..=255u8)
            .filter(|s| rank(&p, &topic(*s), AddressFamily::V4)[0].port == 1883)
            .count();
        // Expected share 3/4 of 256 = 192; allow sampling noise.
        assert!((165..=220).contains(&firsts), "{firsts}");
        p[1].weight = 0;
        assert_eq!(rank(&p, &topic(1), AddressFamily::V4).len(), 1);
    }

    #[test]
    fn removing_a_broker_keeps_the_others_in_order() {
        let p = pool(6);
        for seed in 0..32u8 {
            let full: Vec<BrokerId> = rank(&p, &topic(seed), AddressFamily::V4)
                .iter()
                .map(|b| b.id())
                .collect();
            let gone = full[0].clone();
            let fewer: Vec<BrokerSpec> = p.iter().filter(|b| b.id() != gone).cloned().collect();
            let rest: Vec<BrokerId> = rank(&fewer, &topic(seed), AddressFamily::V4)
                .iter()
                .map(|b| b.id())
                .collect();
            assert_eq!(rest, full[1..]);
        }
    }
}
