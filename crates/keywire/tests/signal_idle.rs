//! The idle closer: outbound-only connections close after `idle_timeout`, own subscriptions stay.

mod mosquitto;

use std::time::Duration;

use keywire::proto::signal::rendezvous::rank;
use keywire::proto::signal::{AddressFamily, SignalTopic};
use keywire::signal::BrokerSpec;
use keywire::SecretKey;
use mosquitto::{bounded, eventually, network, node, test_config, Pool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_outbound_connections_close_and_reopen() {
    let pool = Pool::start(5, 0);
    let specs: Vec<BrokerSpec> = pool.brokers.iter().map(|b| b.spec()).collect();
    let top = |seed: u8| {
        let id = SecretKey::from_seed([seed; 32]).node_id();
        rank(
            &specs,
            &SignalTopic::new(&network(), &id),
            AddressFamily::V4,
        )[0]
        .port
    };
    // Two nodes whose first-ranked brokers differ, so that with k = 1 a's connection to b's
    // broker is outbound-only.
    let (sa, sb) = (81u8..120)
        .flat_map(|a| (a + 1..121).map(move |b| (a, b)))
        .find(|(a, b)| top(*a) != top(*b))
        .expect("some pair ranks differently");
    let mut config = test_config();
    config.per_family = 1;
    config.idle_timeout = Duration::from_millis(600);
    bounded(Duration::from_secs(30), async {
        let a = node(sa, pool.config(), config.clone());
        let b = node(sb, pool.config(), config.clone());
        assert_eq!(a.wait_subscribed(1, Duration::from_secs(5)).await, 1);
        assert_eq!(b.wait_subscribed(1, Duration::from_secs(5)).await, 1);
        assert!(a.send(b.node_id(), b"one").await.unwrap().acked);
        assert_eq!(
            a.connection_count(),
            2,
            "own subscription plus one outbound"
        );
        eventually(Duration::from_secs(5), "outbound connection closed", || {
            a.connection_count() == 1
        })
        .await;
        assert_eq!(a.metrics().idle_closed, 1);
        // The own subscription is exempt: b can still reach a.
        assert!(b.send(a.node_id(), b"still here").await.unwrap().acked);
        assert_eq!(a.recv().await.unwrap().payload, b"still here");
        // And a reopens the outbound connection on demand.
        assert!(a.send(b.node_id(), b"two").await.unwrap().acked);
        assert_eq!(a.connection_count(), 2, "{:?}", a.connections());
        // b's outbound connection to a's broker idles out too; its own subscription stays.
        eventually(
            Duration::from_secs(5),
            "b's outbound connection closed",
            || b.metrics().idle_closed == 1 && b.connection_count() == 1,
        )
        .await;
        assert!(
            b.connections()[0].1,
            "the remaining one is b's own subscription"
        );
    })
    .await;
}
