//! The dialer side: race every channel, first connection wins.
//!
//! Every attempt is a task that sends its outcome on one queue; the call returns the first
//! connection, or, once every task has ended, every channel's failure. Dropping the call (or
//! returning) aborts what is still running, so a late attempt never completes a second
//! connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keywire_proto::intro::{
    intro_topic, seal_intro, IntroKind, Introduction, MAX_INTRO_CANDIDATES,
};
use keywire_proto::{NodeAddr, NodeId, Ticket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::state::{lock, unix_ms, DiscoveryState};
use super::{ChannelFailure, IntroChannel, KeyConnection, ResolveTimings, RESOLVE_TIMEOUT};
use crate::address_book::AddressSource;
use crate::signal::SignalError;
use crate::{ConnectError, Connection, Endpoint};

/// How long the DHT may take to find its first contact before lookups start.
const DHT_READY_WAIT: Duration = Duration::from_secs(5);
/// How long an introduction's answer is awaited.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for the observer before an introduction goes out.
const OBSERVE_WAIT: Duration = Duration::from_millis(1500);
/// Most dials started by nudges, per channel (each nudge names an address of the node's).
const MAX_NUDGE_DIALS: usize = 4;

type Outcome = Result<(Connection, IntroChannel), (IntroChannel, ChannelFailure)>;

/// The tasks of one call, and whether it has ended (then a task spawned late is aborted at
/// once: a channel's task may be spawning a dial just as the call returns).
#[derive(Default)]
struct Handles {
    running: Vec<AbortHandle>,
    ended: bool,
}

impl Handles {
    fn end(&mut self) {
        self.ended = true;
        for handle in self.running.drain(..) {
            handle.abort();
        }
    }
}

/// The attempts of one call: aborted when the call ends.
#[derive(Clone)]
struct Attempts {
    handles: Arc<Mutex<Handles>>,
    outcomes: mpsc::Sender<Outcome>,
    timings: Arc<Mutex<ResolveTimings>>,
    start: Instant,
    endpoint: Endpoint,
    alpn: Arc<[u8]>,
    node: NodeId,
}

impl Attempts {
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut handles = lock(&self.handles);
        if handles.ended {
            return;
        }
        handles.running.push(tokio::spawn(task).abort_handle());
    }

    fn note(&self, set: impl FnOnce(&mut ResolveTimings, Duration)) {
        let elapsed = self.start.elapsed();
        set(&mut lock(&self.timings), elapsed);
    }

    /// Dials `addrs` (Happy Eyeballs among them) as `channel`; those our socket cannot reach
    /// (the other address family) are left out.
    fn dial(&self, mut addrs: Vec<SocketAddr>, channel: IntroChannel) {
        if let Ok(local) = self.endpoint.local_addr() {
            addrs.retain(|a| crate::upgrade::can_reach(local, *a));
        }
        if addrs.is_empty() {
            return;
        }
        let this = self.clone();
        self.spawn(async move {
            let target = NodeAddr::new(this.node, addrs);
            let outcome = match this.endpoint.connect_direct(&target, &this.alpn).await {
                Ok(conn) => Ok((conn, channel)),
                Err(e) => Err((channel, ChannelFailure::Dial(e))),
            };
            let _ = this.outcomes.send(outcome).await;
        });
    }

    /// Dials each of `addrs` at once, as its own attempt. For a node's candidates found by
    /// an introduction: most are unreachable from here (LAN addresses, a NAT not yet open), and
    /// Happy Eyeballs' 250 ms steps would reach the public one seconds late; and every
    /// handshake sent opens our own NAT toward that address, so the node's nudges get in.
    fn dial_each(&self, addrs: Vec<SocketAddr>, channel: IntroChannel) {
        for addr in addrs {
            self.dial(vec![addr], channel);
        }
    }

    /// Dials addresses and gates at once (a DHT record's, or the address book's).
    fn dial_with_gates(
        &self,
        addrs: Vec<SocketAddr>,
        gates: Vec<(NodeId, SocketAddr)>,
        channel: IntroChannel,
    ) {
        let gates: Vec<NodeAddr> = gates
            .into_iter()
            .map(|(id, addr)| NodeAddr::new(id, [addr]))
            .collect();
        if gates.is_empty() {
            return match channel {
                IntroChannel::AddressBook => self.dial(addrs, channel),
                _ => self.dial_each(addrs, channel),
            };
        }
        let Ok(ticket) = Ticket::with_gates(NodeAddr::new(self.node, addrs), gates) else {
            return;
        };
        let this = self.clone();
        self.spawn(async move {
            let outcome = match this.endpoint.connect_ticket(&ticket, &this.alpn).await {
                Ok(conn) => Ok((conn, channel)),
                Err(e) => Err((channel, ChannelFailure::Dial(e))),
            };
            let _ = this.outcomes.send(outcome).await;
        });
    }

    async fn fail(&self, channel: IntroChannel, why: ChannelFailure) {
        let _ = self.outcomes.send(Err((channel, why))).await;
    }
}

/// Which channels a dial uses (all configured ones, or one introducer's).
#[derive(Debug, Clone, Copy)]
pub(super) struct Use {
    pub(super) book: bool,
    pub(super) dht: bool,
    pub(super) mqtt: bool,
}

impl Use {
    pub(super) const ALL: Self = Self {
        book: true,
        dht: true,
        mqtt: true,
    };
    pub(super) const DHT: Self = Self {
        book: false,
        dht: true,
        mqtt: false,
    };
    pub(super) const MQTT: Self = Self {
        book: false,
        dht: false,
        mqtt: true,
    };
}

pub(super) async fn connect(
    endpoint: &Endpoint,
    state: &Arc<DiscoveryState>,
    node: NodeId,
    alpn: &[u8],
    channels: Use,
) -> Result<KeyConnection, ConnectError> {
    // Before any lookup or introduction: a node we would refuse is not looked for.
    endpoint.check_dial(node, alpn)?;
    let (outcomes, mut results) = mpsc::channel(32);
    let attempts = Attempts {
        handles: Arc::default(),
        outcomes,
        timings: Arc::default(),
        start: Instant::now(),
        endpoint: endpoint.clone(),
        alpn: alpn.into(),
        node,
    };
    // Aborts every attempt however this call ends (returned, failed, or dropped). It holds
    // no sender: the queue closes once every attempt has ended.
    struct AbortOnDrop(Arc<Mutex<Handles>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            lock(&self.0).end();
        }
    }
    let guard = AbortOnDrop(attempts.handles.clone());
    let timings = attempts.timings.clone();

    if channels.book {
        from_book(&attempts, state).await;
    }
    if channels.dht && state.dht.is_some() {
        attempts.spawn(from_dht(attempts.clone(), state.clone()));
    }
    if channels.mqtt && state.mqtt.is_some() {
        attempts.spawn(from_mqtt(attempts.clone(), state.clone()));
    }
    drop(attempts);

    let mut failures = Vec::new();
    let deadline = tokio::time::sleep(RESOLVE_TIMEOUT);
    tokio::pin!(deadline);
    let won = loop {
        tokio::select! {
            outcome = results.recv() => match outcome {
                Some(Ok(won)) => break Some(won),
                Some(Err(failure)) => failures.push(failure),
                None => break None,
            },
            () = &mut deadline => break None,
        }
    };
    let timings = *lock(&timings);
    drop(guard);
    match won {
        Some((connection, introduced_by)) => {
            state.remember_later(&connection);
            Ok(KeyConnection {
                connection,
                introduced_by,
                timings,
            })
        }
        None => Err(ConnectError::NotFound { node, failures }),
    }
}

async fn from_book(attempts: &Attempts, state: &DiscoveryState) {
    let Some(book) = state.book.clone() else {
        return;
    };
    let node = attempts.node;
    // On a blocking thread: SQLite may wait for another process's write.
    let known = tokio::task::spawn_blocking(move || {
        let now = SystemTime::now();
        book.addresses(&node, now)
            .and_then(|addrs| Ok((addrs, book.gates(&node, now)?)))
    })
    .await;
    let (addrs, gates) = match known {
        Ok(Ok(known)) => known,
        Ok(Err(e)) => {
            tracing::warn!("address book: {e}");
            return;
        }
        Err(_) => return,
    };
    if addrs.is_empty() && gates.is_empty() {
        return attempts
            .fail(IntroChannel::AddressBook, ChannelFailure::NothingKnown)
            .await;
    }
    attempts.note(|t, d| t.book = Some(d));
    let mut addrs: Vec<SocketAddr> = addrs.into_iter().map(|k| k.addr).collect();
    addrs.truncate(MAX_INTRO_CANDIDATES);
    attempts.dial_with_gates(addrs, gates, IntroChannel::AddressBook);
}

/// Our introduction to `to`. Without a public address yet (the observer's first answer may
/// still be on its way at start-up), the observer is asked first, for at most
/// [`OBSERVE_WAIT`]: an introduction naming only our LAN address is nudged where the node
/// cannot reach, and its NAT stays closed to us.
async fn introduction(state: &DiscoveryState, to: NodeId) -> Introduction {
    if let Some(observer) = state.observer {
        if state.upgrades.discovered_reflexive().is_empty() {
            let observed = tokio::time::timeout(OBSERVE_WAIT, state.upgrades.observe(observer));
            if let Ok(Some(addr)) = observed.await {
                state.upgrades.set_discovered_reflexive(vec![addr]);
            }
        }
    }
    let mut candidates = state.candidates();
    candidates.truncate(MAX_INTRO_CANDIDATES);
    Introduction {
        kind: IntroKind::Request,
        to,
        time_ms: unix_ms(),
        nonce: rand::random(),
        candidates,
    }
}

/// The DHT: the record lookup and the introduction go out together; the record's addresses
/// are dialed when it comes (our handshake also opens our NAT toward the node), and each
/// address that nudges us is dialed at once (the node's NAT is then open toward us).
async fn from_dht(attempts: Attempts, state: Arc<DiscoveryState>) {
    let channel = IntroChannel::DhtIntro;
    let Some(dht) = state.dht.clone() else { return };
    match tokio::time::timeout(DHT_READY_WAIT, dht.ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return attempts.fail(channel, e.into()).await,
        Err(_) => return attempts.fail(channel, ChannelFailure::NoRecord).await,
    }
    let intro = introduction(&state, attempts.node).await;
    let Some((mut nudges, _waiting)) = state.wait_nudges(intro.nonce) else {
        return attempts.fail(channel, ChannelFailure::NoAnswer).await;
    };
    // Sealed to the node: whoever else reads the topic learns neither the nonce nor where we
    // are.
    let sealed = match seal_intro(&intro, &state.me, &mut rand::rngs::OsRng) {
        Ok(sealed) => sealed,
        Err(e) => return attempts.fail(channel, SignalError::from(e).into()).await,
    };
    let publish = dht.publish(intro_topic(&attempts.node), sealed);
    let lookup = dht.lookup(attempts.node);
    tokio::pin!(publish, lookup);
    let (mut published, mut looked_up) = (false, false);
    let mut found = false;
    let mut dialed: Vec<SocketAddr> = Vec::new();
    let answer_deadline = tokio::time::sleep(ANSWER_WAIT);
    tokio::pin!(answer_deadline);
    loop {
        tokio::select! {
            result = &mut publish, if !published => {
                published = true;
                if let Err(e) = result {
                    tracing::debug!("DHT introduction not published: {e}");
                }
            }
            result = &mut lookup, if !looked_up => {
                looked_up = true;
                match result {
                    Ok(Some(record)) => {
                        found = true;
                        attempts.note(|t, d| t.dht_record = Some(d));
                        let gates: Vec<_> =
                            record.gates.iter().map(|g| (g.node_id, g.addr)).collect();
                        state.note_hints_later(
                            attempts.node,
                            record.addrs.clone(),
                            gates.clone(),
                            AddressSource::Dht,
                        );
                        attempts.dial_with_gates(record.addrs, gates, IntroChannel::DhtRecord);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!("DHT lookup failed: {e}"),
                }
            }
            Some(from) = nudges.recv() => {
                if dialed.is_empty() {
                    attempts.note(|t, d| t.dht_nudge = Some(d));
                }
                if !dialed.contains(&from) && dialed.len() < MAX_NUDGE_DIALS {
                    dialed.push(from);
                    attempts.dial(vec![from], channel);
                }
            }
            () = &mut answer_deadline => break,
        }
    }
    if !found && dialed.is_empty() {
        attempts.fail(channel, ChannelFailure::NoRecord).await;
    }
}

/// The MQTT pool: an introduction sealed to the node; its reply names its candidates (dialed
/// at once), and its nudges name the addresses already open toward us.
async fn from_mqtt(attempts: Attempts, state: Arc<DiscoveryState>) {
    let channel = IntroChannel::MqttIntro;
    let Some(mqtt) = state.mqtt.clone() else {
        return;
    };
    let intro = introduction(&state, attempts.node).await;
    let Some((mut nudges, _waiting)) = state.wait_nudges(intro.nonce) else {
        return attempts.fail(channel, ChannelFailure::NoAnswer).await;
    };
    let mut reply = state.wait_reply(intro.nonce, attempts.node);
    let encoded = intro.encode();
    let send = mqtt.send_control(attempts.node, &encoded);
    tokio::pin!(send);
    let mut sent = false;
    let mut replied = false;
    let mut dialed: Vec<SocketAddr> = Vec::new();
    let answer_deadline = tokio::time::sleep(ANSWER_WAIT);
    tokio::pin!(answer_deadline);
    loop {
        tokio::select! {
            result = &mut send, if !sent => {
                sent = true;
                // Unacknowledged or refused locally: the node may still have it (another
                // broker), so the wait for its answer goes on.
                if let Err(e) = result {
                    tracing::debug!("MQTT introduction: {e}");
                }
            }
            answer = &mut reply, if !replied => {
                replied = true;
                let Ok(answer) = answer else { continue };
                if dialed.is_empty() {
                    attempts.note(|t, d| t.mqtt_answer = Some(d));
                }
                state.note_hints_later(
                    attempts.node,
                    answer.candidates.clone(),
                    Vec::new(),
                    AddressSource::Mqtt,
                );
                let fresh: Vec<SocketAddr> = answer
                    .candidates
                    .into_iter()
                    .filter(|a| !dialed.contains(a))
                    .collect();
                dialed.extend(&fresh);
                attempts.dial_each(fresh, channel);
            }
            Some(from) = nudges.recv() => {
                if dialed.is_empty() {
                    attempts.note(|t, d| t.mqtt_answer = Some(d));
                }
                if !dialed.contains(&from) && dialed.len() < MAX_INTRO_CANDIDATES + MAX_NUDGE_DIALS {
                    dialed.push(from);
                    attempts.dial(vec![from], channel);
                }
            }
            () = &mut answer_deadline => break,
        }
    }
    if dialed.is_empty() {
        attempts.fail(channel, ChannelFailure::NoAnswer).await;
    }
}
