use super::*;
use crate::SecretKey;
use rand_chacha::rand_core::SeedableRng;

fn key(seed: u8) -> NodeId {
    SecretKey::from_seed([seed; 32]).node_id()
}

fn request() -> Introduction {
    Introduction {
        kind: IntroKind::Request,
        to: key(2),
        time_ms: 1_000_000,
        nonce: [7; 16],
        candidates: vec![
            "192.0.2.1:4433".parse().unwrap(),
            "[2001:db8::1]:9".parse().unwrap(),
        ],
    }
}

#[test]
fn round_trip_and_fixture() {
    let intro = request();
    let bytes = intro.encode();
    // version, kind, key, time, nonce, count, two addresses.
    assert_eq!(bytes.len(), 1 + 1 + 32 + 8 + 16 + 1 + 7 + 19);
    assert_eq!(&bytes[..2], &[1, 1]);
    assert_eq!(&bytes[34..42], &1_000_000u64.to_be_bytes());
    assert_eq!(bytes[58], 2);
    assert_eq!(&bytes[59..66], &[4, 192, 0, 2, 1, 0x11, 0x51]);
    assert_eq!(Introduction::decode(&bytes), Ok(intro));
}

#[test]
fn malformed_is_refused_without_panicking() {
    let bytes = request().encode();
    for len in 0..bytes.len() {
        assert!(Introduction::decode(&bytes[..len]).is_err(), "prefix {len}");
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        Introduction::decode(&trailing),
        Err(IntroError::Malformed("trailing bytes"))
    );
    let mut version = bytes.clone();
    version[0] = 2;
    assert!(Introduction::decode(&version).is_err());
    let mut kind = bytes.clone();
    kind[1] = 3;
    assert!(Introduction::decode(&kind).is_err());
    let mut count = bytes.clone();
    count[58] = 9;
    assert_eq!(
        Introduction::decode(&count),
        Err(IntroError::Malformed("too many candidates"))
    );
}

#[test]
fn unusable_candidates_are_refused() {
    for bad in [
        "0.0.0.0:1",
        "192.0.2.1:0",
        "224.0.0.1:5",
        "255.255.255.255:5",
        "[::]:5",
        "[ff02::1]:5",
    ] {
        let mut intro = request();
        intro.candidates = vec![bad.parse().unwrap()];
        assert!(Introduction::decode(&intro.encode()).is_err(), "{bad}");
    }
}

#[test]
fn encode_caps_candidates() {
    let mut intro = request();
    intro.candidates = (1..20)
        .map(|p| SocketAddr::from(([192, 0, 2, 1], p)))
        .collect();
    let decoded = Introduction::decode(&intro.encode()).unwrap();
    assert_eq!(decoded.candidates.len(), MAX_INTRO_CANDIDATES);
}

#[test]
fn guard_checks_destination_time_and_replay() {
    let me = key(2);
    let from = key(1);
    let mut guard = IntroGuard::new(4);
    let intro = request();
    assert_eq!(
        guard.accept(&from, &intro, &key(3), 1_000_000),
        Err(IntroError::WrongDestination)
    );
    assert_eq!(
        guard.accept(&from, &intro, &me, 1_000_000 + INTRO_WINDOW_MS + 1),
        Err(IntroError::Stale(INTRO_WINDOW_MS + 1))
    );
    assert_eq!(guard.accept(&from, &intro, &me, 1_000_500), Ok(()));
    assert_eq!(
        guard.accept(&from, &intro, &me, 1_000_600),
        Err(IntroError::Replayed)
    );
    // The same nonce from someone else is another introduction.
    assert_eq!(guard.accept(&key(4), &intro, &me, 1_000_600), Ok(()));
    // Bounded: four more push the first out; it is then refused only by its time.
    for n in 0..4u8 {
        let mut other = request();
        other.nonce = [n; 16];
        guard.accept(&from, &other, &me, 1_000_700).unwrap();
    }
    assert_eq!(guard.seen.len(), 4);
}

#[test]
fn nudges_round_trip_and_refuse_other_packets() {
    let packet = encode_nudge(&[9; 16]);
    assert_eq!(packet[0], 0x21);
    assert_eq!(decode_nudge(&packet), Some([9; 16]));
    assert_eq!(decode_nudge(&packet[..17]), None);
    let mut wrong = packet;
    wrong[0] = 0x20;
    assert_eq!(decode_nudge(&wrong), None);
    wrong = packet;
    wrong[1] = 2;
    assert_eq!(decode_nudge(&wrong), None);
}

#[test]
fn topics_differ_per_node() {
    assert_ne!(intro_topic(&key(1)), intro_topic(&key(2)));
    assert_eq!(intro_topic(&key(1)), intro_topic(&key(1)));
}

#[test]
fn sealed_introductions_open_only_for_the_destination_from_their_publisher() {
    let (me, dialer) = (SecretKey::from_seed([2; 32]), SecretKey::from_seed([1; 32]));
    let intro = request();
    assert_eq!(intro.to, me.node_id());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let sealed = seal_intro(&intro, &dialer.node_id(), &mut rng).unwrap();
    // Nothing of the introduction shows: not its nonce, not an address.
    assert!(!sealed.windows(16).any(|w| w == intro.nonce));
    assert!(!sealed.windows(4).any(|w| w == [192, 0, 2, 1]));
    let opener = crate::signal::Opener::new(&me);
    assert_eq!(
        open_intro(&opener, &sealed, &dialer.node_id()),
        Ok(intro.clone())
    );
    // Re-published by someone else: refused.
    assert!(open_intro(&opener, &sealed, &key(9)).is_err());
    // Another node cannot open it.
    let other = crate::signal::Opener::new(&SecretKey::from_seed([3; 32]));
    assert!(open_intro(&other, &sealed, &dialer.node_id()).is_err());
    // An MQTT-style sealed box of other bytes is not an introduction.
    let raw = crate::signal::seal_raw(&intro.encode(), &me.node_id(), &mut rng).unwrap();
    assert!(open_intro(&opener, &raw, &dialer.node_id()).is_err());
    for len in 0..sealed.len() {
        assert!(open_intro(&opener, &sealed[..len], &dialer.node_id()).is_err());
    }
}

#[test]
fn nudges_carry_a_hash_of_the_nonce() {
    let nonce = [7u8; 16];
    let token = nudge_token(&nonce);
    assert_ne!(token, nonce);
    assert_eq!(token, nudge_token(&nonce));
    assert_ne!(token, nudge_token(&[8; 16]));
    assert_eq!(decode_nudge(&encode_nudge(&token)), Some(token));
}
