//! The DHT task: feeds the core datagrams, commands and time; carries out its transmits.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keywire_proto::kad::{KadEvent, KadNode, LookupId, Timestamp};
use keywire_proto::SecretKey;
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use super::{persist, Command, DhtConfig, DhtError, DhtStatus, LookupOutcome, ReceivedPublication};
use crate::ControlChannel;

/// How often the routing table is saved while running.
const SAVE_INTERVAL: Duration = Duration::from_secs(300);

/// The wall clock as the core's time (records carry absolute expiry times).
fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Timestamp::from_unix_millis(ms)
}

pub(super) struct Driver {
    core: KadNode,
    config: DhtConfig,
    channel: ControlChannel,
    commands: mpsc::Receiver<Command>,
    lookups: BTreeMap<LookupId, oneshot::Sender<Result<LookupOutcome, DhtError>>>,
    subscribers: BTreeMap<[u8; 32], Vec<mpsc::Sender<ReceivedPublication>>>,
    joined: bool,
    /// Callers of [`super::Dht::ready`] waiting for a first contact.
    ready_waiters: Vec<oneshot::Sender<()>>,
    publications_dropped: u64,
    next_save: Timestamp,
}

impl Driver {
    pub(super) fn new(
        key: SecretKey,
        config: DhtConfig,
        channel: ControlChannel,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let start = now();
        let mut core = KadNode::new(key, config.kad.clone(), seed, start);
        let mut addrs = config.bootstrap.clone();
        if let Some(path) = &config.routing_table_file {
            addrs.extend(persist::load(path).into_iter().map(|c| c.addr));
        }
        core.bootstrap(start, &addrs);
        Self {
            core,
            config,
            channel,
            commands,
            lookups: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            joined: false,
            ready_waiters: Vec::new(),
            publications_dropped: 0,
            next_save: start + SAVE_INTERVAL,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            self.flush().await;
            let wait = self
                .core
                .poll_timeout()
                .map_or(Duration::from_secs(60), |t| t.saturating_since(now()));
            let sleep = tokio::time::sleep(wait);
            tokio::select! {
                datagram = self.channel.recv() => match datagram {
                    Some(d) => self.core.handle_datagram(now(), d.from, &d.payload),
                    None => break,
                },
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        self.save();
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.command(command),
                    None => break,
                },
                () = sleep => self.core.handle_timeout(now()),
            }
        }
        self.save();
    }

    fn save(&self) {
        if let Some(path) = &self.config.routing_table_file {
            if let Err(e) = persist::save(path, &self.core.contacts()) {
                tracing::warn!(
                    "cannot save the DHT routing table to {}: {e}",
                    path.display()
                );
            }
        }
    }

    async fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            // A full socket buffer loses this datagram; the core's timeouts treat it as loss.
            if let Err(e) = self.channel.send(t.to, &t.payload).await {
                tracing::debug!("DHT send to {} failed: {e}", t.to);
            }
        }
        while let Some(event) = self.core.poll_event() {
            self.event(event);
        }
        if !self.ready_waiters.is_empty() && self.is_ready() {
            for waiter in self.ready_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        let now = now();
        if now >= self.next_save && self.joined {
            self.next_save = now + SAVE_INTERVAL;
            self.save();
        }
    }

    fn command(&mut self, command: Command) {
        let now = now();
        match command {
            Command::Lookup(key, reply) => match self.core.find_record(now, key) {
                Ok(id) => {
                    self.lookups.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::PublishRecord(addrs, gates, reply) => {
                let _ = reply.send(
                    self.core
                        .publish_record(now, addrs, gates)
                        .map_err(Into::into),
                );
            }
            Command::Subscribe(topic, sender, reply) => {
                let result = if self.core.is_subscribed(&topic) {
                    Ok(())
                } else {
                    self.core.subscribe(now, topic)
                };
                if result.is_ok() {
                    self.subscribers.entry(topic).or_default().push(sender);
                }
                let _ = reply.send(result.map_err(Into::into));
            }
            Command::Publish(topic, payload, reply) => {
                let _ = reply.send(self.core.publish(now, topic, payload).map_err(Into::into));
            }
            Command::Status(reply) => {
                let _ = reply.send(DhtStatus {
                    kad: self.core.status(),
                    joined: self.joined,
                    own_record_seq: self.core.own_record().map(|r| r.seq),
                    publications_dropped: self.publications_dropped,
                });
            }
            Command::Ready(reply) => {
                // Callers that gave up waiting leave a closed sender: forget those first.
                self.ready_waiters.retain(|w| !w.is_closed());
                if self.is_ready() {
                    let _ = reply.send(());
                } else if self.ready_waiters.len() < super::COMMAND_QUEUE {
                    self.ready_waiters.push(reply);
                }
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Whether lookups can start: the join finished or some node answered.
    fn is_ready(&self) -> bool {
        self.joined || !self.core.contacts().is_empty()
    }

    fn event(&mut self, event: KadEvent) {
        match event {
            KadEvent::LookupFinished {
                id,
                record,
                closest,
                rounds,
                messages,
            } => {
                if let Some(reply) = self.lookups.remove(&id) {
                    let _ = reply.send(Ok(LookupOutcome {
                        record,
                        closest,
                        rounds,
                        messages,
                    }));
                }
            }
            KadEvent::Publication {
                publication,
                observed,
                via,
            } => self.deliver(ReceivedPublication {
                publication,
                observed,
                via,
            }),
            KadEvent::Bootstrapped { contacts } => {
                tracing::debug!("DHT joined with {contacts} contacts");
                self.joined = true;
                self.save();
            }
            KadEvent::ModeChanged(mode) => tracing::debug!("DHT mode now {mode:?}"),
            KadEvent::AddressObserved(addr) => tracing::debug!("DHT peers see us at {addr}"),
            _ => {}
        }
    }

    fn deliver(&mut self, received: ReceivedPublication) {
        let topic = received.publication.topic;
        let Some(senders) = self.subscribers.get_mut(&topic) else {
            return;
        };
        senders.retain(|s| !s.is_closed());
        for sender in senders.iter() {
            if sender.try_send(received.clone()).is_err() {
                self.publications_dropped += 1;
            }
        }
        if senders.is_empty() {
            self.subscribers.remove(&topic);
            self.core.unsubscribe(&topic);
        }
    }
}
