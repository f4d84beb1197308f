//! The node side of discovery: be findable, and answer introductions.
//!
//! - Nudges for us (control kind `Intro`) go to the dial that waits for their nonce.
//! - Our public address is learned from the observer and the DHT's votes, and told to peers.
//! - The DHT record carries our candidates; it is republished whenever they change.
//! - Introductions on our DHT topic and over MQTT are checked (signature by the channel;
//!   destination, time and replay here), then answered: nudges to the sender's candidates
//!   (and, over the DHT, to the address the forwarding node saw it at), and over MQTT a reply
//!   with our candidates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keywire_proto::datagram::ControlKind;
use keywire_proto::intro::{
    intro_topic, open_intro, IntroKind, Introduction, MAX_INTRO_CANDIDATES,
};
use keywire_proto::kad::GateRef;
use keywire_proto::probe::punch::is_public_unicast;
use keywire_proto::NodeId;

use super::state::{lock, unix_ms, DiscoveryState};
use crate::endpoint::WeakEndpoint;
use crate::metrics::Metrics;
use crate::signal::MessageType;
use crate::Endpoint;

/// Nudges waiting to be read; more are dropped by the socket and counted.
const NUDGE_QUEUE: usize = 256;
/// When the nudges answering one introduction go out, from its arrival: a first one may be
/// dropped by the dialer's NAT if it has not yet sent anything our way.
const NUDGE_ROUNDS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(150),
    Duration::from_millis(500),
];
/// How often our candidates are checked for changes: often at first (our public address is
/// what a dialer behind a NAT needs, and it arrives a round trip or two after start), less
/// after the first minute.
const FIRST_CHECKS: Duration = Duration::from_millis(100);
const EARLY_CHECK: Duration = Duration::from_millis(500);
const LATE_CHECK: Duration = Duration::from_secs(15);
/// How long our first record waits for a public address when we have none of our own: a
/// record naming only LAN addresses sends dialers behind NATs nowhere.
const FIRST_RECORD_WAIT: Duration = Duration::from_secs(2);
/// Most gates a DHT record carries (`docs/dht.md`).
const MAX_RECORD_GATES: usize = 4;
/// How often the observer is asked again.
const OBSERVE_EVERY: Duration = Duration::from_secs(60);

pub(super) fn start(endpoint: &Endpoint, state: &Arc<DiscoveryState>) {
    let mut tasks = Vec::new();
    let channel = endpoint.control_channel(ControlKind::Intro, NUDGE_QUEUE);
    tasks.push(tokio::spawn(receive_nudges(state.clone(), channel)));
    tasks.push(tokio::spawn(keep_reflexive(state.clone())));
    if state.advertise && state.dht.is_some() {
        tasks.push(tokio::spawn(keep_record(
            state.clone(),
            endpoint.downgrade(),
        )));
        tasks.push(tokio::spawn(dht_introductions(state.clone())));
    }
    if state.mqtt.is_some() {
        // Our own dials need the replies even when we do not advertise.
        tasks.push(tokio::spawn(mqtt_messages(state.clone())));
    }
    lock(&state.tasks).extend(tasks);
}

async fn receive_nudges(state: Arc<DiscoveryState>, mut channel: crate::ControlChannel) {
    while let Some(datagram) = channel.recv().await {
        match <[u8; 16]>::try_from(&datagram.payload[..]) {
            Ok(token) => state.nudged(token, datagram.from),
            Err(_) => Metrics::inc(&state.counters.nudges_unmatched),
        }
    }
}

/// Learns our public address (observer, DHT votes) and tells the endpoint, which gives it to
/// peers with our other candidates.
async fn keep_reflexive(state: Arc<DiscoveryState>) {
    let started = tokio::time::Instant::now();
    let mut observed: Option<(tokio::time::Instant, SocketAddr)> = None;
    loop {
        if let Some(observer) = state.observer {
            let stale = observed.is_none_or(|(at, _)| at.elapsed() >= OBSERVE_EVERY);
            if stale {
                if let Some(addr) = state.upgrades.observe(observer).await {
                    observed = Some((tokio::time::Instant::now(), addr));
                }
            }
        }
        let mut reflexive: Vec<SocketAddr> = observed.map(|(_, a)| a).into_iter().collect();
        if let Some(dht) = &state.dht {
            if let Ok(status) = dht.status().await {
                if let Some(addr) = status.kad.observed_addr {
                    if !reflexive.contains(&addr) {
                        reflexive.push(addr);
                    }
                }
            }
        }
        if reflexive != state.upgrades.discovered_reflexive() {
            tracing::debug!("public addresses now {reflexive:?}");
            state.upgrades.set_discovered_reflexive(reflexive);
        }
        tokio::time::sleep(check_interval(started)).await;
    }
}

fn check_interval(started: tokio::time::Instant) -> Duration {
    if started.elapsed() < Duration::from_secs(5) {
        FIRST_CHECKS
    } else if started.elapsed() < Duration::from_secs(60) {
        EARLY_CHECK
    } else {
        LATE_CHECK
    }
}

/// Publishes our record (our candidates and the gates we joined), and again whenever they
/// change (the DHT core republishes an unchanged record on its own).
async fn keep_record(state: Arc<DiscoveryState>, endpoint: WeakEndpoint) {
    let Some(dht) = state.dht.clone() else { return };
    let started = tokio::time::Instant::now();
    let mut published: Option<(Vec<SocketAddr>, Vec<GateRef>)> = None;
    loop {
        let mut candidates = state.candidates();
        candidates.truncate(MAX_INTRO_CANDIDATES);
        // On loopback (tests, demos) no public address is coming.
        let public = candidates.iter().any(|a| is_public_unicast(a.ip()))
            || state
                .socket
                .real_local_addr()
                .is_ok_and(|a| a.ip().is_loopback());
        if published.is_none() && !public && started.elapsed() < FIRST_RECORD_WAIT {
            tokio::time::sleep(FIRST_CHECKS).await;
            continue;
        }
        let Some(gates) = endpoint.upgrade().map(|e| gate_refs(&e)) else {
            return;
        };
        let now = (candidates, gates);
        if published.as_ref() != Some(&now) {
            match dht.publish_record(now.0.clone(), now.1.clone()).await {
                Ok(_) => {
                    Metrics::inc(&state.counters.records_published);
                    published = Some(now);
                }
                Err(e) => tracing::debug!("cannot publish our DHT record: {e}"),
            }
        }
        tokio::time::sleep(check_interval(started)).await;
    }
}

/// The gates we joined, as a record names them (the first address of each; at most 4).
fn gate_refs(endpoint: &Endpoint) -> Vec<GateRef> {
    endpoint
        .joined_gates()
        .into_iter()
        .filter_map(|g| {
            Some(GateRef {
                node_id: g.node_id,
                addr: *g.direct_addrs.first()?,
            })
        })
        .take(MAX_RECORD_GATES)
        .collect()
}

async fn dht_introductions(state: Arc<DiscoveryState>) {
    let Some(dht) = state.dht.clone() else { return };
    let mut publications = loop {
        // The subscription needs the join: retry until it is taken.
        if dht.ready().await.is_err() {
            return;
        }
        match dht.subscribe(intro_topic(&state.me)).await {
            Ok(rx) => break rx,
            Err(e) => {
                tracing::debug!("cannot subscribe to our introduction topic: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    while let Some(received) = publications.recv().await {
        let from = received.publication.publisher;
        let payload = &received.publication.payload;
        let Ok(intro) = open_intro(&state.opener, payload, &from) else {
            Metrics::inc(&state.counters.intros_rejected);
            continue;
        };
        // Only requests travel over the DHT: the dialer has our record.
        if intro.kind != IntroKind::Request || !state.admit(&from, &intro) {
            if intro.kind != IntroKind::Request {
                Metrics::inc(&state.counters.intros_rejected);
            }
            continue;
        }
        Metrics::inc(&state.counters.intros_accepted_dht);
        // Where the forwarding node saw the dialer: unsigned, so only nudged, never trusted.
        let mut targets = intro.candidates.clone();
        if keywire_proto::intro::is_usable_candidate(&received.observed)
            && !targets.contains(&received.observed)
        {
            targets.push(received.observed);
        }
        spawn_nudges(&state, targets, intro.nonce);
    }
}

async fn mqtt_messages(state: Arc<DiscoveryState>) {
    let Some(mqtt) = state.mqtt.clone() else {
        return;
    };
    while let Some(message) = mqtt.recv().await {
        let intro = match Introduction::decode(&message.payload) {
            Ok(intro) if message.kind == MessageType::Control => intro,
            _ => {
                Metrics::inc(&state.counters.intros_rejected);
                continue;
            }
        };
        match intro.kind {
            IntroKind::Reply => {
                // A reply must answer one of our requests, from the node we asked.
                let fresh = intro.check(&state.me, unix_ms()).is_ok();
                if !(fresh && state.replied(message.from, intro)) {
                    Metrics::inc(&state.counters.intros_rejected);
                }
            }
            IntroKind::Request => {
                if !state.advertise || !state.admit(&message.from, &intro) {
                    continue;
                }
                Metrics::inc(&state.counters.intros_accepted_mqtt);
                spawn_nudges(&state, intro.candidates.clone(), intro.nonce);
                spawn_reply(&state, message.from, intro.nonce);
            }
        }
    }
}

fn spawn_nudges(state: &Arc<DiscoveryState>, targets: Vec<SocketAddr>, nonce: [u8; 16]) {
    let targets = state.nudge_targets(&targets);
    if targets.is_empty() {
        return;
    }
    let state = state.clone();
    // Short-lived and bounded (three rounds); not tracked, it ends on its own.
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        for at in NUDGE_ROUNDS {
            tokio::time::sleep_until(start + at).await;
            state.nudge(&targets, &nonce).await;
        }
    });
}

fn spawn_reply(state: &Arc<DiscoveryState>, to: NodeId, nonce: [u8; 16]) {
    let Some(mqtt) = state.mqtt.clone() else {
        return;
    };
    // Bounded: a reply is republished until acknowledged, so a flood of introductions must
    // not turn into a flood of publishes (the nudges still go out).
    let Ok(permit) = state.replies.clone().try_acquire_owned() else {
        return;
    };
    let reply = Introduction {
        kind: IntroKind::Reply,
        to,
        time_ms: unix_ms(),
        nonce,
        candidates: state.candidates(),
    };
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(e) = mqtt
            .send_control(to, &reply.encode())
            .await
            .map(|report| report.acked)
        {
            tracing::debug!("introduction reply to {} failed: {e}", to.short());
        }
    });
}
