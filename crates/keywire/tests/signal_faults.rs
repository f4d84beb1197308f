//! Broker failures and restarts, differing views of which brokers are down, and restarts of
//! both peers, all on real mosquitto brokers.

mod mosquitto;

use std::time::Duration;

use keywire::proto::signal::rendezvous::rank;
use keywire::proto::signal::{AddressFamily, SignalTopic};
use keywire::signal::{BrokerSpec, SignalNode};
use keywire::NodeId;
use mosquitto::{
    bounded, eventually, network, node, test_config, topic_of, Broker, Pool, RawClient,
};

async fn exchange(a: &SignalNode, b: &SignalNode, n: u32, tag: &str) {
    for i in 0..n {
        let text = format!("{tag} {i}");
        let report = a.send(b.node_id(), text.as_bytes()).await.unwrap();
        assert!(report.acked, "{tag} {i} not acknowledged: {report:?}");
        assert_eq!(b.recv().await.unwrap().payload, text.as_bytes());
    }
}

fn live_own(node: &SignalNode) -> usize {
    node.own_brokers().iter().filter(|(_, up)| *up).count()
}

/// Brokers of `pool` in rank order for `node`'s topic.
fn ranked(brokers: &[Broker], node: &NodeId) -> Vec<u16> {
    let specs: Vec<BrokerSpec> = brokers.iter().map(Broker::spec).collect();
    let topic = SignalTopic::new(&network(), node);
    rank(&specs, &topic, AddressFamily::V4)
        .iter()
        .map(|s| s.port)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_exchange_then_restarted_is_used_again() {
    let mut pool = Pool::start(3, 0);
    let config = pool.config();
    bounded(Duration::from_secs(60), async {
        let a = node(51, config.clone(), test_config());
        let b = node(52, config, test_config());
        assert_eq!(b.wait_subscribed(3, Duration::from_secs(5)).await, 3);
        exchange(&a, &b, 5, "before").await;
        // Kill one broker while sends are in flight.
        let sends = async { exchange(&a, &b, 10, "during").await };
        let kill = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            pool.brokers[0].kill();
        };
        tokio::join!(sends, kill);
        // The failure is noticed by b's connection task, which may run a moment after the kill.
        eventually(Duration::from_secs(5), "b noticed the dead broker", || {
            b.metrics().broker_failures >= 1
        })
        .await;
        // Restart it: b reconnects and subscribes again.
        pool.brokers[0].restart();
        eventually(Duration::from_secs(5), "b re-subscribed", || {
            live_own(&b) == 3
        })
        .await;
        // Kill the two others: only the restarted broker is left, so delivery proves that the
        // subscription was renewed there.
        pool.brokers[1].kill();
        pool.brokers[2].kill();
        exchange(&a, &b, 5, "after").await;
        exchange(&b, &a, 5, "back").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_and_receiver_disagree_about_dead_brokers() {
    let mut brokers: Vec<Broker> = (0..4).map(|_| Broker::start()).collect();
    let b_id = keywire::SecretKey::from_seed([62; 32]).node_id();
    let order = ranked(&brokers, &b_id);
    let first = brokers.iter().position(|x| x.port == order[0]).unwrap();
    let pool = brokers
        .iter()
        .fold(keywire::signal::PoolConfig::new(), |p, x| {
            p.broker("127.0.0.1", x.port)
        });
    bounded(Duration::from_secs(60), async {
        // b starts while its first-ranked broker is down, and after `replace_after` (2 s in
        // tests) subscribes at the fourth instead.
        brokers[first].kill();
        let b = node(62, pool.clone(), test_config());
        eventually(Duration::from_secs(6), "b replaced the dead broker", || {
            b.metrics().subscriptions_replaced >= 1 && live_own(&b) == 3
        })
        .await;
        // The broker comes back; a new sender sees it up and ranks it first.
        brokers[first].restart();
        let a = node(61, pool.clone(), test_config());
        exchange(&a, &b, 5, "differing views").await;
        // b notices the return and subscribes there again (its subscriptions stay up).
        eventually(
            Duration::from_secs(5),
            "b back on the returned broker",
            || live_own(&b) == 4,
        )
        .await;
        // Now kill ranks 2 and 3: a reaches b on rank 1 (returned) or rank 4 (replacement).
        for port in &order[1..3] {
            let i = brokers.iter().position(|x| x.port == *port).unwrap();
            brokers[i].kill();
        }
        exchange(&a, &b, 5, "after").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_and_receiver_restarts() {
    let pool = Pool::start(1, 0);
    let port = pool.brokers[0].port;
    bounded(Duration::from_secs(30), async {
        let b = node(72, pool.config(), test_config());
        assert_eq!(b.wait_subscribed(1, Duration::from_secs(5)).await, 1);
        let mut spy = RawClient::connect(port, &topic_of(&b.node_id())).await;
        let a = node(71, pool.config(), test_config());
        exchange(&a, &b, 3, "first run").await;
        let captured = spy.next().await;
        // Sender restart: same key, new process state. Its new queue id keeps its fresh
        // sequence numbers from looking like replays.
        drop(a);
        let a = node(71, pool.config(), test_config());
        exchange(&a, &b, 3, "after sender restart").await;
        assert_eq!(b.metrics().rejected_replay, 0);
        // Receiver restart: it remembers nothing, yet an envelope captured before the restart
        // is refused (stamped before the new run started).
        drop(b);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = node(72, pool.config(), test_config());
        assert_eq!(b.wait_subscribed(1, Duration::from_secs(5)).await, 1);
        spy.publish(&topic_of(&b.node_id()), captured).await;
        eventually(Duration::from_secs(5), "replay counted", || {
            b.metrics().rejected_stale == 1
        })
        .await;
        assert_eq!(b.metrics().delivered, 0);
        exchange(&a, &b, 3, "after receiver restart").await;
        exchange(&b, &a, 3, "reply").await;
    })
    .await;
}
