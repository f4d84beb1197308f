//! 50 DHT nodes in one process, each on its own loopback address (127.N.0.1, so the per-/24
//! limits stay on): they form a DHT, find each other's records, deliver PUBLISH/SUBSCRIBE,
//! keep working when the bootstrap node dies, and a restarted node re-joins from its saved
//! routing table alone.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::dht_config;
use keywire::dht::{Dht, ModeSetting};
use keywire::{Endpoint, EndpointConfig, NetworkId, SecretKey};

const NODES: usize = 50;

fn endpoint(n: usize, key: SecretKey) -> Endpoint {
    let addr: SocketAddr = format!("127.{n}.0.1:0").parse().unwrap();
    let config = EndpointConfig::new(key)
        .bind_addr(addr)
        .network(NetworkId::from_name("keywire dht tests"))
        .alpn(common::ALPN.to_vec());
    common::bind(config)
}

struct Node {
    endpoint: Endpoint,
    dht: Dht,
    addr: SocketAddr,
}

async fn wait_until<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} not within {secs} s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_lookup_pubsub_and_survive_the_bootstrap_node() {
    let started = Instant::now();
    let mut nodes: Vec<Node> = Vec::new();
    for n in 1..=NODES {
        let ep = endpoint(n, SecretKey::generate(&mut rand::rngs::OsRng));
        let addr = ep.local_addr().unwrap();
        let (bootstrap, mode) = match nodes.first() {
            None => (vec![], ModeSetting::Server),
            Some(first) => (vec![first.addr], ModeSetting::Auto),
        };
        let dht = Dht::spawn(&ep, dht_config(bootstrap, mode));
        dht.publish_record(vec![addr], vec![]).await.unwrap();
        nodes.push(Node {
            endpoint: ep,
            dht,
            addr,
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Everyone learns it is reachable (a third party reached it unsolicited) and stores its
    // record at its closest nodes.
    let mut waited = 0;
    wait_until(90, "all nodes in server mode with stored records", || {
        waited += 1;
        let verbose = waited % 50 == 0;
        let nodes = &nodes;
        async move {
            let mut ready = true;
            for (i, node) in nodes.iter().enumerate() {
                let s = node.dht.status().await.unwrap();
                if s.kad.mode != keywire::dht::Mode::Server
                    || s.own_record_seq.is_none()
                    || !s.joined
                {
                    if verbose {
                        eprintln!("node {i} not ready: {s:?}");
                    }
                    ready = false;
                }
            }
            ready
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut rounds = Vec::new();
    for i in 0..NODES {
        let from = &nodes[i];
        let target = &nodes[(i * 7 + 3) % NODES];
        if std::ptr::eq(from, target) {
            continue;
        }
        let outcome = common::within(
            10,
            "lookup",
            from.dht.lookup_detailed(target.endpoint.node_id()),
        )
        .await
        .unwrap();
        let record = outcome.record.expect("record found");
        assert_eq!(record.node_id, target.endpoint.node_id());
        assert_eq!(record.addrs, vec![target.addr]);
        rounds.push(outcome.rounds);
    }
    rounds.sort_unstable();
    eprintln!(
        "dht.resolve_rounds.loopback50: median {} max {} ({} lookups)",
        rounds[rounds.len() / 2],
        rounds[rounds.len() - 1],
        rounds.len()
    );

    // PUBLISH/SUBSCRIBE with the observed address.
    let topic = *blake3::hash(b"dht test topic").as_bytes();
    let mut inbox = nodes[10].dht.subscribe(topic).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    nodes[20]
        .dht
        .publish(topic, b"hello from 20".to_vec())
        .await
        .unwrap();
    let got = common::within(10, "publication", inbox.recv())
        .await
        .unwrap();
    assert_eq!(got.publication.payload, b"hello from 20");
    assert_eq!(got.publication.publisher, nodes[20].endpoint.node_id());
    assert_eq!(got.observed, nodes[20].addr);

    // The bootstrap node dies without notice; the others keep finding each other.
    let first = nodes.remove(0);
    drop(first.dht);
    first.endpoint.close().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..20 {
        let from = &nodes[i];
        let target = &nodes[(i * 11 + 5) % nodes.len()];
        if std::ptr::eq(from, target) {
            continue;
        }
        let record = common::within(
            10,
            "lookup after the bootstrap died",
            from.dht.lookup(target.endpoint.node_id()),
        )
        .await
        .unwrap()
        .expect("record found without the bootstrap node");
        assert_eq!(record.addrs, vec![target.addr]);
    }
    eprintln!(
        "50-node DHT test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_rejoins_from_the_saved_routing_table() {
    let dir = std::env::temp_dir().join(format!("kw-dht-restart-{}", std::process::id()));
    let table = dir.join("routing.bin");
    let mut others = Vec::new();
    let mut bootstrap = Vec::new();
    for n in 60..66 {
        let ep = endpoint(n, SecretKey::generate(&mut rand::rngs::OsRng));
        let addr = ep.local_addr().unwrap();
        let dht = Dht::spawn(&ep, dht_config(bootstrap.clone(), ModeSetting::Server));
        dht.publish_record(vec![addr], vec![]).await.unwrap();
        bootstrap = vec![addr];
        others.push(Node {
            endpoint: ep,
            dht,
            addr,
        });
    }
    let key = SecretKey::generate(&mut rand::rngs::OsRng);
    let ep = endpoint(70, key.clone());
    let mut config = dht_config(vec![others[0].addr], ModeSetting::Server);
    config.routing_table_file = Some(table.clone());
    let dht = Dht::spawn(&ep, config);
    wait_until(20, "join", || async { dht.status().await.unwrap().joined }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    dht.shutdown().await;
    ep.close().await;
    assert!(table.exists());

    // Restart with no bootstrap address: the saved table is all it has.
    let ep = endpoint(70, key);
    let mut config = dht_config(vec![], ModeSetting::Server);
    config.routing_table_file = Some(table.clone());
    let dht = Dht::spawn(&ep, config);
    wait_until(20, "re-join from the saved table", || async {
        dht.status().await.unwrap().joined
    })
    .await;
    let target = &others[3];
    wait_until(20, "lookup after restart", || async {
        matches!(dht.lookup(target.endpoint.node_id()).await, Ok(Some(r)) if r.addrs == vec![target.addr])
    })
    .await;
    let _ = std::fs::remove_dir_all(dir);
}
