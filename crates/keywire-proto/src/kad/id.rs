//! Overlay ids and XOR distance.
//!
//! A node's overlay id is `BLAKE3("keywire kad id v1" ‖ node key)`, not the key itself:
//! ed25519 keys are not uniformly distributed bytes (the top bit of the last byte is the sign
//! of x), while Kademlia's balance assumes uniform ids. A record about key K is stored at the
//! nodes closest to K's overlay id.

use std::fmt;

use crate::identity::NodeId;

const ID_DOMAIN: &[u8] = b"keywire kad id v1";

/// A 256-bit position in the overlay.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KadId(pub [u8; 32]);

/// XOR distance between two overlay ids; compares as a big-endian integer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Distance(pub [u8; 32]);

impl KadId {
    /// The overlay id of a node key (and the place its address record lives).
    pub fn of_node(node: &NodeId) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(ID_DOMAIN);
        hasher.update(node.as_bytes());
        Self(*hasher.finalize().as_bytes())
    }

    /// XOR distance to `other`.
    pub fn distance(&self, other: &KadId) -> Distance {
        let mut d = [0u8; 32];
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// A random id at the given bucket index from `self` (its first `index` bits agree with
    /// `self`, bit `index` differs): the target of a bucket refresh.
    pub fn random_in_bucket(&self, index: usize, random: [u8; 32]) -> KadId {
        let index = index.min(255);
        let mut out = random;
        for bit in 0..=index {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            let own = self.0[byte] & mask;
            let flipped = if bit == index { own ^ mask } else { own };
            out[byte] = (out[byte] & !mask) | flipped;
        }
        KadId(out)
    }
}

impl Distance {
    /// Number of leading zero bits: the bucket index (0 = the farther half of the space).
    /// `None` for distance zero (the id itself).
    pub fn bucket_index(&self) -> Option<usize> {
        let mut zeros = 0usize;
        for byte in self.0 {
            if byte == 0 {
                zeros += 8;
            } else {
                return Some(zeros + byte.leading_zeros() as usize);
            }
        }
        None
    }
}

impl fmt::Debug for KadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KadId(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;
    use proptest::prelude::*;

    #[test]
    fn distance_and_bucket_index() {
        let a = KadId([0; 32]);
        let mut b = [0u8; 32];
        b[0] = 0x80;
        assert_eq!(a.distance(&KadId(b)).bucket_index(), Some(0));
        b = [0; 32];
        b[31] = 1;
        assert_eq!(a.distance(&KadId(b)).bucket_index(), Some(255));
        assert_eq!(a.distance(&a).bucket_index(), None);
    }

    #[test]
    fn derived_ids_differ_from_keys() {
        let node = SecretKey::from_seed([1; 32]).node_id();
        assert_ne!(KadId::of_node(&node).0, *node.as_bytes());
        assert_eq!(KadId::of_node(&node), KadId::of_node(&node));
    }

    proptest! {
        #[test]
        fn random_in_bucket_lands_in_that_bucket(own in any::<[u8; 32]>(), r in any::<[u8; 32]>(), index in 0usize..256) {
            let own = KadId(own);
            let id = own.random_in_bucket(index, r);
            prop_assert_eq!(own.distance(&id).bucket_index(), Some(index));
        }

        #[test]
        fn xor_is_symmetric(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            prop_assert_eq!(KadId(a).distance(&KadId(b)), KadId(b).distance(&KadId(a)));
        }
    }
}
