//! sidewire compatibility mode, keywire on both sides plus a raw MQTT client as the attacker:
//! forged, replayed, future-stamped and malformed packets are refused and counted; probes are
//! answered; a repeated text and non-ASCII text are refused before anything is published.

mod mosquitto;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keywire::proto::sidewire::{decode_packet, encode_packet, SidewireFields, SidewireKind};
use keywire::signal::sidewire::{SidewireConfig, SidewireError, SidewireNode, SidewireSecretKey};
use keywire::signal::{PoolConfig, SystemClock};
use mosquitto::{bounded, eventually, Broker, RawClient};

fn start(pool: &PoolConfig) -> SidewireNode {
    let key = SidewireSecretKey::generate(&mut rand::rngs::OsRng);
    let mut config = SidewireConfig::default();
    config.signal.republish_interval = Duration::from_millis(300);
    SidewireNode::start(key, pool.clone(), config, Arc::new(SystemClock)).unwrap()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn delivery_then_replays_forgeries_and_bad_stamps_are_refused() {
    let broker = Broker::start();
    let pool = PoolConfig::new().broker("127.0.0.1", broker.port);
    bounded(Duration::from_secs(30), async {
        let a = start(&pool);
        let b = start(&pool);
        assert_eq!(a.wait_subscribed(1, Duration::from_secs(5)).await, 1);
        assert_eq!(b.wait_subscribed(1, Duration::from_secs(5)).await, 1);
        let mut spy = RawClient::connect(broker.port, &b.public_key().topic()).await;

        let report = a.send(b.public_key(), b"hello b").await.unwrap();
        assert!(report.acked, "{report:?}");
        let got = b.recv().await.unwrap();
        assert_eq!(
            (got.from, got.message),
            (a.public_key().clone(), b"hello b".to_vec())
        );
        let captured = spy.next().await;
        let (source, fields) = decode_packet(&captured).unwrap();
        assert_eq!(&source, a.public_key());
        assert_eq!(fields.kind, SidewireKind::Message);

        // Replayed as is: acknowledged again (the sender may have lost the ACK), not delivered.
        let before = b.metrics();
        spy.publish(&b.public_key().topic(), captured.clone()).await;
        eventually(Duration::from_secs(5), "the replay is counted", || {
            b.metrics().duplicates > before.duplicates
        })
        .await;
        // A flipped bit in the text: the signature fails.
        let mut forged = captured.clone();
        *forged.last_mut().unwrap() ^= 0x20;
        spy.publish(&b.public_key().topic(), forged).await;
        // Validly signed by an outsider, stamped 5 minutes ahead (sidewire itself accepts it).
        let outsider = SidewireSecretKey::generate(&mut rand::rngs::OsRng);
        let stamped = |secs: u64| {
            encode_packet(
                &outsider,
                &SidewireFields {
                    queue_id: rand::random(),
                    sequence: 0,
                    timestamp_secs: secs,
                    kind: SidewireKind::Message,
                    message: b"stamped".to_vec(),
                },
            )
        };
        spy.publish(&b.public_key().topic(), stamped(now_secs() + 300))
            .await;
        // ...and 5 minutes behind.
        spy.publish(&b.public_key().topic(), stamped(now_secs() - 300))
            .await;
        // Garbage and an unknown type.
        spy.publish(&b.public_key().topic(), vec![0u8; 20]).await;
        let mut unknown = stamped(now_secs());
        unknown[141] = 7;
        spy.publish(&b.public_key().topic(), unknown).await;
        eventually(Duration::from_secs(5), "every refusal is counted", || {
            let m = b.metrics();
            m.rejected_bad_signature == 1
                && m.rejected_future == 1
                && m.rejected_stale == 1
                && m.rejected_malformed == 2
        })
        .await;
        let m = b.metrics();
        assert_eq!(
            m.delivered, 1,
            "nothing refused reached the application: {m:?}"
        );
        // The same text again within 130 s: refused before publishing; another text is fine.
        let err = a.send(b.public_key(), b"hello b").await.unwrap_err();
        assert!(matches!(err, SidewireError::RepeatedText(_)), "{err}");
        assert!(a.send(b.public_key(), b"hello again").await.unwrap().acked);
        let err = a
            .send(b.public_key(), "héllo".as_bytes())
            .await
            .unwrap_err();
        assert!(matches!(err, SidewireError::NotAscii(0xc3)), "{err}");
    })
    .await;
}

#[tokio::test]
async fn probes_are_answered_on_their_broker_and_never_delivered() {
    let broker = Broker::start();
    let pool = PoolConfig::new().broker("127.0.0.1", broker.port);
    bounded(Duration::from_secs(30), async {
        let node = start(&pool);
        assert_eq!(node.wait_subscribed(1, Duration::from_secs(5)).await, 1);
        let prober = SidewireSecretKey::generate(&mut rand::rngs::OsRng);
        let mut watch = RawClient::connect(broker.port, &prober.public_key().topic()).await;
        let queue_id = rand::random();
        let probe = encode_packet(
            &prober,
            &SidewireFields {
                queue_id,
                sequence: 3,
                timestamp_secs: now_secs(),
                kind: SidewireKind::Probe,
                message: Vec::new(),
            },
        );
        watch.publish(&node.public_key().topic(), probe).await;
        let (source, ack) = decode_packet(&watch.next().await).unwrap();
        assert_eq!(&source, node.public_key());
        assert_eq!(
            (ack.kind, ack.queue_id, ack.sequence),
            (SidewireKind::Ack, queue_id, 3)
        );
        assert_eq!(ack.message, b"ack");
        assert_eq!(node.metrics().probes_answered, 1);
        assert_eq!(node.metrics().delivered, 0);
    })
    .await;
}

#[tokio::test]
async fn a_send_with_no_broker_up_publishes_nothing_and_keeps_the_text_free() {
    let dead = mosquitto::free_port();
    let pool = PoolConfig::new().broker("127.0.0.1", dead);
    bounded(Duration::from_secs(30), async {
        let mut config = SidewireConfig::default();
        config.signal.send_timeout = Duration::from_millis(500);
        let key = SidewireSecretKey::generate(&mut rand::rngs::OsRng);
        let node = SidewireNode::start(key, pool, config, Arc::new(SystemClock)).unwrap();
        let dest = SidewireSecretKey::generate(&mut rand::rngs::OsRng);
        for _ in 0..2 {
            // The same text twice: the first never went out, so the second is not a repeat.
            let err = node.send(dest.public_key(), b"anyone?").await.unwrap_err();
            assert!(matches!(err, SidewireError::NoBrokerUp), "{err}");
        }
        assert_eq!(node.metrics().sends, 0);
        assert!(matches!(
            SidewireNode::start(
                SidewireSecretKey::generate(&mut rand::rngs::OsRng),
                PoolConfig::new(),
                SidewireConfig::default(),
                Arc::new(SystemClock)
            ),
            Err(SidewireError::NoBrokers)
        ));
    })
    .await;
}
