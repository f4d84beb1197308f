//! One MQTT connection to one broker: connects, subscribes to the node's own topic, forwards
//! incoming publishes, reconnects with back-off.
//!
//! Every connection subscribes to the node's own topic, not only those of its rendezvous set:
//! a receiver acknowledges on the broker a message came in on, and that broker is then one the
//! sender is connected (and so subscribed) to. SUBSCRIBE is sent before any PUBLISH on the same
//! connection, and the broker handles one connection's packets in order, so the acknowledgement
//! cannot overtake the subscription.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keywire_proto::signal::{BrokerId, BrokerSpec, TokenBucket, MAX_SEALED};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::signal::health::HealthTable;
use crate::signal::metrics::{inc, Counters};
use crate::signal::SignalConfig;

/// Requests buffered per connection inside rumqttc; publishes beyond it are skipped.
const REQUEST_QUEUE: usize = 256;
/// Largest incoming MQTT packet accepted. Larger than any envelope so that oversized ones
/// reach the envelope check and are counted; a packet beyond this makes rumqttc drop the
/// connection, which then reconnects with back-off (anyone may publish to our topic).
const MAX_INCOMING_PACKET: usize = 64 * 1024;

/// Whether a connection can carry publishes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// Connecting or reconnecting.
    Connecting,
    /// Connected and subscribed.
    Up,
    /// The last attempt failed; waiting for the back-off.
    Down,
}

/// An envelope that arrived on one of this node's connections.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) broker: BrokerId,
    pub(crate) bytes: Bytes,
}

/// Shared handle of a running connection task.
pub(crate) struct Link {
    pub(crate) spec: BrokerSpec,
    client: AsyncClient,
    state: watch::Receiver<LinkState>,
    bucket: Mutex<TokenBucket>,
    last_used: Mutex<Instant>,
    /// Carries this node's own subscription for the node's lifetime: exempt from the idle closer.
    pub(crate) pinned: AtomicBool,
    qos: QoS,
    task: JoinHandle<()>,
}

/// Why a publish was not handed to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublishSkip {
    NotUp,
    RateLimited,
    QueueFull,
}

/// What a connection task needs from its node.
pub(crate) struct LinkContext {
    pub(crate) own_topic: String,
    /// QoS of the subscription and of publishes: 0 for keywire's envelopes (the end-to-end ACK
    /// is what counts), 1 in sidewire compatibility (what sidewire peers use).
    pub(crate) qos: QoS,
    pub(crate) config: SignalConfig,
    pub(crate) inbound: mpsc::Sender<Inbound>,
    pub(crate) health: Arc<HealthTable>,
    pub(crate) counters: Arc<Counters>,
}

impl Link {
    /// Starts a connection task.
    pub(crate) fn spawn(spec: BrokerSpec, ctx: Arc<LinkContext>) -> Arc<Self> {
        let id = spec.id();
        let mut options = MqttOptions::new(client_id(), spec.host.clone(), spec.port);
        options
            .set_keep_alive(ctx.config.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(MAX_INCOMING_PACKET, MAX_SEALED + 512);
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        let mut net = NetworkOptions::new();
        // Signalling is latency-bound and tiny: Nagle would hold acknowledgements back.
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(ctx.config.connect_timeout_secs.max(1));
        eventloop.set_network_options(net);
        let (state_tx, state) = watch::channel(LinkState::Connecting);
        let now = Instant::now();
        let rate = ctx.config.broker_rate;
        let bucket = TokenBucket::new(rate.rate, rate.burst, now.into_std());
        let task_client = client.clone();
        let qos = ctx.qos;
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // Clean session: the subscription must be renewed on every connection.
                        if task_client
                            .try_subscribe(ctx.own_topic.clone(), ctx.qos)
                            .is_err()
                        {
                            tracing::debug!(broker = %id, "subscribe request queue full");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        inc(&ctx.counters.broker_connects);
                        let _ = state_tx.send(LinkState::Up);
                        ctx.health.success(&id);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic != ctx.own_topic {
                            continue;
                        }
                        let inbound = Inbound {
                            broker: id.clone(),
                            bytes: p.payload,
                        };
                        if ctx.inbound.try_send(inbound).is_err() {
                            inc(&ctx.counters.inbound_dropped_full);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(broker = %id, error = %e, "broker connection failed");
                        inc(&ctx.counters.broker_failures);
                        let _ = state_tx.send(LinkState::Down);
                        let wait = ctx.health.failure(&id, Instant::now());
                        tokio::time::sleep(wait).await;
                        // Requests queued while down are stale: drop them rather than send late.
                        eventloop.clean();
                        eventloop.pending.clear();
                        let _ = state_tx.send(LinkState::Connecting);
                    }
                }
            }
        });
        Arc::new(Self {
            spec,
            client,
            state,
            bucket: Mutex::new(bucket),
            last_used: Mutex::new(now),
            pinned: AtomicBool::new(false),
            qos,
            task,
        })
    }

    pub(crate) fn state(&self) -> LinkState {
        *self.state.borrow()
    }

    /// Waits until the connection is up, or reports that the last attempt failed.
    pub(crate) async fn wait_up(&self) -> bool {
        let mut rx = self.state.clone();
        loop {
            match *rx.borrow_and_update() {
                LinkState::Up => return true,
                LinkState::Down => return false,
                LinkState::Connecting => {}
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Publishes without waiting, at the connection's QoS.
    pub(crate) fn publish(&self, topic: &str, bytes: &[u8]) -> Result<(), PublishSkip> {
        if self.state() != LinkState::Up {
            return Err(PublishSkip::NotUp);
        }
        let now = Instant::now();
        *lock(&self.last_used) = now;
        if !lock(&self.bucket).try_take(now.into_std()) {
            return Err(PublishSkip::RateLimited);
        }
        self.client
            .try_publish(topic, self.qos, false, bytes.to_vec())
            .map_err(|_| PublishSkip::QueueFull)
    }

    /// Marks the connection as used (by a send that is waiting for it).
    pub(crate) fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(*lock(&self.last_used))
    }

    pub(crate) fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Relaxed)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits for a token from `bucket` (a sender's rate cap).
pub(crate) async fn take_token(bucket: &Mutex<TokenBucket>) {
    loop {
        let wait = {
            let mut bucket = lock(bucket);
            let now = Instant::now().into_std();
            if bucket.try_take(now) {
                return;
            }
            bucket.poll_timeout(now)
        };
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
    }
}

/// Counters a publish attempt bumps: one of three outcomes, or nothing if the link was not up.
pub(crate) struct PublishCounters<'a> {
    pub(crate) published: &'a std::sync::atomic::AtomicU64,
    pub(crate) rate_limited: &'a std::sync::atomic::AtomicU64,
    pub(crate) queue_full: &'a std::sync::atomic::AtomicU64,
}

impl PublishCounters<'_> {
    /// Counts `result`; returns whether the publish was handed to the connection.
    pub(crate) fn count(&self, result: Result<(), PublishSkip>) -> bool {
        let counter = match result {
            Ok(()) => self.published,
            Err(PublishSkip::RateLimited) => self.rate_limited,
            Err(PublishSkip::QueueFull) => self.queue_full,
            Err(PublishSkip::NotUp) => return false,
        };
        inc(counter);
        result.is_ok()
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked (plain values only).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh client id per connection: brokers disconnect the older of two clients with one id.
fn client_id() -> String {
    let n: u64 = rand::random();
    format!("kw-{n:016x}")
}
