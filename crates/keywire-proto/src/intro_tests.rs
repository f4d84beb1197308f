use super::*;
use crate::SecretKey;

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
