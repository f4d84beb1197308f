//! The simulated network: a virtual clock, an event queue, and links with latency and loss
//! between [`KadNode`] cores.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use keywire_proto::kad::{KadEvent, KadNode, Timestamp};
use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha8Rng;

pub(crate) struct SimNode {
    pub(crate) core: KadNode,
    pub(crate) addr: SocketAddr,
    /// This node's share of every link's one-way delay (its access network).
    latency: Duration,
    scheduled: Option<Timestamp>,
    timer_gen: u64,
}

enum Event<S> {
    Datagram {
        to: SocketAddr,
        from: SocketAddr,
        payload: Vec<u8>,
    },
    Timer {
        slot: usize,
        generation: u64,
    },
    Scenario(S),
}

/// Counters of traffic on the simulated links.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Traffic {
    /// UDP payload bytes (DHT payload plus the 2-byte control header).
    pub(crate) bytes: u64,
    pub(crate) datagrams: u64,
    pub(crate) lost: u64,
    /// Datagrams by DHT message type (the payload's second byte).
    pub(crate) by_type: [u64; 256],
}

pub(crate) struct Net<S> {
    pub(crate) now: Timestamp,
    pub(crate) rng: ChaCha8Rng,
    queue: BTreeMap<(Timestamp, u64), Event<S>>,
    seq: u64,
    pub(crate) nodes: Vec<Option<SimNode>>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Probability that a datagram is lost, in millionths.
    loss_ppm: u64,
    pub(crate) traffic: Traffic,
    /// Events from the cores, for the scenario to read.
    pub(crate) events: Vec<(usize, KadEvent)>,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            bytes: 0,
            datagrams: 0,
            lost: 0,
            by_type: [0; 256],
        }
    }
}

impl<S> Net<S> {
    pub(crate) fn new(start: Timestamp, rng: ChaCha8Rng, loss: f64) -> Self {
        Self {
            now: start,
            rng,
            queue: BTreeMap::new(),
            seq: 0,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            loss_ppm: (loss * 1e6) as u64,
            traffic: Traffic::default(),
            events: Vec::new(),
        }
    }

    fn schedule(&mut self, at: Timestamp, event: Event<S>) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    pub(crate) fn schedule_scenario(&mut self, at: Timestamp, event: S) {
        self.schedule(at, Event::Scenario(event));
    }

    /// Adds a node with a random access latency of 5–40 ms; returns its slot.
    pub(crate) fn add_node(&mut self, core: KadNode, addr: SocketAddr) -> usize {
        let latency = Duration::from_millis(5 + self.rng.next_u64() % 36);
        let slot = self.nodes.len();
        self.nodes.push(Some(SimNode {
            core,
            addr,
            latency,
            scheduled: None,
            timer_gen: 0,
        }));
        self.by_addr.insert(addr, slot);
        self.flush(slot);
        slot
    }

    /// The node leaves without notice: its datagrams in flight reach nobody.
    pub(crate) fn remove_node(&mut self, slot: usize) {
        if let Some(node) = self.nodes[slot].take() {
            self.by_addr.remove(&node.addr);
        }
    }

    pub(crate) fn node(&mut self, slot: usize) -> Option<&mut KadNode> {
        self.nodes[slot].as_mut().map(|n| &mut n.core)
    }

    pub(crate) fn addr(&self, slot: usize) -> Option<SocketAddr> {
        self.nodes[slot].as_ref().map(|n| n.addr)
    }

    /// Carries a node's transmits onto the links, collects its events, re-arms its timer.
    pub(crate) fn flush(&mut self, slot: usize) {
        let now = self.now;
        let Some(node) = self.nodes[slot].as_mut() else {
            return;
        };
        let from = node.addr;
        let mut out = Vec::new();
        while let Some(t) = node.core.poll_transmit() {
            out.push((t, node.latency));
        }
        while let Some(e) = node.core.poll_event() {
            self.events.push((slot, e));
        }
        let next = node.core.poll_timeout();
        let mut rearm = None;
        if let Some(t) = next {
            if node.scheduled.is_none_or(|s| t < s) {
                node.scheduled = Some(t);
                node.timer_gen += 1;
                rearm = Some((t.max(now), node.timer_gen));
            }
        }
        if let Some((at, generation)) = rearm {
            self.schedule(at, Event::Timer { slot, generation });
        }
        for (t, own_latency) in out {
            self.traffic.datagrams += 1;
            self.traffic.bytes += t.payload.len() as u64 + 2;
            if let Some(kind) = t.payload.get(1) {
                self.traffic.by_type[usize::from(*kind)] += 1;
            }
            if self.rng.next_u64() % 1_000_000 < self.loss_ppm {
                self.traffic.lost += 1;
                continue;
            }
            let far = self
                .by_addr
                .get(&t.to)
                .and_then(|s| self.nodes[*s].as_ref())
                .map_or(Duration::from_millis(20), |n| n.latency);
            let jitter = Duration::from_micros(self.rng.next_u64() % 5000);
            let at = now + own_latency + far + jitter;
            self.schedule(
                at,
                Event::Datagram {
                    to: t.to,
                    from,
                    payload: t.payload,
                },
            );
        }
    }

    /// Runs until the next scenario event (returned) or until the queue is empty (`None`).
    pub(crate) fn run_until_scenario(&mut self) -> Option<S> {
        while let Some(((at, _), event)) = self.queue.pop_first() {
            self.now = self.now.max(at);
            match event {
                Event::Scenario(s) => return Some(s),
                Event::Datagram { to, from, payload } => {
                    let Some(&slot) = self.by_addr.get(&to) else {
                        continue;
                    };
                    if let Some(node) = self.nodes[slot].as_mut() {
                        node.core.handle_datagram(self.now, from, &payload);
                        self.flush(slot);
                    }
                }
                Event::Timer { slot, generation } => {
                    let now = self.now;
                    let Some(node) = self.nodes[slot].as_mut() else {
                        continue;
                    };
                    if node.timer_gen != generation {
                        continue;
                    }
                    node.scheduled = None;
                    node.core.handle_timeout(now);
                    self.flush(slot);
                }
            }
        }
        None
    }
}
