//! The DHT under churn: the scenario of issue 10, measured.
//!
//! Churn model: after the initial joins, every simulated minute `churn_per_hour / 60` of the
//! network leaves without notice (a random live node each; fractions carry over) and as many
//! new nodes join, each bootstrapping from a random live server-mode node. Every node
//! publishes its address record on joining; records live 1 h and are republished every
//! 20 min (the core's defaults). Every link loses `loss` of its datagrams; one-way delay is
//! the sum of both ends' access latency (5–40 ms each) plus up to 5 ms jitter.
//!
//! After `warmup`, `lookups` record lookups for random live keys (whose record was stored)
//! run from random live nodes, spread over `lookup_window` while churn goes on. A lookup
//! succeeds if it returns the key's freshest stored record (sequence number at least the one
//! last acknowledged when the lookup started) within [`MAX_SUCCESS_ROUNDS`] rounds.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use keywire_proto::kad::node::ModeSetting;
use keywire_proto::kad::{KadConfig, KadEvent, KadNode, LookupId, Mode, Timestamp};
use keywire_proto::{NodeId, SecretKey};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dht_net::Net;
use crate::stats::quantile;

/// Rounds within which a lookup must find the freshest record to count as a success.
pub const MAX_SUCCESS_ROUNDS: u32 = 5;
const MINUTE: Duration = Duration::from_secs(60);
/// The simulated clock starts here (2023-11-14), so record times look like real ones.
const EPOCH: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

/// A DHT simulation.
#[derive(Debug, Clone)]
pub struct DhtScenario {
    /// Nodes in the network (kept constant under churn).
    pub nodes: usize,
    /// RNG seed: same seed, same run.
    pub seed: u64,
    /// Fraction of the network replaced per hour (0.10 = 10 %).
    pub churn_per_hour: f64,
    /// Time before measuring lookups (including the initial joins).
    pub warmup: Duration,
    /// The initial nodes join evenly over this time.
    pub join_spread: Duration,
    /// Record lookups to measure.
    pub lookups: usize,
    /// Lookups are spread over this time after the warm-up.
    pub lookup_window: Duration,
    /// Datagram loss probability on every link.
    pub loss: f64,
    /// Nodes forced into server mode (the first to join, like public gates); the others find
    /// out their reachability from their peers.
    pub gates: usize,
    /// Pub/sub topics tried (each with 5 subscribers and one publication).
    pub pubsub_topics: usize,
    /// Core settings.
    pub kad: KadConfig,
}

impl DhtScenario {
    /// The scenario at `nodes` nodes: 10 % churn per hour, 1 h warm-up, 1 % loss.
    pub fn churn10(nodes: usize, lookups: usize) -> Self {
        Self {
            nodes,
            seed: 1,
            churn_per_hour: 0.10,
            warmup: Duration::from_secs(3600),
            join_spread: Duration::from_secs(600),
            lookups,
            lookup_window: Duration::from_secs(1800),
            loss: 0.01,
            gates: 3,
            pubsub_topics: 20,
            kad: KadConfig::default(),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct DhtReport {
    /// Network size.
    pub nodes: usize,
    /// Lookups measured (finished, source still alive).
    pub lookups: usize,
    /// Of those, found the freshest record within [`MAX_SUCCESS_ROUNDS`].
    pub successes: usize,
    /// Finished without any record.
    pub no_record: usize,
    /// Found only an older record.
    pub stale: usize,
    /// Found it, but in more rounds than allowed.
    pub too_slow: usize,
    /// Lookups whose source left before they finished (not counted).
    pub aborted: usize,
    /// Median rounds per lookup.
    pub hops_median: u32,
    /// 99th-percentile rounds per lookup.
    pub hops_p99: u32,
    /// Mean requests per lookup.
    pub messages_mean: f64,
    /// Median requests per lookup.
    pub messages_median: u32,
    /// UDP payload bytes sent per node per minute in the 15 minutes before the lookups
    /// (everything nodes send when nobody asks them anything: joins under churn, bucket
    /// refreshes, liveness checks, republication).
    pub maintenance_bytes_per_node_minute: f64,
    /// Datagrams per node per minute in the same window.
    pub maintenance_datagrams_per_node_minute: f64,
    /// Server-mode nodes at the end.
    pub servers: usize,
    /// Mean routing-table size at the end.
    pub mean_table: f64,
    /// Pub/sub: subscriber deliveries expected and received.
    pub pubsub_expected: usize,
    /// Deliveries received.
    pub pubsub_delivered: usize,
    /// Deliveries whose observed address was the publisher's real one.
    pub pubsub_observed_right: usize,
    /// Nodes that ever joined.
    pub joined_total: usize,
    /// Datagrams lost on links.
    pub lost: u64,
}

impl DhtReport {
    /// Fraction of lookups that succeeded.
    pub fn success_rate(&self) -> f64 {
        if self.lookups == 0 {
            return 0.0;
        }
        self.successes as f64 / self.lookups as f64
    }
}

impl fmt::Display for DhtReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nodes {} (joined {}), lookups {}: success {:.4} (no record {}, stale {}, slow {}, \
             aborted {}), hops median {} p99 {}, messages mean {:.1} median {}, maintenance \
             {:.0} B / {:.1} datagrams per node-minute, servers {}, mean table {:.1}, pubsub \
             {}/{} (observed right {}), lost {}",
            self.nodes,
            self.joined_total,
            self.lookups,
            self.success_rate(),
            self.no_record,
            self.stale,
            self.too_slow,
            self.aborted,
            self.hops_median,
            self.hops_p99,
            self.messages_mean,
            self.messages_median,
            self.maintenance_bytes_per_node_minute,
            self.maintenance_datagrams_per_node_minute,
            self.servers,
            self.mean_table,
            self.pubsub_delivered,
            self.pubsub_expected,
            self.pubsub_observed_right,
            self.lost,
        )
    }
}

enum Step {
    Join,
    Churn,
    Lookup,
    WindowStart,
    WindowEnd,
    Subscribe(usize),
    Publish(usize),
    End,
}

struct NodeInfo {
    node_id: NodeId,
    stored_seq: Option<u64>,
}

struct Run {
    scenario: DhtScenario,
    net: Net<Step>,
    info: Vec<NodeInfo>,
    alive: Vec<usize>,
    next_ip: u32,
    churn_carry: f64,
    pending: BTreeMap<(usize, LookupId), u64>,
    hops: Vec<u32>,
    messages: Vec<u32>,
    window_start: (u64, u64),
    topics: Vec<Option<(Vec<usize>, SocketAddr)>>,
    report: DhtReport,
}

/// Runs a scenario to the end.
pub fn run(scenario: &DhtScenario) -> DhtReport {
    let rng = ChaCha8Rng::seed_from_u64(scenario.seed);
    let mut run = Run {
        scenario: scenario.clone(),
        net: Net::new(EPOCH, rng, scenario.loss),
        info: Vec::new(),
        alive: Vec::new(),
        next_ip: 0x0B00_0001,
        churn_carry: 0.0,
        pending: BTreeMap::new(),
        hops: Vec::new(),
        messages: Vec::new(),
        window_start: (0, 0),
        topics: vec![None; scenario.pubsub_topics],
        report: DhtReport {
            nodes: scenario.nodes,
            ..DhtReport::default()
        },
    };
    run.schedule_all();
    while let Some(step) = run.net.run_until_scenario() {
        run.take_events();
        if run.step(step) {
            break;
        }
        run.take_events();
    }
    run.finish()
}

impl Run {
    fn schedule_all(&mut self) {
        let s = &self.scenario;
        let (nodes, spread, warmup, window) = (s.nodes, s.join_spread, s.warmup, s.lookup_window);
        for i in 0..nodes {
            let at = EPOCH + spread.mul_f64(i as f64 / nodes as f64);
            self.net.schedule_scenario(at, Step::Join);
        }
        let mut t = EPOCH + spread;
        while t < EPOCH + warmup + window {
            self.net.schedule_scenario(t, Step::Churn);
            t = t + MINUTE;
        }
        let measure = EPOCH + warmup;
        self.net
            .schedule_scenario(measure - MINUTE * 15, Step::WindowStart);
        self.net.schedule_scenario(measure, Step::WindowEnd);
        for i in 0..s.lookups {
            let at = measure + window.mul_f64(i as f64 / s.lookups.max(1) as f64);
            self.net.schedule_scenario(at, Step::Lookup);
        }
        for topic in 0..s.pubsub_topics {
            let at = measure + window.mul_f64(topic as f64 / s.pubsub_topics as f64);
            self.net.schedule_scenario(at, Step::Subscribe(topic));
            self.net
                .schedule_scenario(at + MINUTE, Step::Publish(topic));
        }
        // Lookups time out within seconds; three minutes more drains every one of them and
        // the last publication.
        self.net
            .schedule_scenario(measure + window + MINUTE * 3, Step::End);
    }

    fn random_alive(&mut self) -> Option<usize> {
        if self.alive.is_empty() {
            return None;
        }
        let i = (self.net.rng.next_u64() % self.alive.len() as u64) as usize;
        Some(self.alive[i])
    }

    fn step(&mut self, step: Step) -> bool {
        let now = self.net.now;
        match step {
            Step::Join => self.join(),
            Step::Churn => self.churn(),
            Step::Lookup => self.start_lookup(),
            Step::WindowStart => {
                self.window_start = (self.net.traffic.bytes, self.net.traffic.datagrams);
            }
            Step::WindowEnd => {
                let minutes = 15.0 * self.alive.len() as f64;
                let bytes = self.net.traffic.bytes - self.window_start.0;
                let datagrams = self.net.traffic.datagrams - self.window_start.1;
                self.report.maintenance_bytes_per_node_minute = bytes as f64 / minutes;
                self.report.maintenance_datagrams_per_node_minute = datagrams as f64 / minutes;
            }
            Step::Subscribe(topic) => {
                let mut subscribers = Vec::new();
                for _ in 0..5 {
                    if let Some(slot) = self.random_alive().filter(|s| !subscribers.contains(s)) {
                        if let Some(core) = self.net.node(slot) {
                            if core.subscribe(now, topic_bytes(topic)).is_ok() {
                                subscribers.push(slot);
                            }
                        }
                        self.net.flush(slot);
                    }
                }
                self.topics[topic] = Some((subscribers, SocketAddr::from(([0, 0, 0, 0], 0))));
            }
            Step::Publish(topic) => {
                let Some(publisher) = self.random_alive() else {
                    return false;
                };
                let addr = self.net.addr(publisher);
                if let (Some(core), Some(addr)) = (self.net.node(publisher), addr) {
                    if core
                        .publish(now, topic_bytes(topic), b"hello".to_vec())
                        .is_ok()
                    {
                        if let Some((subs, publisher_addr)) = &mut self.topics[topic] {
                            *publisher_addr = addr;
                            subs.retain(|s| *s != publisher);
                        }
                    }
                }
                self.net.flush(publisher);
                if let Some((subs, _)) = &self.topics[topic] {
                    let live = subs
                        .iter()
                        .filter(|s| self.net.nodes[**s].is_some())
                        .count();
                    self.report.pubsub_expected += live;
                }
            }
            Step::End => return true,
        }
        false
    }

    fn join(&mut self) {
        let now = self.net.now;
        let mut seed = [0u8; 32];
        self.net.rng.fill_bytes(&mut seed);
        let key = SecretKey::from_seed(seed);
        let node_id = key.node_id();
        // Distinct /24s: one public address per node, as on the real internet.
        let ip = Ipv4Addr::from(self.next_ip);
        self.next_ip += 256 + (self.net.rng.next_u64() % 7) as u32;
        let addr = SocketAddr::from((ip, 4433));
        let mut config = self.scenario.kad.clone();
        config.mode = if self.info.len() < self.scenario.gates {
            ModeSetting::Server
        } else {
            ModeSetting::Auto
        };
        let servers: Vec<SocketAddr> = self
            .alive
            .iter()
            .filter_map(|s| self.net.nodes[*s].as_ref())
            .filter(|n| n.core.mode() == Mode::Server)
            .map(|n| n.addr)
            .collect();
        self.net.rng.fill_bytes(&mut seed);
        let mut core = KadNode::new(key, config, seed, now);
        if !servers.is_empty() {
            let pick = servers[(self.net.rng.next_u64() % servers.len() as u64) as usize];
            core.bootstrap(now, &[pick]);
        }
        let _ = core.publish_record(now, vec![addr], vec![]);
        let slot = self.net.add_node(core, addr);
        self.info.push(NodeInfo {
            node_id,
            stored_seq: None,
        });
        self.alive.push(slot);
        self.report.joined_total += 1;
    }

    fn churn(&mut self) {
        self.churn_carry += self.scenario.churn_per_hour * self.alive.len() as f64 / 60.0;
        let leaving = self.churn_carry.floor() as usize;
        self.churn_carry -= leaving as f64;
        for _ in 0..leaving {
            if let Some(slot) = self.random_alive() {
                self.alive.retain(|s| *s != slot);
                self.net.remove_node(slot);
            }
        }
        for _ in 0..leaving {
            self.join();
        }
    }

    fn start_lookup(&mut self) {
        let now = self.net.now;
        let Some(source) = self.random_alive() else {
            return;
        };
        let mut target = None;
        for _ in 0..20 {
            let Some(t) = self.random_alive() else { return };
            if t != source && self.info[t].stored_seq.is_some() {
                target = Some(t);
                break;
            }
        }
        let Some(target) = target else { return };
        let (key, expected) = (self.info[target].node_id, self.info[target].stored_seq);
        if let Some(core) = self.net.node(source) {
            if let Ok(id) = core.find_record(now, key) {
                self.pending.insert((source, id), expected.unwrap_or(0));
            }
        }
        self.net.flush(source);
    }

    fn take_events(&mut self) {
        for (slot, event) in std::mem::take(&mut self.net.events) {
            match event {
                KadEvent::RecordStored { seq, stored } if stored > 0 => {
                    self.info[slot].stored_seq = Some(seq);
                }
                KadEvent::LookupFinished {
                    id,
                    record,
                    rounds,
                    messages,
                    ..
                } => {
                    let Some(expected) = self.pending.remove(&(slot, id)) else {
                        continue;
                    };
                    self.report.lookups += 1;
                    self.messages.push(messages);
                    if record.is_none() && std::env::var_os("KW_SIM_DEBUG").is_some() {
                        self.debug_missing(slot, expected);
                    }
                    match record {
                        None => self.report.no_record += 1,
                        Some(r) if r.seq < expected => self.report.stale += 1,
                        Some(_) if rounds > MAX_SUCCESS_ROUNDS => self.report.too_slow += 1,
                        Some(_) => {
                            self.report.successes += 1;
                            self.hops.push(rounds);
                        }
                    }
                }
                KadEvent::Publication {
                    observed,
                    publication,
                    ..
                } => {
                    let topic = publication.topic[0] as usize;
                    if let Some(Some((subs, publisher))) = self.topics.get(topic) {
                        if std::env::var_os("KW_SIM_DEBUG").is_some() {
                            eprintln!("delivered topic {topic} to {slot}");
                        }
                        if subs.contains(&slot) {
                            self.report.pubsub_delivered += 1;
                            if observed == *publisher {
                                self.report.pubsub_observed_right += 1;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn debug_missing(&self, source: usize, expected: u64) {
        let now = self.net.now;
        let Some(target) = self
            .info
            .iter()
            .position(|i| i.stored_seq == Some(expected))
        else {
            return;
        };
        let key = self.info[target].node_id;
        let key_id = keywire_proto::kad::KadId::of_node(&key);
        let mut ranked: Vec<(keywire_proto::kad::Distance, bool, usize)> = self
            .alive
            .iter()
            .filter_map(|s| self.net.nodes[*s].as_ref().map(|n| (s, n)))
            .map(|(s, n)| {
                let d = keywire_proto::kad::KadId::of_node(&n.core.node_id()).distance(&key_id);
                (d, n.core.held_record(now, &key).is_some(), *s)
            })
            .collect();
        ranked.sort();
        let holders: Vec<usize> = ranked
            .iter()
            .enumerate()
            .filter(|(_, r)| r.1)
            .map(|(i, _)| i)
            .collect();
        let alive = self.net.nodes[target].is_some();
        eprintln!(
            "missing: source {source} target {target} alive {alive} holder ranks {holders:?}"
        );
    }

    fn finish(mut self) -> DhtReport {
        self.report.aborted = self.pending.len();
        self.report.hops_median = quantile(&self.hops, 0.5);
        self.report.hops_p99 = quantile(&self.hops, 0.99);
        self.report.messages_median = quantile(&self.messages, 0.5);
        self.report.messages_mean = if self.messages.is_empty() {
            0.0
        } else {
            self.messages.iter().map(|m| f64::from(*m)).sum::<f64>() / self.messages.len() as f64
        };
        let live: Vec<&KadNode> = self
            .alive
            .iter()
            .filter_map(|s| self.net.nodes[*s].as_ref())
            .map(|n| &n.core)
            .collect();
        self.report.servers = live.iter().filter(|c| c.mode() == Mode::Server).count();
        self.report.mean_table =
            live.iter().map(|c| c.status().contacts as f64).sum::<f64>() / live.len().max(1) as f64;
        self.report.lost = self.net.traffic.lost;
        if std::env::var_os("KW_SIM_DEBUG").is_some() {
            for c in &live {
                let st = c.stats();
                if st.forwards_limited + st.bad_records + st.queue_full > 0 {
                    eprintln!("stats {st:?}");
                }
            }
            for t in self.topics.iter().flatten() {
                eprintln!("topic subs {:?}", t.0);
            }
            for (kind, n) in self.net.traffic.by_type.iter().enumerate() {
                if *n > 0 {
                    eprintln!("type {kind:#04x}: {n}");
                }
            }
        }
        self.report
    }
}

/// Topic `i`'s bytes: its number in the first byte (so deliveries can be matched back).
fn topic_bytes(i: usize) -> [u8; 32] {
    let mut t = [0x7A; 32];
    t[0] = i as u8;
    t
}
