//! Forged, replayed, misaddressed, stale, oversized and garbage envelopes published on a real
//! broker are refused, and each refusal is counted.

mod mosquitto;

use std::time::Duration;

use keywire::proto::signal::{seal, seal_raw, Envelope, MessageType, QueueId, MAX_SEALED};
use keywire::signal::{RateCap, SystemClock, WallClock};
use keywire::SecretKey;
use mosquitto::{bounded, eventually, node, test_config, topic_of, Pool, RawClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_envelopes_are_refused_and_counted() {
    let pool = Pool::start(1, 0);
    let port = pool.brokers[0].port;
    bounded(Duration::from_secs(30), async {
        let a_key = SecretKey::from_seed([31; 32]);
        let a = node(31, pool.config(), test_config());
        let b = node(32, pool.config(), test_config());
        let c = SecretKey::from_seed([33; 32]).node_id();
        assert_eq!(b.wait_subscribed(1, Duration::from_secs(5)).await, 1);
        let b_topic = topic_of(&b.node_id());
        let mut spy = RawClient::connect(port, &b_topic).await;

        // A genuine message, captured by the eavesdropper on its way.
        assert!(a.send(b.node_id(), b"genuine").await.unwrap().acked);
        assert_eq!(b.recv().await.unwrap().payload, b"genuine");
        let captured = spy.next().await;

        let now = SystemClock.now();
        let envelope = |timestamp, destination, payload: &[u8]| Envelope {
            kind: MessageType::Data,
            source: a_key.node_id(),
            destination,
            queue: QueueId(7),
            sequence: 1,
            timestamp,
            payload: payload.to_vec(),
        };
        let rng = &mut rand::rngs::OsRng;
        // Replay of the captured envelope (after the copy filter's window).
        tokio::time::sleep(Duration::from_millis(300)).await;
        spy.publish(&b_topic, captured).await;
        // Payload altered after signing.
        let mut inner = envelope(now, b.node_id(), b"pay me")
            .encode_signed(&a_key)
            .unwrap();
        let last = inner.len() - 65;
        inner[last] ^= 1;
        spy.publish(&b_topic, seal_raw(&inner, &b.node_id(), rng).unwrap())
            .await;
        // Signed for c, re-sealed to b.
        let for_c = envelope(now, c, b"for c").encode_signed(&a_key).unwrap();
        spy.publish(&b_topic, seal_raw(&for_c, &b.node_id(), rng).unwrap())
            .await;
        // Timestamps ten minutes in the past and in the future.
        for skew in [-600_000i64, 600_000] {
            let ts = keywire::signal::UnixMillis(now.0.saturating_add_signed(skew));
            let e = Envelope {
                sequence: 2 + u64::from(skew > 0),
                ..envelope(ts, b.node_id(), b"old")
            };
            spy.publish(&b_topic, seal(&a_key, &e, rng).unwrap()).await;
        }
        // Oversized, then garbage of two kinds.
        spy.publish(&b_topic, vec![1; MAX_SEALED + 1]).await;
        spy.publish(&b_topic, vec![0xAB; 300]).await;
        spy.publish(&b_topic, vec![1, 2, 3]).await;

        eventually(Duration::from_secs(5), "all refusals counted", || {
            let m = b.metrics();
            m.rejected_replay
                + m.rejected_bad_signature
                + m.rejected_wrong_destination
                + m.rejected_stale
                + m.rejected_oversized
                + m.rejected_garbage
                >= 8
        })
        .await;
        let m = b.metrics();
        assert_eq!(m.rejected_replay, 1, "{m:?}");
        assert_eq!(m.rejected_bad_signature, 1, "{m:?}");
        assert_eq!(m.rejected_wrong_destination, 1, "{m:?}");
        assert_eq!(m.rejected_stale, 2, "{m:?}");
        assert_eq!(m.rejected_oversized, 1, "{m:?}");
        assert_eq!(m.rejected_garbage, 2, "{m:?}");
        assert_eq!(
            m.delivered, 1,
            "only the genuine message was delivered: {m:?}"
        );
        // The node still works after all that.
        assert!(a.send(b.node_id(), b"still fine").await.unwrap().acked);
        assert_eq!(b.recv().await.unwrap().payload, b"still fine");
        // Oversized sends are refused locally.
        assert!(a.send(b.node_id(), &vec![0; 4096]).await.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_caps_hold() {
    let pool = Pool::start(1, 0);
    bounded(Duration::from_secs(30), async {
        let b = node(42, pool.config(), test_config());
        assert_eq!(b.wait_subscribed(1, Duration::from_secs(5)).await, 1);
        // Per-sender cap: 10 per second with a burst of 2 → 12 sends need about a second.
        let mut config = test_config();
        config.sender_rate = RateCap { rate: 10, burst: 2 };
        let a = node(41, pool.config(), config);
        let start = tokio::time::Instant::now();
        for i in 0..12u8 {
            assert!(a.send(b.node_id(), &[i]).await.unwrap().acked);
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900),
            "sender cap not applied: {took:?}"
        );
        // Per-broker cap: with 1 publish per second and a burst of 1, a second send within the
        // second finds no token, and the skip is counted.
        let mut config = test_config();
        config.broker_rate = RateCap { rate: 1, burst: 1 };
        config.send_timeout = Duration::from_millis(500);
        let slow = node(43, pool.config(), config);
        assert!(slow.send(b.node_id(), b"one").await.unwrap().acked);
        let second = slow.send(b.node_id(), b"two").await.unwrap();
        assert!(!second.acked);
        assert!(
            slow.metrics().publishes_rate_limited >= 1,
            "{:?}",
            slow.metrics()
        );
    })
    .await;
}
