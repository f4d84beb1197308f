//! What the discovery's tasks and dials share: the channels, the waiters for nudges and
//! replies, the replay guard, the rate limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use keywire_proto::intro::{encode_nudge, nudge_token, IntroGuard, Introduction};
use keywire_proto::signal::{Opener, TokenBucket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Counters, Discovery};
use crate::address_book::{AddressBook, AddressSource};
use crate::dht::Dht;
use crate::metrics::Metrics;
use crate::signal::SignalNode;
use crate::socket::KeywireSocket;
use crate::upgrade::Upgrades;
use crate::{Connection, Endpoint, NodeId, Path};

/// Introductions of ours awaiting an answer at once; a dial beyond that gets no nudges.
const MAX_WAITERS: usize = 256;
/// Introductions remembered against replay.
const GUARD_CAPACITY: usize = 4096;
/// Nudges we send, all destinations together: at most this many per second...
const NUDGE_RATE: u32 = 200;
/// ... and in one burst (an introduction nudges up to 9 addresses 3 times).
const NUDGE_BURST: u32 = 60;
/// Introductions we answer, all senders together: per second, and in one burst.
const INTRO_RATE: u32 = 20;
const INTRO_BURST: u32 = 40;
/// MQTT replies being sent at once (each may be republished until acknowledged); an
/// introduction arriving beyond that is answered with nudges only.
const MAX_REPLIES: usize = 8;

/// A waiter for the nudges answering one of our introductions (keyed by their token).
pub(crate) struct NudgeWaiter(pub(crate) mpsc::Sender<SocketAddr>);
/// A waiter for the MQTT reply to one of our introductions: who must send it, and where to.
pub(crate) type ReplyWaiter = (NodeId, oneshot::Sender<Introduction>);

pub(crate) struct DiscoveryState {
    pub(crate) me: NodeId,
    /// Opens introductions sealed to us (over the DHT).
    pub(crate) opener: Opener,
    pub(crate) dht: Option<Arc<Dht>>,
    pub(crate) mqtt: Option<Arc<SignalNode>>,
    pub(crate) book: Option<Arc<AddressBook>>,
    pub(crate) observer: Option<SocketAddr>,
    pub(crate) advertise: bool,
    pub(crate) counters: Counters,
    pub(crate) socket: Arc<KeywireSocket>,
    pub(crate) upgrades: Arc<Upgrades>,
    nudge_waiters: Mutex<HashMap<[u8; 16], NudgeWaiter>>,
    reply_waiters: Mutex<HashMap<[u8; 16], ReplyWaiter>>,
    guard: Mutex<IntroGuard>,
    nudge_bucket: Mutex<TokenBucket>,
    intro_bucket: Mutex<TokenBucket>,
    pub(crate) replies: Arc<tokio::sync::Semaphore>,
    /// The node side's tasks. They hold this state, so they are stopped by the endpoint
    /// (dropped or closed, [`DiscoveryState::stop`]), not by this state's drop.
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl DiscoveryState {
    pub(crate) fn new(endpoint: &Endpoint, discovery: Discovery) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            me: endpoint.node_id(),
            opener: Opener::new(endpoint.secret_key()),
            dht: discovery.dht,
            mqtt: discovery.mqtt,
            book: discovery.book,
            observer: discovery.observer,
            advertise: !discovery.quiet,
            counters: Counters::default(),
            socket: endpoint.socket_handle().clone(),
            upgrades: endpoint.upgrades_handle().clone(),
            nudge_waiters: Mutex::default(),
            reply_waiters: Mutex::default(),
            guard: Mutex::new(IntroGuard::new(GUARD_CAPACITY)),
            nudge_bucket: Mutex::new(TokenBucket::new(NUDGE_RATE, NUDGE_BURST, now)),
            intro_bucket: Mutex::new(TokenBucket::new(INTRO_RATE, INTRO_BURST, now)),
            replies: Arc::new(tokio::sync::Semaphore::new(MAX_REPLIES)),
            tasks: Mutex::default(),
        })
    }

    /// Stops the node side's tasks (the endpoint is going away).
    pub(crate) fn stop(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }

    /// Our candidate addresses, as the handshake tells them (bound, announced, reflexive).
    pub(crate) fn candidates(&self) -> Vec<SocketAddr> {
        self.upgrades.local_candidates()
    }

    /// Starts waiting for nudges answering the introduction with `nonce`; `None` if too many
    /// wait already. The waiter goes when the returned guard drops.
    pub(crate) fn wait_nudges(
        self: &Arc<Self>,
        nonce: [u8; 16],
    ) -> Option<(mpsc::Receiver<SocketAddr>, WaiterGuard)> {
        let mut waiters = lock(&self.nudge_waiters);
        if waiters.len() >= MAX_WAITERS {
            return None;
        }
        let (tx, rx) = mpsc::channel(8);
        waiters.insert(nudge_token(&nonce), NudgeWaiter(tx));
        Some((
            rx,
            WaiterGuard {
                state: self.clone(),
                nonce,
            },
        ))
    }

    /// Starts waiting for `from`'s MQTT reply to the introduction with `nonce` (removed with
    /// the nudge waiter's guard).
    pub(crate) fn wait_reply(
        &self,
        nonce: [u8; 16],
        from: NodeId,
    ) -> oneshot::Receiver<Introduction> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = lock(&self.reply_waiters);
        if waiters.len() < MAX_WAITERS {
            waiters.insert(nonce, (from, tx));
        }
        rx
    }

    /// A nudge carrying `token` arrived from `from`.
    pub(crate) fn nudged(&self, token: [u8; 16], from: SocketAddr) {
        let matched = lock(&self.nudge_waiters)
            .get(&token)
            .is_some_and(|w| w.0.try_send(from).is_ok());
        let counter = if matched {
            &self.counters.nudges_matched
        } else {
            &self.counters.nudges_unmatched
        };
        Metrics::inc(counter);
    }

    /// An MQTT reply from `from`: handed to whoever asked that node with that nonce.
    pub(crate) fn replied(&self, from: NodeId, reply: Introduction) -> bool {
        let mut waiters = lock(&self.reply_waiters);
        match waiters.get(&reply.nonce) {
            Some((expected, _)) if *expected == from => {}
            _ => return false,
        }
        let Some((_, waiter)) = waiters.remove(&reply.nonce) else {
            return false;
        };
        waiter.send(reply).is_ok()
    }

    /// Checks the rate limit, then the introduction's destination, time and replay. (The rate
    /// limit first: a flood must not push genuine entries out of the replay guard.)
    pub(crate) fn admit(&self, from: &NodeId, intro: &Introduction) -> bool {
        if !lock(&self.intro_bucket).try_take(Instant::now()) {
            Metrics::inc(&self.counters.intros_rate_limited);
            return false;
        }
        if let Err(why) = lock(&self.guard).accept(from, intro, &self.me, unix_ms()) {
            tracing::debug!("introduction from {} refused: {why}", from.short());
            Metrics::inc(&self.counters.intros_rejected);
            return false;
        }
        true
    }

    /// The addresses a nudge may go to, of `targets`: each once; not our own; of an address
    /// family our socket sends to; and loopback only when we are on loopback ourselves (a
    /// remote requester must not make us send to our own host's services).
    pub(crate) fn nudge_targets(&self, targets: &[SocketAddr]) -> Vec<SocketAddr> {
        let own = self.candidates();
        let local = self.socket.real_local_addr().ok();
        let on_loopback = local.is_some_and(|l| l.ip().is_loopback());
        let mut out: Vec<SocketAddr> = Vec::new();
        for target in targets {
            let usable = !own.contains(target)
                && !out.contains(target)
                && local.is_none_or(|l| crate::upgrade::can_reach(l, *target))
                && (on_loopback || !target.ip().is_loopback());
            if usable {
                out.push(*target);
            }
        }
        out
    }

    /// Sends one round of nudges answering the introduction with `nonce` to `targets` (already
    /// filtered by [`Self::nudge_targets`]), within the rate limit.
    pub(crate) async fn nudge(&self, targets: &[SocketAddr], nonce: &[u8; 16]) {
        let packet = encode_nudge(&nudge_token(nonce));
        for target in targets {
            if !lock(&self.nudge_bucket).try_take(Instant::now()) {
                Metrics::inc(&self.counters.nudges_rate_limited);
                continue;
            }
            match self.socket.send_control(*target, &packet).await {
                Ok(()) => Metrics::inc(&self.counters.nudges_sent),
                Err(e) => tracing::debug!("nudge to {target} failed: {e}"),
            }
        }
    }

    /// Notes in the address book that `conn` works over its direct address. Blocking (one
    /// short SQLite transaction); async paths use [`Self::remember_later`].
    pub(crate) fn remember(&self, conn: &Connection) {
        let (Some(book), Path::Direct(addr)) = (&self.book, conn.path()) else {
            return;
        };
        report(book.note_worked(&conn.remote_node_id(), addr, SystemTime::now()));
    }

    /// [`Self::remember`] on a blocking thread: SQLite may wait up to its busy timeout for
    /// another process's write.
    pub(crate) fn remember_later(&self, conn: &Connection) {
        let (Some(book), Path::Direct(addr)) = (self.book.clone(), conn.path()) else {
            return;
        };
        let node = conn.remote_node_id();
        tokio::task::spawn_blocking(move || {
            report(book.note_worked(&node, addr, SystemTime::now()));
        });
    }

    /// Notes, on a blocking thread, what a DHT record or an MQTT reply offered for `node`
    /// (addresses with their `source`, and gates; not yet proven to work).
    pub(crate) fn note_hints_later(
        &self,
        node: NodeId,
        addrs: Vec<SocketAddr>,
        gates: Vec<(NodeId, SocketAddr)>,
        source: AddressSource,
    ) {
        let Some(book) = self.book.clone() else {
            return;
        };
        tokio::task::spawn_blocking(move || {
            let now = SystemTime::now();
            for addr in addrs {
                report(book.note_address(&node, addr, source, now));
            }
            for (gate, addr) in gates {
                report(book.note_gate(&node, &gate, addr, now));
            }
        });
    }
}

fn report(result: Result<(), crate::address_book::AddressBookError>) {
    if let Err(e) = result {
        tracing::warn!("address book: {e}");
    }
}

/// Removes a nudge waiter (and the reply waiter of the same nonce) when dropped.
pub(crate) struct WaiterGuard {
    state: Arc<DiscoveryState>,
    nonce: [u8; 16],
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        lock(&self.state.nudge_waiters).remove(&nudge_token(&self.nonce));
        lock(&self.state.reply_waiters).remove(&self.nonce);
    }
}
