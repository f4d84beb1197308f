//! The MQTT topic a node listens on, and the key that ranks brokers for it.
//!
//! `hash = BLAKE3(TOPIC_DOMAIN ‖ network id ‖ destination key)`; the topic is
//! `kw1/` followed by the first 20 bytes of the hash in lowercase hex (44 characters). Brokers see
//! the topic; anyone who knows both the network id and a node's key can compute it, so on the
//! public network a broker can tell that two topics belong to keys it already knows, but it
//! cannot derive a key from a topic.

use crate::{NetworkId, NodeId};

/// Domain tag of the topic hash.
const TOPIC_DOMAIN: &[u8] = b"keywire mqtt signal topic v1";
/// Prefix of every signalling topic (the `1` is the topic-scheme version).
pub const TOPIC_PREFIX: &str = "kw1/";
/// Hash bytes shown in the topic: 160 bits keep topics apart with margin and stay short.
const TOPIC_HASH_BYTES: usize = 20;

/// A destination's topic hash: names its MQTT topic and keys its rendezvous ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignalTopic([u8; 32]);

impl SignalTopic {
    /// The topic of `destination` within `network`.
    pub fn new(network: &NetworkId, destination: &NodeId) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(TOPIC_DOMAIN);
        h.update(network.as_bytes());
        h.update(destination.as_bytes());
        Self(*h.finalize().as_bytes())
    }

    /// The full 32-byte hash, the rendezvous key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The MQTT topic string.
    pub fn mqtt_topic(&self) -> String {
        let mut out = String::with_capacity(TOPIC_PREFIX.len() + 2 * TOPIC_HASH_BYTES);
        out.push_str(TOPIC_PREFIX);
        for b in &self.0[..TOPIC_HASH_BYTES] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;

    #[test]
    fn fixture_and_separation() {
        let node = SecretKey::from_seed([7; 32]).node_id();
        let topic = SignalTopic::new(&NetworkId::from_name("fixture"), &node);
        let text = topic.mqtt_topic();
        assert_eq!(text.len(), 44);
        assert!(text.starts_with("kw1/"));
        // Pinned so that builds agree on where a node listens; checked against Python's
        // `blake3` and `cryptography` (ed25519) packages.
        assert_eq!(text, "kw1/d2e0a168378851383fa2fcd2fe76663f43d5c9a9");
        let other_net = SignalTopic::new(&NetworkId::from_name("other"), &node);
        assert_ne!(other_net, topic);
        let other_node = SignalTopic::new(
            &NetworkId::from_name("fixture"),
            &SecretKey::from_seed([8; 32]).node_id(),
        );
        assert_ne!(other_node, topic);
    }
}
