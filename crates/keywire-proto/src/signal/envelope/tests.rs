use proptest::prelude::*;

use super::*;
use crate::signal::{open, seal, seal_raw, MAX_SEALED};

/// An RNG that always yields the same byte: makes sealed fixtures reproducible.
struct FixedRng(u8);

impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes([self.0; 4])
    }
    fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes([self.0; 8])
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(self.0);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        dest.fill(self.0);
        Ok(())
    }
}
impl rand_core::CryptoRng for FixedRng {}

fn keys() -> (SecretKey, SecretKey) {
    (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]))
}

fn sample() -> Envelope {
    let (a, b) = keys();
    Envelope {
        kind: MessageType::Data,
        source: a.node_id(),
        destination: b.node_id(),
        queue: QueueId(0x0102_0304_0506_0708),
        sequence: 1,
        timestamp: UnixMillis(1_700_000_000_000),
        payload: b"hi".to_vec(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn inner_fixture() {
    let (a, _) = keys();
    let inner = sample().encode_signed(&a).unwrap();
    assert_eq!(inner.len(), INNER_OVERHEAD + 2);
    // version 1, type data, then the source key.
    assert_eq!(hex(&inner[..2]), "0100");
    assert_eq!(&inner[2..34], a.node_id().as_bytes());
    // queue, sequence, timestamp (ms), payload length, payload.
    assert_eq!(
        hex(&inner[66..94]),
        "0102030405060708\
         0000000000000001\
         0000018bcfe56800\
         0002\
         6869"
    );
    assert_eq!(hex(&inner), INNER_FIXTURE);
}

/// Pinned: ed25519 signatures are deterministic, so this never changes unless the layout does.
const INNER_FIXTURE: &str = concat!(
    "01008a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f",
    "6f5c8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9",
    "b394010203040506070800000000000000010000018bcfe56800000268697e0b",
    "30bb22edd8758fa1552e4dd27d675b96fba529fd0344dd43ccf3ae17d56c3878",
    "dc5b98ed2fd7dda5250dbaac4f36222dbddc39d2ce2dfca5fe406a99b50f",
);

#[test]
fn sealed_fixture_opens() {
    let (a, b) = keys();
    let sealed = seal(&a, &sample(), &mut FixedRng(9)).unwrap();
    assert_eq!(sealed.len(), 1 + 32 + INNER_OVERHEAD + 2 + 16);
    assert_eq!(hex(&sealed), SEALED_FIXTURE);
    assert_eq!(open(&b, &sealed).unwrap(), sample());
}

/// Pinned with a fixed ephemeral seed (0x09 × 32).
const SEALED_FIXTURE: &str = concat!(
    "0157db4b359f23ae5e146e4e2512056704722506348c150c14753d0c933d04d4",
    "217705654003b815c1a7408fd6e1695848fa388452c0214ac30824d81ea899c2",
    "87e939402f60cc3503ff89cd78135f6a13f4cc3150ad951e80b5dfe02058a029",
    "e44d6af942b1080615b7319249e23034556d9986a4dbe7fdf3159d4befdf8183",
    "dbbd2f3c76bffc3790f86ee1eeb2c36ab4c24f9d8be86a24486e458d61a00367",
    "37ff9b2ca87d7207557340200f763dc4e0e8b26cd189423f316123ef25382d02",
    "0c587cea38f4a3e53420b00a782085",
);

#[test]
fn refusals() {
    let (a, b) = keys();
    let c = SecretKey::from_seed([3; 32]);
    let sealed = seal(&a, &sample(), &mut FixedRng(9)).unwrap();
    // Only the destination can open it.
    assert_eq!(
        open(&c, &sealed),
        Err(OpenError::Malformed("decryption failed"))
    );
    // Any flipped bit fails the AEAD.
    let mut flipped = sealed.clone();
    flipped[40] ^= 1;
    assert!(matches!(open(&b, &flipped), Err(OpenError::Malformed(_))));
    // B re-seals A's signed envelope to C: C sees it is not addressed to it.
    let inner = sample().encode_signed(&a).unwrap();
    let resealed = seal_raw(&inner, &c.node_id(), &mut FixedRng(4)).unwrap();
    assert_eq!(open(&c, &resealed), Err(OpenError::WrongDestination));
    // A payload changed after signing.
    let mut forged = inner.clone();
    forged[HEADER_LEN] ^= 1;
    let forged = seal_raw(&forged, &b.node_id(), &mut FixedRng(4)).unwrap();
    assert_eq!(open(&b, &forged), Err(OpenError::BadSignature));
    // Signed by someone other than the claimed source.
    let mut claimed = sample();
    claimed.source = c.node_id();
    let mut body = claimed.encode_signed(&c).unwrap();
    body[2..34].copy_from_slice(a.node_id().as_bytes());
    let impostor = seal_raw(&body, &b.node_id(), &mut FixedRng(4)).unwrap();
    assert_eq!(open(&b, &impostor), Err(OpenError::BadSignature));
    // Size is checked before anything else.
    assert_eq!(
        open(&b, &vec![1u8; MAX_SEALED + 1]),
        Err(OpenError::Oversized(MAX_SEALED + 1))
    );
    assert!(matches!(open(&b, &[1u8; 10]), Err(OpenError::Malformed(_))));
    // Local misuse: wrong key, payload too large.
    assert!(matches!(
        seal(&c, &sample(), &mut FixedRng(1)),
        Err(SealError::WrongKey)
    ));
    let mut big = sample();
    big.payload = vec![0; MAX_PAYLOAD + 1];
    assert!(matches!(
        seal(&a, &big, &mut FixedRng(1)),
        Err(SealError::PayloadTooLarge(_))
    ));
}

#[test]
fn ack_body_fixture() {
    let body = AckBody {
        queue: QueueId(1),
        sequence: 2,
    };
    assert_eq!(hex(&body.encode()), "00000000000000010000000000000002");
    assert_eq!(AckBody::decode(&body.encode()), Some(body));
    assert_eq!(AckBody::decode(&[0; 15]), None);
}

use crate::signal::SealError;

fn kind() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        Just(MessageType::Data),
        Just(MessageType::Ack),
        Just(MessageType::Control)
    ]
}

proptest! {
    #[test]
    fn round_trip(
        kind in kind(),
        src in any::<[u8; 32]>(),
        dst in any::<[u8; 32]>(),
        queue in any::<u64>(),
        sequence in any::<u64>(),
        ts in any::<u64>(),
        payload in proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD),
    ) {
        let a = SecretKey::from_seed(src);
        let b = SecretKey::from_seed(dst);
        let m = Envelope {
            kind,
            source: a.node_id(),
            destination: b.node_id(),
            queue: QueueId(queue),
            sequence,
            timestamp: UnixMillis(ts),
            payload,
        };
        let inner = m.encode_signed(&a).unwrap();
        prop_assert_eq!(Envelope::decode_verified(&inner, &b.node_id()).unwrap(), m.clone());
        let sealed = seal(&a, &m, &mut rand::rngs::OsRng).unwrap();
        prop_assert_eq!(open(&b, &sealed).unwrap(), m);
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let b = SecretKey::from_seed([2; 32]);
        let _ = Envelope::decode_unverified(&bytes);
        let _ = Envelope::decode_verified(&bytes, &b.node_id());
        let _ = open(&b, &bytes);
        let _ = AckBody::decode(&bytes);
    }

    #[test]
    fn truncations_are_refused(cut in 0usize..(INNER_OVERHEAD + 2)) {
        let (a, b) = keys();
        let inner = sample().encode_signed(&a).unwrap();
        prop_assert!(Envelope::decode_verified(&inner[..cut], &b.node_id()).is_err());
    }
}
