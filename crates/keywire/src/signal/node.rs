//! The public signalling node: start, send, receive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keywire_proto::signal::{
    seal, BrokerId, BrokerSpec, Envelope, MessageType, Opener, QueueId, ReplayGuard, SignalTopic,
    TokenBucket, UnixMillis, MAX_PAYLOAD,
};
use keywire_proto::{NetworkId, NodeId, SecretKey};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::signal::health::HealthTable;
use crate::signal::link::{lock, take_token, LinkContext, LinkState, PublishCounters};
use crate::signal::metrics::{inc, Counters};
use crate::signal::pool::BrokerPool;
use crate::signal::{PoolConfig, SignalConfig, SignalError, SignalMetrics, WallClock};

/// A message delivered to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sender, proven by its signature.
    pub from: NodeId,
    /// [`MessageType::Data`] or [`MessageType::Control`].
    pub kind: MessageType,
    /// The application bytes.
    pub payload: Vec<u8>,
    /// The sender's timestamp.
    pub timestamp: UnixMillis,
    /// The broker it arrived through (the first copy).
    pub broker: BrokerId,
}

/// The outcome of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendReport {
    /// Whether the destination acknowledged within the timeout.
    pub acked: bool,
    /// The broker whose acknowledgement came first.
    pub via: Option<BrokerId>,
    /// From the call to the acknowledgement (or the timeout).
    pub elapsed: Duration,
    /// Brokers the envelope was published to (or attempted).
    pub brokers_tried: usize,
}

/// Pending sends by sequence number: who should acknowledge, and who is waiting.
type Pending = Mutex<HashMap<u64, (NodeId, oneshot::Sender<BrokerId>)>>;

pub(crate) struct Inner {
    pub(crate) key: SecretKey,
    pub(crate) opener: Opener,
    pub(crate) me: NodeId,
    pub(crate) network: NetworkId,
    pub(crate) clock: Arc<dyn WallClock>,
    pub(crate) config: SignalConfig,
    pub(crate) pool: BrokerPool,
    pub(crate) counters: Arc<Counters>,
    /// Random per process: a restarted sender never repeats a (queue, sequence) pair.
    pub(crate) queue: QueueId,
    next_sequence: AtomicU64,
    pub(crate) pending: Pending,
    sender_bucket: Mutex<TokenBucket>,
    pub(crate) replay: Mutex<ReplayGuard>,
    pub(crate) deliver: mpsc::Sender<Received>,
}

/// A node of the MQTT signalling channel. Dropping it closes every broker connection.
pub struct SignalNode {
    inner: Arc<Inner>,
    received: tokio::sync::Mutex<mpsc::Receiver<Received>>,
    tasks: Vec<JoinHandle<()>>,
}

impl SignalNode {
    /// Starts a node: subscribes at its own rendezvous set and begins accepting envelopes.
    ///
    /// `clock` is required (no implicit fallback): it stamps envelopes and checks their
    /// timestamps. Must be called inside a tokio runtime.
    pub fn start(
        key: SecretKey,
        network: NetworkId,
        pool: PoolConfig,
        config: SignalConfig,
        clock: Arc<dyn WallClock>,
    ) -> Result<Self, SignalError> {
        if pool.brokers().is_empty() {
            return Err(SignalError::NoBrokers);
        }
        let me = key.node_id();
        let own = SignalTopic::new(&network, &me);
        let counters = Arc::new(Counters::default());
        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_queue.max(1));
        let (deliver_tx, deliver_rx) = mpsc::channel(config.receive_queue.max(1));
        let ctx = Arc::new(LinkContext {
            own_topic: own.mqtt_topic(),
            qos: rumqttc::QoS::AtMostOnce,
            config: config.clone(),
            inbound: inbound_tx,
            health: Arc::new(HealthTable::new(config.backoff)),
            counters: counters.clone(),
        });
        let now = Instant::now();
        let rate = config.sender_rate;
        let inner = Arc::new(Inner {
            me,
            network,
            replay: Mutex::new(ReplayGuard::new(config.replay, clock.now())),
            clock,
            pool: BrokerPool::new(pool.brokers().to_vec(), own, ctx),
            counters,
            queue: QueueId(rand::random()),
            next_sequence: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            sender_bucket: Mutex::new(TokenBucket::new(rate.rate, rate.burst, now.into_std())),
            deliver: deliver_tx,
            config,
            opener: Opener::new(&key),
            key,
        });
        inner.pool.maintain(now);
        let tasks = vec![
            tokio::spawn(crate::signal::inbound::run(inner.clone(), inbound_rx)),
            tokio::spawn(maintenance(Arc::downgrade(&inner))),
        ];
        Ok(Self {
            inner,
            received: tokio::sync::Mutex::new(deliver_rx),
            tasks,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.me
    }

    /// Brokers carrying this node's own subscription, with whether each is up now. Advertise
    /// the live ones as hints so that peers with another pool can still reach this node.
    pub fn own_brokers(&self) -> Vec<(BrokerSpec, bool)> {
        self.inner.pool.own_brokers()
    }

    /// Waits until at least `n` own subscriptions are up, or `timeout` passes; returns how many
    /// are up.
    pub async fn wait_subscribed(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let up = self.own_brokers().iter().filter(|(_, up)| *up).count();
            if up >= n || Instant::now() >= deadline {
                return up;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Brokers to try first when sending to `dest` (what `dest` advertised), cached for
    /// `hint_expiry`; at most 6 are kept.
    pub fn add_hints(&self, dest: NodeId, brokers: &[BrokerSpec]) {
        self.inner.pool.remember(dest, brokers, Instant::now());
    }

    /// Sends `payload` to `dest` and waits for its acknowledgement (up to `send_timeout`).
    pub async fn send(&self, dest: NodeId, payload: &[u8]) -> Result<SendReport, SignalError> {
        self.send_kind(dest, MessageType::Data, payload).await
    }

    /// Sends keywire control traffic; acknowledged like data, delivered with its kind.
    pub async fn send_control(
        &self,
        dest: NodeId,
        payload: &[u8],
    ) -> Result<SendReport, SignalError> {
        self.send_kind(dest, MessageType::Control, payload).await
    }

    /// The next delivered message; `None` once the node is shut down.
    pub async fn recv(&self) -> Option<Received> {
        self.received.lock().await.recv().await
    }

    /// A copy of the counters.
    pub fn metrics(&self) -> SignalMetrics {
        self.inner.counters.snapshot()
    }

    /// Open broker connections (own subscriptions and outbound ones).
    pub fn connection_count(&self) -> usize {
        self.inner.pool.link_count()
    }

    /// Every broker connection as (broker, carries the own subscription, up now).
    pub fn connections(&self) -> Vec<(BrokerId, bool, bool)> {
        self.inner.pool.connections()
    }

    async fn send_kind(
        &self,
        dest: NodeId,
        kind: MessageType,
        payload: &[u8],
    ) -> Result<SendReport, SignalError> {
        let inner = &self.inner;
        if payload.len() > MAX_PAYLOAD {
            return Err(SignalError::PayloadTooLarge(payload.len()));
        }
        let started = Instant::now();
        take_token(&inner.sender_bucket).await;
        let sequence = inner.next_sequence.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope {
            kind,
            source: inner.me,
            destination: dest,
            queue: inner.queue,
            sequence,
            timestamp: inner.clock.now(),
            payload: payload.to_vec(),
        };
        let sealed = Arc::new(seal(&inner.key, &envelope, &mut rand::rngs::OsRng)?);
        let (ack_tx, mut ack_rx) = oneshot::channel();
        {
            let mut pending = lock(&inner.pending);
            if pending.len() >= inner.config.max_pending {
                return Err(SignalError::Busy);
            }
            pending.insert(sequence, (dest, ack_tx));
        }
        let _cleanup = PendingGuard(inner, sequence);
        inc(&inner.counters.sends);
        let topic = SignalTopic::new(&inner.network, &dest);
        let targets = inner.pool.targets(&topic, &dest, started);
        if targets.primary.is_empty() && targets.spares.is_empty() {
            return Err(SignalError::NoBrokers);
        }
        let mqtt_topic: Arc<str> = topic.mqtt_topic().into();
        let mut spares = targets.spares.into_iter();
        let mut publishers = JoinSet::new();
        let mut tried = 0;
        for spec in targets.primary {
            tried += 1;
            publishers.spawn(publish_until_cancelled(
                inner.clone(),
                spec,
                mqtt_topic.clone(),
                sealed.clone(),
            ));
        }
        let deadline = tokio::time::sleep(inner.config.send_timeout);
        tokio::pin!(deadline);
        let via = loop {
            tokio::select! {
                acked = &mut ack_rx => break acked.ok(),
                _ = &mut deadline => break None,
                Some(_) = publishers.join_next() => {
                    // A publisher ends only when its broker failed: bring in the next in rank.
                    if let Some(spec) = spares.next() {
                        tried += 1;
                        publishers.spawn(publish_until_cancelled(
                            inner.clone(), spec, mqtt_topic.clone(), sealed.clone(),
                        ));
                    }
                }
            }
        };
        // First acknowledgement wins: the other publishers stop here.
        publishers.abort_all();
        let acked = via.is_some();
        if let Some(id) = &via {
            inc(&inner.counters.sends_acked);
            if let Some(link) = inner.pool.existing(id) {
                inner
                    .pool
                    .remember(dest, std::slice::from_ref(&link.spec), Instant::now());
            }
        } else {
            inc(&inner.counters.sends_unacked);
        }
        Ok(SendReport {
            acked,
            via,
            elapsed: started.elapsed(),
            brokers_tried: tried,
        })
    }
}

impl Drop for SignalNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.inner.pool.close_all();
    }
}

impl Inner {
    pub(crate) fn publish_counters(&self) -> PublishCounters<'_> {
        PublishCounters {
            published: &self.counters.publishes,
            rate_limited: &self.counters.publishes_rate_limited,
            queue_full: &self.counters.publishes_queue_full,
        }
    }

    pub(crate) fn next_sequence(&self) -> u64 {
        self.next_sequence.fetch_add(1, Ordering::Relaxed)
    }
}

/// Removes a send's pending entry however the send ends (including cancellation).
struct PendingGuard<'a>(&'a Inner, u64);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.pending).remove(&self.1);
    }
}

/// Publishes the same sealed bytes on one broker every `republish_interval` until cancelled;
/// returns if the broker cannot be reached.
async fn publish_until_cancelled(
    inner: Arc<Inner>,
    spec: BrokerSpec,
    topic: Arc<str>,
    sealed: Arc<Vec<u8>>,
) {
    let Some(link) = inner.pool.link(&spec) else {
        return;
    };
    loop {
        link.touch();
        if !link.wait_up().await {
            return;
        }
        let result = link.publish(&topic, &sealed);
        if result == Err(crate::signal::link::PublishSkip::NotUp) {
            if link.state() == LinkState::Down {
                return;
            }
            continue;
        }
        inner.publish_counters().count(result);
        tokio::time::sleep(inner.config.republish_interval).await;
    }
}

async fn maintenance(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let tick = inner.config.tick;
        inner.pool.maintain(Instant::now());
        drop(inner);
        tokio::time::sleep(tick).await;
    }
}
