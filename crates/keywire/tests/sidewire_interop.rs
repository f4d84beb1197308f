//! keywire's sidewire compatibility against the real thing: sidewire 0.1.9 from PyPI (its own
//! Router, in tests/sidewire/peer.py), real mosquitto brokers, a pool of 5 with 2 dead.
//!
//! Needs tests/sidewire/.venv (made by tests/sidewire/setup-venv.sh, which .ci/install-deps.sh
//! runs); fails with that instruction when it is missing.

mod mosquitto;
#[path = "../../keywire-cli/src/sidewire_peer.rs"]
#[allow(dead_code)]
mod sidewire_peer;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use keywire::signal::sidewire::{SidewireConfig, SidewireNode, SidewireSecretKey};
use keywire::signal::{PoolConfig, SystemClock};
use mosquitto::{bounded, free_port, Broker};
use sidewire_peer::{venv_python, PeerMode, SidewirePeer};

const MESSAGES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_messages_each_way_with_a_sidewire_peer_through_five_brokers_two_dead() {
    // sidewire keys brokers by host string: each broker gets its own spelling of loopback.
    let live = [
        Broker::start_at("127.0.0.1", free_port()),
        Broker::start_at("127.0.0.2", free_port()),
        Broker::start_at("127.0.0.3", free_port()),
    ];
    let mut brokers: Vec<String> = live
        .iter()
        .map(|b| format!("{}:{}", b.host, b.port))
        .collect();
    brokers.push(format!("127.0.0.4:{}", free_port()));
    brokers.push(format!("127.0.0.5:{}", free_port()));
    let list = brokers.join(",");

    bounded(Duration::from_secs(150), async {
        let key = SidewireSecretKey::generate(&mut rand::rngs::OsRng);
        let mut config = SidewireConfig::default();
        // sidewire verifies and signs in pure Python (python-ecdsa) and ACKs from a loop that
        // wakes every 0.5 s; with 20 messages in flight on a loaded 2-core machine an ACK can
        // take longer than the 5 s default. Delivery, not latency, is what this test checks
        // (latency is in `keywire bench signal`).
        config.signal.send_timeout = Duration::from_secs(30);
        let node = Arc::new(
            SidewireNode::start(
                key,
                PoolConfig::from_list(&list).unwrap(),
                config,
                Arc::new(SystemClock),
            )
            .unwrap(),
        );
        assert_eq!(node.wait_subscribed(3, Duration::from_secs(10)).await, 3);

        let python = venv_python().unwrap_or_else(|e| panic!("{e}"));
        let mut peer = SidewirePeer::spawn(
            &python,
            &list,
            Some(node.public_key()),
            MESSAGES,
            PeerMode::Interop,
        )
        .await
        .unwrap();
        let peer_key = peer.key.clone();
        peer.go().await.unwrap();

        // keywire → sidewire: 100 distinct messages, 10 in flight, each must be ACKed.
        let sender = {
            let node = node.clone();
            let peer_key = peer_key.clone();
            tokio::spawn(async move {
                let limit = Arc::new(tokio::sync::Semaphore::new(10));
                let mut sends = tokio::task::JoinSet::new();
                for i in 0..MESSAGES {
                    let (node, peer_key, limit) = (node.clone(), peer_key.clone(), limit.clone());
                    sends.spawn(async move {
                        let _slot = limit.acquire().await.unwrap();
                        let text = format!("kw-msg {i}");
                        let report = node.send(&peer_key, text.as_bytes()).await.unwrap();
                        assert!(report.acked, "{text} not acknowledged: {report:?}");
                        report.brokers_tried
                    });
                }
                let mut tried = Vec::new();
                while let Some(r) = sends.join_next().await {
                    tried.push(r.unwrap());
                }
                tried
            })
        };

        // sidewire → keywire: its 100 messages, each answered; and its answers to ours.
        let mut received = HashSet::new();
        let mut answers = HashSet::new();
        let mut answering = tokio::task::JoinSet::new();
        while received.len() < MESSAGES || answers.len() < MESSAGES {
            let msg = node.recv().await.expect("node alive");
            assert_eq!(msg.from, peer_key, "only the sidewire peer writes to us");
            let text = String::from_utf8(msg.message).expect("sidewire sends text");
            if let Some(original) = text.strip_prefix("re: ") {
                assert!(
                    original.starts_with("kw-msg "),
                    "unexpected answer {text:?}"
                );
                assert!(
                    answers.insert(original.to_owned()),
                    "answer delivered twice: {text}"
                );
            } else {
                assert!(text.starts_with("sw-msg "), "unexpected message {text:?}");
                assert!(
                    received.insert(text.clone()),
                    "message delivered twice: {text}"
                );
                let (node, peer_key) = (node.clone(), peer_key.clone());
                answering.spawn(async move {
                    let report = node
                        .send(&peer_key, format!("re: {text}").as_bytes())
                        .await
                        .unwrap();
                    assert!(
                        report.acked,
                        "answer to {text} not acknowledged: {report:?}"
                    );
                });
            }
        }
        let tried = sender.await.unwrap();
        while let Some(r) = answering.join_next().await {
            r.unwrap();
        }
        // Every live broker carried each message: sidewire may listen on any of them.
        assert!(
            tried.iter().all(|&n| n == 3),
            "brokers tried per send: {tried:?}"
        );

        let done = peer.done().await.unwrap();
        assert_eq!(done["sent_acked"], MESSAGES, "{done}");
        assert_eq!(done["send_failed"], 0, "{done}");
        assert_eq!(done["received"], MESSAGES, "{done}");
        assert_eq!(done["answered"], MESSAGES, "{done}");
        assert_eq!(done["answer_failed"], 0, "{done}");
        assert_eq!(done["answers_received"], MESSAGES, "{done}");

        let m = node.metrics();
        assert_eq!(m.sends_acked, 2 * MESSAGES as u64, "{m:?}");
        // Each send completed exactly once although sidewire ACKs every copy and republishes ACKs.
        assert_eq!(m.acks_matched, 2 * MESSAGES as u64, "{m:?}");
        assert_eq!(m.delivered, 2 * MESSAGES as u64, "{m:?}");
        assert_eq!(m.rejected_bad_signature + m.rejected_malformed, 0, "{m:?}");
        println!("sidewire interop metrics: {m:?}");
    })
    .await;
}
