//! The DHT on the endpoint's UDP port: a driver task around the sans-IO
//! [`keywire_proto::kad::KadNode`].
//!
//! [`Dht::spawn`] claims the endpoint's DHT control packets (`ControlKind::Dht`), bootstraps
//! from the configured addresses and from the routing table saved by the previous run, and
//! serves commands: [`Dht::lookup`], [`Dht::publish_record`], [`Dht::subscribe`],
//! [`Dht::publish`], [`Dht::status`]. The routing table is saved (atomically) when the join
//! finishes, every five minutes and on [`Dht::shutdown`]. Byte layouts are in `docs/dht.md`.

mod driver;
mod persist;

use std::net::SocketAddr;
use std::path::PathBuf;

use keywire_proto::kad::node::KadStatus;
use keywire_proto::kad::{AddressRecord, Contact, GateRef, KadConfig, Publication};
use keywire_proto::NodeId;
use tokio::sync::{mpsc, oneshot};

use crate::Endpoint;

pub use keywire_proto::kad::node::{Mode, ModeSetting};

/// Control packets waiting for the DHT task; more are dropped and counted by the socket.
const CONTROL_QUEUE: usize = 1024;
/// Commands waiting for the DHT task; callers wait when it is full.
const COMMAND_QUEUE: usize = 64;
/// Publications waiting for a subscriber; when full, newer ones are dropped (and counted in
/// [`DhtStatus::publications_dropped`]).
pub const SUBSCRIPTION_QUEUE: usize = 64;

/// DHT settings.
#[derive(Debug, Clone, Default)]
pub struct DhtConfig {
    /// The core's tunables (mode, timeouts, record lifetime, gates-only publishing).
    pub kad: KadConfig,
    /// Known nodes or gates to join through.
    pub bootstrap: Vec<SocketAddr>,
    /// Where to save the routing table across restarts (`None`: not saved).
    pub routing_table_file: Option<PathBuf>,
}

/// Why a DHT command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DhtError {
    /// The DHT task has stopped (shut down, or the endpoint's control channel closed).
    #[error("the DHT task has stopped")]
    Stopped,
    /// The core refused the command (too many lookups, a record too large).
    #[error(transparent)]
    Refused(#[from] keywire_proto::kad::node::KadError),
}

/// The result of a lookup.
#[derive(Debug, Clone)]
pub struct LookupOutcome {
    /// The freshest valid record found.
    pub record: Option<AddressRecord>,
    /// The closest nodes that answered.
    pub closest: Vec<Contact>,
    /// Sequential request rounds (round trips, not counting timeouts).
    pub rounds: u32,
    /// Requests sent.
    pub messages: u32,
}

/// A publication as a subscriber receives it.
#[derive(Debug, Clone)]
pub struct ReceivedPublication {
    /// Signed by its publisher and verified.
    pub publication: Publication,
    /// The publisher's address as the forwarding node saw it. Not signed by the publisher:
    /// an unconfirmed hint (dial it and let TLS prove the key).
    pub observed: SocketAddr,
    /// The node that forwarded it.
    pub via: SocketAddr,
}

/// A snapshot of the DHT's state.
#[derive(Debug, Clone)]
pub struct DhtStatus {
    /// The core's view.
    pub kad: KadStatus,
    /// Whether the join lookup has finished.
    pub joined: bool,
    /// Our own record's sequence number, if published.
    pub own_record_seq: Option<u64>,
    /// Publications dropped because a subscriber's queue was full.
    pub publications_dropped: u64,
}

pub(crate) enum Command {
    Lookup(NodeId, oneshot::Sender<Result<LookupOutcome, DhtError>>),
    PublishRecord(
        Vec<SocketAddr>,
        Vec<GateRef>,
        oneshot::Sender<Result<u64, DhtError>>,
    ),
    Subscribe(
        [u8; 32],
        mpsc::Sender<ReceivedPublication>,
        oneshot::Sender<Result<(), DhtError>>,
    ),
    Publish([u8; 32], Vec<u8>, oneshot::Sender<Result<(), DhtError>>),
    Status(oneshot::Sender<DhtStatus>),
    Ready(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// A running DHT node. Dropping it stops the task (without saving; use [`Dht::shutdown`]).
#[derive(Debug)]
pub struct Dht {
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dht {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dht {
    /// Starts the DHT on `endpoint`'s port. Must be called inside a tokio runtime.
    pub fn spawn(endpoint: &Endpoint, config: DhtConfig) -> Self {
        let channel = endpoint.control_channel(crate::ControlKind::Dht, CONTROL_QUEUE);
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let driver = driver::Driver::new(endpoint.secret_key().clone(), config, channel, receiver);
        let task = tokio::spawn(driver.run());
        Self { commands, task }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| DhtError::Stopped)?;
        rx.await.map_err(|_| DhtError::Stopped)
    }

    /// Looks up `node`'s freshest address record, with the lookup's figures.
    pub async fn lookup_detailed(&self, node: NodeId) -> Result<LookupOutcome, DhtError> {
        self.ask(|tx| Command::Lookup(node, tx)).await?
    }

    /// Looks up `node`'s freshest address record.
    pub async fn lookup(&self, node: NodeId) -> Result<Option<AddressRecord>, DhtError> {
        Ok(self.lookup_detailed(node).await?.record)
    }

    /// Publishes our signed address record (stored at the k closest nodes, republished until
    /// shutdown). Returns its sequence number (0 if it waits for the join to finish).
    pub async fn publish_record(
        &self,
        addrs: Vec<SocketAddr>,
        gates: Vec<GateRef>,
    ) -> Result<u64, DhtError> {
        self.ask(|tx| Command::PublishRecord(addrs, gates, tx))
            .await?
    }

    /// Subscribes to `topic`; publications arrive on the returned receiver (bounded to
    /// [`SUBSCRIPTION_QUEUE`]).
    pub async fn subscribe(
        &self,
        topic: [u8; 32],
    ) -> Result<mpsc::Receiver<ReceivedPublication>, DhtError> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
        self.ask(|reply| Command::Subscribe(topic, tx, reply))
            .await??;
        Ok(rx)
    }

    /// Signs `payload` and routes it to `topic`'s subscribers.
    pub async fn publish(&self, topic: [u8; 32], payload: Vec<u8>) -> Result<(), DhtError> {
        self.ask(|tx| Command::Publish(topic, payload, tx)).await?
    }

    /// Waits until lookups can start: the join finished, or some node answered (a lookup from
    /// a node that knows no one fails at once). [`DhtError::Stopped`] if the task stops first;
    /// callers bound the wait with a timeout.
    pub async fn ready(&self) -> Result<(), DhtError> {
        self.ask(Command::Ready).await
    }

    /// A status snapshot.
    pub async fn status(&self) -> Result<DhtStatus, DhtError> {
        self.ask(Command::Status).await
    }

    /// Saves the routing table (if configured) and stops the task.
    pub async fn shutdown(self) {
        let _ = self.ask(Command::Shutdown).await;
    }
}
