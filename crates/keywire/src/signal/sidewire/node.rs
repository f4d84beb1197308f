//! The sidewire-compatible node: one QoS 1 connection per broker, send, receive.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keywire_proto::sidewire::{
    encode_packet, ClaimRefused, RecentPayloads, SeenMessages, SidewireFields, SidewireKind,
    SidewirePublicKey, SidewireSecretKey, MAX_MESSAGE, QUEUE_ID_LEN,
};
use keywire_proto::signal::{BrokerId, TokenBucket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::metrics::{Counters, SidewireMetrics};
use super::SidewireError;
use crate::signal::health::HealthTable;
use crate::signal::link::{lock, take_token, Link, LinkContext, LinkState, PublishCounters};
use crate::signal::metrics::{inc, Counters as LinkCounters};
use crate::signal::{PoolConfig, SendReport, SignalConfig, WallClock};

/// How a sidewire node behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SidewireConfig {
    /// Broker connections (keep-alive, connect timeout, back-off, per-broker rate cap), the send
    /// timeout, the republish interval, the sender rate cap and the queue sizes: as for keywire's
    /// own signalling.
    pub signal: SignalConfig,
    /// A message is published on every connected broker at most this many times (sidewire peers
    /// deduplicate, but a polite peer does not flood shared brokers).
    pub publish_rounds: u32,
    /// Accepted message ids remembered for replay refusal; when full of unexpired ids, new
    /// messages are refused.
    pub seen_capacity: usize,
    /// Distinct texts remembered for the 130-second no-repeat rule; when full, `send` fails
    /// with `Busy`.
    pub recent_capacity: usize,
}

impl Default for SidewireConfig {
    fn default() -> Self {
        Self {
            signal: SignalConfig {
                // sidewire's own keep-alive: brokers that drop idle clients early treat both alike.
                keep_alive: Duration::from_secs(10),
                ..SignalConfig::default()
            },
            publish_rounds: 5,
            seen_capacity: 65_536,
            recent_capacity: 4096,
        }
    }
}

/// A message from a sidewire peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidewireReceived {
    /// The sender, proven by its signature.
    pub from: SidewirePublicKey,
    /// The text (sidewire sends ASCII; other bytes are passed through as received).
    pub message: Vec<u8>,
    /// The sender's queue id for this message.
    pub queue_id: [u8; QUEUE_ID_LEN],
    /// The sender's timestamp, Unix seconds.
    pub timestamp_secs: u64,
    /// The broker the first copy arrived through.
    pub broker: BrokerId,
}

type Pending = Mutex<HashMap<[u8; QUEUE_ID_LEN], (SidewirePublicKey, oneshot::Sender<BrokerId>)>>;

pub(crate) struct Inner {
    pub(crate) key: SidewireSecretKey,
    pub(crate) clock: Arc<dyn WallClock>,
    pub(crate) config: SidewireConfig,
    links: Vec<Arc<Link>>,
    link_counters: Arc<LinkCounters>,
    pub(crate) counters: Counters,
    pub(crate) pending: Pending,
    recent: Mutex<RecentPayloads>,
    pub(crate) seen: Mutex<SeenMessages>,
    sender_bucket: Mutex<TokenBucket>,
    pub(crate) deliver: mpsc::Sender<SidewireReceived>,
}

/// A peer of a sidewire network. Dropping it closes every broker connection.
pub struct SidewireNode {
    inner: Arc<Inner>,
    received: tokio::sync::Mutex<mpsc::Receiver<SidewireReceived>>,
    task: JoinHandle<()>,
}

impl SidewireNode {
    /// Connects to every broker of `pool` and subscribes there to this key's topic.
    ///
    /// `clock` is required: it stamps packets and checks their timestamps. Must be called inside
    /// a tokio runtime.
    pub fn start(
        key: SidewireSecretKey,
        pool: PoolConfig,
        config: SidewireConfig,
        clock: Arc<dyn WallClock>,
    ) -> Result<Self, SidewireError> {
        if pool.brokers().is_empty() {
            return Err(SidewireError::NoBrokers);
        }
        let signal = &config.signal;
        let (inbound_tx, inbound_rx) = mpsc::channel(signal.inbound_queue.max(1));
        let (deliver_tx, deliver_rx) = mpsc::channel(signal.receive_queue.max(1));
        let link_counters = Arc::new(LinkCounters::default());
        let ctx = Arc::new(LinkContext {
            own_topic: key.public_key().topic(),
            qos: rumqttc::QoS::AtLeastOnce,
            config: signal.clone(),
            inbound: inbound_tx,
            health: Arc::new(HealthTable::new(signal.backoff)),
            counters: link_counters.clone(),
        });
        let mut ids = BTreeSet::new();
        let links = pool
            .brokers()
            .iter()
            .filter(|spec| ids.insert(spec.id()))
            .map(|spec| {
                let link = Link::spawn(spec.clone(), ctx.clone());
                link.pinned.store(true, Ordering::Relaxed);
                link
            })
            .collect();
        let started_secs = clock.now().0 / 1000;
        let rate = signal.sender_rate;
        let inner = Arc::new(Inner {
            links,
            link_counters,
            counters: Counters::default(),
            pending: Mutex::new(HashMap::new()),
            recent: Mutex::new(RecentPayloads::new(config.recent_capacity)),
            seen: Mutex::new(SeenMessages::new(config.seen_capacity, started_secs)),
            sender_bucket: Mutex::new(TokenBucket::new(
                rate.rate,
                rate.burst,
                Instant::now().into_std(),
            )),
            deliver: deliver_tx,
            clock,
            config,
            key,
        });
        let task = tokio::spawn(super::inbound::run(inner.clone(), inbound_rx));
        Ok(Self {
            inner,
            received: tokio::sync::Mutex::new(deliver_rx),
            task,
        })
    }

    /// This node's sidewire address.
    pub fn public_key(&self) -> &SidewirePublicKey {
        self.inner.key.public_key()
    }

    /// Every broker connection and whether it is up (connected and subscribed) now.
    pub fn connections(&self) -> Vec<(BrokerId, bool)> {
        self.inner
            .links
            .iter()
            .map(|l| (l.spec.id(), l.state() == LinkState::Up))
            .collect()
    }

    /// Waits until at least `n` connections are up, or `timeout` passes; returns how many are.
    pub async fn wait_subscribed(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let up = self.connections().iter().filter(|(_, up)| *up).count();
            if up >= n || Instant::now() >= deadline {
                return up;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `text` to `dest` on every connected broker and waits for its ACK (up to the send
    /// timeout), republishing every `republish_interval`, at most `publish_rounds` times.
    pub async fn send(
        &self,
        dest: &SidewirePublicKey,
        text: &[u8],
    ) -> Result<SendReport, SidewireError> {
        let inner = &self.inner;
        if let Some(&b) = text.iter().find(|b| !b.is_ascii()) {
            return Err(SidewireError::NotAscii(b));
        }
        if text.len() > MAX_MESSAGE {
            return Err(SidewireError::TooLong(text.len()));
        }
        let started = Instant::now();
        let signal = &inner.config.signal;
        let deadline = started + signal.send_timeout;
        take_token(&inner.sender_bucket).await;
        lock(&inner.recent)
            .claim(text, Instant::now().into_std())
            .map_err(|refused| match refused {
                ClaimRefused::Repeated(wait) => SidewireError::RepeatedText(wait),
                _ => SidewireError::Busy,
            })?;
        let mut claim = TextClaim {
            inner,
            text,
            keep: false,
        };
        // sidewire's SmartPipe picks a fresh random queue per message, sequence 0.
        let queue_id: [u8; QUEUE_ID_LEN] = rand::random();
        let packet = encode_packet(
            &inner.key,
            &SidewireFields {
                queue_id,
                sequence: 0,
                timestamp_secs: inner.now_secs(),
                kind: SidewireKind::Message,
                message: text.to_vec(),
            },
        );
        let (ack_tx, mut ack_rx) = oneshot::channel();
        {
            let mut pending = lock(&inner.pending);
            if pending.len() >= signal.max_pending {
                return Err(SidewireError::Busy);
            }
            pending.insert(queue_id, (dest.clone(), ack_tx));
        }
        let _pending = PendingGuard(inner, queue_id);
        let topic = dest.topic();
        let mut tried = BTreeSet::new();
        let mut rounds = 0;
        let via = loop {
            if rounds < inner.config.publish_rounds {
                let mut published = false;
                for link in &inner.links {
                    if inner.publish(link, &topic, &packet) {
                        published = true;
                        tried.insert(link.spec.id());
                    }
                }
                // A round counts once something went out: brokers still connecting at the
                // first attempt do not use up the retransmission budget.
                if published {
                    rounds += 1;
                    if !claim.keep {
                        claim.keep = true;
                        inc(&inner.counters.sends);
                    }
                }
            }
            let wait = if rounds == 0 {
                Duration::from_millis(20)
            } else {
                signal.republish_interval
            };
            tokio::select! {
                acked = &mut ack_rx => break acked.ok(),
                _ = tokio::time::sleep_until(deadline) => break None,
                _ = tokio::time::sleep(wait) => {}
            }
        };
        if !claim.keep {
            return Err(SidewireError::NoBrokerUp);
        }
        if via.is_some() {
            inc(&inner.counters.sends_acked);
        } else {
            inc(&inner.counters.sends_unacked);
        }
        Ok(SendReport {
            acked: via.is_some(),
            via,
            elapsed: started.elapsed(),
            brokers_tried: tried.len(),
        })
    }

    /// The next message from a sidewire peer; `None` once the node is shut down.
    pub async fn recv(&self) -> Option<SidewireReceived> {
        self.received.lock().await.recv().await
    }

    /// A copy of the counters.
    pub fn metrics(&self) -> SidewireMetrics {
        let mut m = self.inner.counters.snapshot();
        let links = self.inner.link_counters.snapshot();
        m.broker_connects = links.broker_connects;
        m.broker_failures = links.broker_failures;
        m.inbound_dropped_full = links.inbound_dropped_full;
        m
    }
}

impl Drop for SidewireNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Inner {
    pub(crate) fn now_secs(&self) -> u64 {
        self.clock.now().0 / 1000
    }

    pub(crate) fn link(&self, id: &BrokerId) -> Option<&Arc<Link>> {
        self.links.iter().find(|l| l.spec.id() == *id)
    }

    /// Publishes on one connection if it is up; counts what happened.
    pub(crate) fn publish(&self, link: &Link, topic: &str, bytes: &[u8]) -> bool {
        PublishCounters {
            published: &self.counters.publishes,
            rate_limited: &self.counters.publishes_rate_limited,
            queue_full: &self.counters.publishes_queue_full,
        }
        .count(link.publish(topic, bytes))
    }
}

/// Removes a send's pending entry however the send ends (including cancellation).
struct PendingGuard<'a>(&'a Inner, [u8; QUEUE_ID_LEN]);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.pending).remove(&self.1);
    }
}

/// The no-repeat claim on a text: released unless the text actually went out.
struct TextClaim<'a> {
    inner: &'a Inner,
    text: &'a [u8],
    keep: bool,
}

impl Drop for TextClaim<'_> {
    fn drop(&mut self) {
        if !self.keep {
            lock(&self.inner.recent).forget(self.text);
        }
    }
}
