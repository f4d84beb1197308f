//! Signalling through real mosquitto brokers: delivery, acknowledgement, fan-out, hints.

mod mosquitto;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use mosquitto::{bounded, eventually, node, test_config, Pool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_of_five_with_two_dead_delivers_everything() {
    let pool = Pool::start(3, 2);
    bounded(Duration::from_secs(60), async {
        let a = node(1, pool.config(), test_config());
        let b = node(2, pool.config(), test_config());
        // Each subscribes at the live brokers of its top 3 at once, and replaces dead ones after
        // `replace_after`; at least one of any 3 of these 5 brokers is alive.
        assert!(a.wait_subscribed(1, Duration::from_secs(5)).await >= 1);
        assert!(b.wait_subscribed(1, Duration::from_secs(5)).await >= 1);
        for i in 0..20u32 {
            let text = format!("a->b {i}");
            let report = a.send(b.node_id(), text.as_bytes()).await.unwrap();
            assert!(report.acked, "send {i} a->b not acknowledged: {report:?}");
            let got = b.recv().await.unwrap();
            assert_eq!(got.payload, text.as_bytes());
            assert_eq!(got.from, a.node_id());
            let report = b
                .send(a.node_id(), format!("b->a {i}").as_bytes())
                .await
                .unwrap();
            assert!(report.acked, "send {i} b->a not acknowledged");
            assert_eq!(
                a.recv().await.unwrap().payload,
                format!("b->a {i}").as_bytes()
            );
        }
        // After `replace_after` both hold 3 live subscriptions: the dead ones were replaced.
        // (A loaded machine may take a little longer than `replace_after` to finish replacing.)
        for n in [&a, &b] {
            let live = || n.own_brokers().iter().filter(|(_, up)| *up).count();
            eventually(
                Duration::from_secs(15),
                "dead subscriptions replaced",
                || live() == 3,
            )
            .await;
        }
        let (ma, mb) = (a.metrics(), b.metrics());
        assert_eq!(ma.sends_acked, 20);
        assert_eq!(mb.sends_acked, 20);
        assert_eq!(ma.delivered, 20);
        assert_eq!(mb.delivered, 20);
        assert!(
            ma.broker_failures >= 1,
            "dead brokers were never noticed: {ma:?}"
        );
        for m in [ma, mb] {
            assert_eq!(
                m.rejected_bad_signature + m.rejected_garbage + m.rejected_stale,
                0
            );
        }
        // Once dead brokers are known down, sends stop waiting on them: a send is fast.
        let report = a.send(b.node_id(), b"fast").await.unwrap();
        assert!(report.acked);
        assert!(report.elapsed < Duration::from_secs(1), "{report:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_messages_each_way_none_lost_none_twice() {
    let pool = Pool::start(3, 0);
    bounded(Duration::from_secs(90), async {
        let a = Arc::new(node(11, pool.config(), test_config()));
        let b = Arc::new(node(12, pool.config(), test_config()));
        assert_eq!(a.wait_subscribed(3, Duration::from_secs(5)).await, 3);
        assert_eq!(b.wait_subscribed(3, Duration::from_secs(5)).await, 3);
        const N: u32 = 1000;
        const IN_FLIGHT: u32 = 50;
        let send_all =
            |from: Arc<keywire::signal::SignalNode>, to: keywire::NodeId, tag: &'static str| {
                tokio::spawn(async move {
                    let mut acked = 0;
                    for chunk in 0..N / IN_FLIGHT {
                        let mut set = tokio::task::JoinSet::new();
                        for i in chunk * IN_FLIGHT..(chunk + 1) * IN_FLIGHT {
                            let from = from.clone();
                            set.spawn(async move {
                                let r = from.send(to, format!("{tag} {i}").as_bytes()).await;
                                r.unwrap().acked
                            });
                        }
                        while let Some(ok) = set.join_next().await {
                            acked += u32::from(ok.unwrap());
                        }
                    }
                    acked
                })
            };
        let recv_all = |at: Arc<keywire::signal::SignalNode>| {
            tokio::spawn(async move {
                let mut seen = HashSet::new();
                while seen.len() < N as usize {
                    let m = at.recv().await.unwrap();
                    let text = String::from_utf8(m.payload).unwrap();
                    assert!(seen.insert(text.clone()), "delivered twice: {text}");
                }
                seen
            })
        };
        let rb = recv_all(b.clone());
        let ra = recv_all(a.clone());
        let sa = send_all(a.clone(), b.node_id(), "a");
        let sb = send_all(b.clone(), a.node_id(), "b");
        assert_eq!(sa.await.unwrap(), N, "a's sends not all acknowledged");
        assert_eq!(sb.await.unwrap(), N, "b's sends not all acknowledged");
        let got_b = rb.await.unwrap();
        let got_a = ra.await.unwrap();
        assert!((0..N).all(|i| got_b.contains(&format!("a {i}"))));
        assert!((0..N).all(|i| got_a.contains(&format!("b {i}"))));
        // Nothing more arrives: no message is delivered twice, even late.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.metrics().delivered, u64::from(N));
        assert_eq!(b.metrics().delivered, u64::from(N));
        assert_eq!(
            b.metrics().receive_dropped_full + b.metrics().inbound_dropped_full,
            0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hint_brokers_reach_a_peer_outside_the_senders_pool() {
    let receiver_pool = Pool::start(2, 0);
    let sender_pool = Pool::start(1, 0);
    bounded(Duration::from_secs(30), async {
        let b = node(22, receiver_pool.config(), test_config());
        assert_eq!(b.wait_subscribed(2, Duration::from_secs(5)).await, 2);
        let mut config = test_config();
        config.send_timeout = Duration::from_millis(800);
        config.hint_expiry = Duration::from_secs(1);
        let a = node(21, sender_pool.config(), config);
        // Without hints the pools share no broker: the send cannot be acknowledged.
        let report = a.send(b.node_id(), b"lost").await.unwrap();
        assert!(!report.acked);
        assert_eq!(a.metrics().sends_unacked, 1);
        // With the brokers b advertises, it gets through.
        let hints: Vec<_> = b.own_brokers().into_iter().map(|(spec, _)| spec).collect();
        a.add_hints(b.node_id(), &hints);
        let report = a.send(b.node_id(), b"found").await.unwrap();
        assert!(report.acked, "{report:?}");
        assert_eq!(b.recv().await.unwrap().payload, b"found");
        assert_eq!(b.metrics().delivered, 1);
        // The cached hints expire (`hint_expiry`, 1 s here): then the pools no longer meet.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let report = a.send(b.node_id(), b"expired").await.unwrap();
        assert!(!report.acked, "hints outlived their expiry: {report:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn families_are_picked_separately() {
    // Two IPv4 brokers and one IPv6 broker: k = min(3, brokers of the family) per family, so
    // each node subscribes at all three, and the IPv6 broker alone carries traffic once the
    // IPv4 ones are gone.
    let mut v4 = [mosquitto::Broker::start(), mosquitto::Broker::start()];
    let v6 = mosquitto::Broker::start_v6();
    let pool = v4
        .iter()
        .chain(std::iter::once(&v6))
        .fold(keywire::signal::PoolConfig::new(), |p, b| p.with(b.spec()));
    bounded(Duration::from_secs(30), async {
        let a = node(91, pool.clone(), test_config());
        let b = node(92, pool.clone(), test_config());
        assert_eq!(b.wait_subscribed(3, Duration::from_secs(5)).await, 3);
        assert_eq!(a.wait_subscribed(3, Duration::from_secs(5)).await, 3);
        let families: HashSet<_> = b.own_brokers().iter().map(|(s, _)| s.family).collect();
        assert_eq!(families.len(), 2);
        for broker in &mut v4 {
            broker.kill();
        }
        for i in 0..3u8 {
            let report = a.send(b.node_id(), &[i]).await.unwrap();
            assert!(report.acked, "{report:?}");
            assert_eq!(report.via.unwrap().as_str(), format!("[::1]:{}", v6.port));
            assert_eq!(b.recv().await.unwrap().payload, [i]);
        }
    })
    .await;
}
