use super::*;
use crate::identity::SecretKey;
use crate::kad::Timestamp;
use proptest::prelude::*;

fn sender() -> NodeId {
    SecretKey::from_seed([5; 32]).node_id()
}

#[test]
fn ping_fixture() {
    let rpc = Rpc {
        txid: 0x0102030405060708,
        sender: sender(),
        sender_is_server: true,
        cookie: None,
        message: Message::Ping,
        padding: 0,
    };
    let bytes = rpc.encode().unwrap();
    assert_eq!(&bytes[..11], &[1, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0x01]);
    assert_eq!(&bytes[11..43], sender().as_bytes());
    assert_eq!(bytes.len(), HEADER_LEN);
    assert_eq!(Rpc::decode(&bytes).unwrap(), rpc);
}

#[test]
fn pong_fixture_with_cookie_and_padding() {
    let rpc = Rpc {
        txid: 9,
        sender: sender(),
        sender_is_server: false,
        cookie: Some([0xAA; 8]),
        message: Message::Pong {
            observed: "192.0.2.1:4433".parse().unwrap(),
        },
        padding: 3,
    };
    let bytes = rpc.encode().unwrap();
    assert_eq!(&bytes[..2], &[1, 0x81]);
    assert_eq!(bytes[10], 0x02);
    assert_eq!(&bytes[43..51], &[0xAA; 8]);
    assert_eq!(&bytes[51..], &[4, 192, 0, 2, 1, 0x11, 0x51, 0, 0, 0]);
    assert_eq!(Rpc::decode(&bytes).unwrap(), rpc);
}

#[test]
fn refusals() {
    let mut bytes = Rpc {
        txid: 1,
        sender: sender(),
        sender_is_server: false,
        cookie: None,
        message: Message::Ping,
        padding: 0,
    }
    .encode()
    .unwrap();
    let mut v2 = bytes.clone();
    v2[0] = 2;
    assert_eq!(Rpc::decode(&v2), Err(WireError::UnsupportedVersion(2)));
    let mut t = bytes.clone();
    t[1] = 0x55;
    assert_eq!(Rpc::decode(&t), Err(WireError::UnknownType(0x55)));
    let mut f = bytes.clone();
    f[10] = 0x80;
    assert_eq!(Rpc::decode(&f), Err(WireError::Invalid("flags")));
    bytes.push(1);
    assert_eq!(Rpc::decode(&bytes), Err(WireError::TrailingBytes));
    assert_eq!(
        Rpc::decode(&vec![0; MAX_RPC_LEN + 1]),
        Err(WireError::TooLarge(MAX_RPC_LEN + 1))
    );
    assert!(matches!(Rpc::decode(&[1, 1]), Err(WireError::Truncated)));
}

fn key(seed: u8) -> SecretKey {
    SecretKey::from_seed([seed; 32])
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), 1u16..).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), 1u16..).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    ]
    .prop_filter("wire address", |a| {
        crate::kad::wire::is_wire_addr(a) && crate::ticket::canonical_addr(*a) == *a
    })
}

fn arb_contacts() -> impl Strategy<Value = Vec<Contact>> {
    proptest::collection::vec((any::<u8>(), arb_addr()), 0..=MAX_REPLY_CONTACTS).prop_map(|v| {
        v.into_iter()
            .map(|(s, a)| Contact::new(key(s).node_id(), a))
            .collect()
    })
}

fn arb_record() -> impl Strategy<Value = AddressRecord> {
    (
        any::<u8>(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(arb_addr(), 0..=3),
    )
        .prop_map(|(s, seq, exp, addrs)| {
            AddressRecord::sign(
                &key(s),
                seq,
                Timestamp::from_unix_millis(exp),
                addrs,
                vec![],
            )
            .unwrap()
        })
}

fn arb_publication() -> impl Strategy<Value = Publication> {
    (
        any::<u8>(),
        any::<[u8; 32]>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(s, topic, seq, payload)| {
            Publication::sign(
                &key(s),
                topic,
                seq,
                Timestamp::from_unix_millis(seq),
                payload,
            )
            .unwrap()
        })
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::Ping),
        any::<[u8; 32]>().prop_map(|target| Message::FindNode { target }),
        any::<u8>().prop_map(|s| Message::FindRecord {
            key: key(s).node_id()
        }),
        arb_record().prop_map(Message::Store),
        (any::<[u8; 32]>(), any::<u16>())
            .prop_map(|(topic, ttl_secs)| Message::Subscribe { topic, ttl_secs }),
        arb_publication().prop_map(Message::Publish),
        (arb_addr(), arb_publication()).prop_map(|(observed, publication)| Message::Deliver {
            observed,
            publication
        }),
        Just(Message::ReachRequest),
        arb_addr().prop_map(|target| Message::ReachRelay { target }),
        Just(Message::ReachProof),
        arb_addr().prop_map(|observed| Message::Pong { observed }),
        arb_contacts().prop_map(Message::Nodes),
        (proptest::option::of(arb_record()), arb_contacts())
            .prop_map(|(record, closer)| Message::RecordReply { record, closer }),
        any::<bool>().prop_map(|accepted| Message::Stored { accepted }),
        any::<u16>().prop_map(|ttl_secs| Message::Subscribed { ttl_secs }),
        any::<u8>().prop_map(|forwarded| Message::Published { forwarded }),
    ]
}

proptest! {
    #[test]
    fn round_trip(message in arb_message(), txid in any::<u64>(), server in any::<bool>(),
                  cookie in proptest::option::of(any::<[u8; 8]>()), padding in 0usize..64) {
        let rpc = Rpc { txid, sender: sender(), sender_is_server: server, cookie, message, padding };
        if let Ok(bytes) = rpc.encode() {
            prop_assert_eq!(Rpc::decode(&bytes).unwrap(), rpc);
        }
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
        let _ = Rpc::decode(&bytes);
    }

    #[test]
    fn mutated_valid_messages_never_panic(message in arb_message(), flip in any::<(usize, u8)>()) {
        let rpc = Rpc { txid: 1, sender: sender(), sender_is_server: true, cookie: None, message, padding: 0 };
        if let Ok(mut bytes) = rpc.encode() {
            let i = flip.0 % bytes.len();
            bytes[i] ^= flip.1;
            let _ = Rpc::decode(&bytes);
            bytes.truncate(i);
            let _ = Rpc::decode(&bytes);
        }
    }
}
