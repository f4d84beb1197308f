use std::time::Duration;

use super::*;
use crate::signal::MessageType;
use crate::SecretKey;

const T0: u64 = 1_700_000_000_000;

fn env(source: u8, queue: u64, sequence: u64, ts: u64) -> Envelope {
    Envelope {
        kind: MessageType::Data,
        source: SecretKey::from_seed([source; 32]).node_id(),
        destination: SecretKey::from_seed([99; 32]).node_id(),
        queue: QueueId(queue),
        sequence,
        timestamp: UnixMillis(ts),
        payload: Vec::new(),
    }
}

fn guard() -> ReplayGuard {
    ReplayGuard::new(ReplayConfig::default(), UnixMillis(T0))
}

#[test]
fn duplicates_and_reordering() {
    let mut g = guard();
    let now = UnixMillis(T0 + 10);
    assert_eq!(g.check(&env(1, 7, 5, T0), now), Ok(()));
    assert_eq!(g.check(&env(1, 7, 5, T0), now), Err(RejectReason::Replay));
    // Out of order but inside the window: fine once.
    assert_eq!(g.check(&env(1, 7, 3, T0), now), Ok(()));
    assert_eq!(g.check(&env(1, 7, 3, T0), now), Err(RejectReason::Replay));
    // Another queue or source is independent.
    assert_eq!(g.check(&env(1, 8, 5, T0), now), Ok(()));
    assert_eq!(g.check(&env(2, 7, 5, T0), now), Ok(()));
    // Far ahead; then behind the 128-wide window the seen cache decides: new ids pass once,
    // and ids seen long ago (5, 3) are still refused.
    assert_eq!(g.check(&env(1, 7, 1000, T0), now), Ok(()));
    assert_eq!(g.check(&env(1, 7, 1000 - 127, T0), now), Ok(()));
    assert_eq!(
        g.check(&env(1, 7, 1000 - 127, T0), now),
        Err(RejectReason::Replay)
    );
    assert_eq!(g.check(&env(1, 7, 200, T0), now), Ok(()));
    assert_eq!(g.check(&env(1, 7, 200, T0), now), Err(RejectReason::Replay));
    assert_eq!(g.check(&env(1, 7, 5, T0), now), Err(RejectReason::Replay));
    assert_eq!(g.check(&env(1, 7, 3, T0), now), Err(RejectReason::Replay));
}

#[test]
fn timestamp_window_and_start_floor() {
    let mut g = guard();
    let now = UnixMillis(T0 + 200_000);
    // 120 s is the default window either way.
    assert_eq!(
        g.check(&env(1, 1, 1, T0 + 79_999), now),
        Err(RejectReason::Stale)
    );
    assert_eq!(g.check(&env(1, 1, 2, T0 + 80_000), now), Ok(()));
    assert_eq!(g.check(&env(1, 1, 3, T0 + 320_000), now), Ok(()));
    assert_eq!(
        g.check(&env(1, 1, 4, T0 + 320_001), now),
        Err(RejectReason::Stale)
    );
    // Before the guard's start: refused even when close to now (a restarted receiver).
    let mut fresh = ReplayGuard::new(ReplayConfig::default(), UnixMillis(T0 + 50_000));
    assert_eq!(
        fresh.check(&env(1, 1, 2, T0 + 49_999), UnixMillis(T0 + 50_001)),
        Err(RejectReason::Stale)
    );
}

#[test]
fn seen_cache_is_bounded_fails_closed_and_expires() {
    let config = ReplayConfig {
        window: Duration::from_secs(10),
        max_queues: 2,
        max_seen: 3,
    };
    let mut g = ReplayGuard::new(config, UnixMillis(T0));
    let now = UnixMillis(T0);
    for q in 0..3 {
        assert_eq!(g.check(&env(1, q, 1, T0), now), Ok(()));
    }
    // The queue table is capped (it forgot one) but the seen cache still refuses the replay.
    assert_eq!(g.queues_len(), 2);
    assert_eq!(g.check(&env(1, 0, 1, T0), now), Err(RejectReason::Replay));
    assert_eq!(
        g.check(&env(1, 9, 1, T0), now),
        Err(RejectReason::CacheFull)
    );
    // Once the stamps leave the window, the ids are purged and room returns.
    let later = UnixMillis(T0 + 10_001);
    assert_eq!(g.check(&env(1, 9, 1, T0 + 10_001), later), Ok(()));
    assert_eq!(g.seen_len(), 1);
    // And the purged ones can no longer pass the timestamp check.
    assert_eq!(g.check(&env(1, 0, 1, T0), later), Err(RejectReason::Stale));
}
