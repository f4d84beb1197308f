//! Stream links under the socket: addresses whose datagrams travel over a TCP (or WebSocket)
//! connection instead of UDP, for networks that block UDP (`docs/relay.md`).
//!
//! A link stands for one real address. On a client it is the gate's own address: everything
//! the socket would send there (the gate's QUIC connection, relay frames, control packets) goes
//! into the link, and what comes out of the link is handled as if it had arrived from there.
//! On a gate each accepted link gets an address of its own in [`LINK_PREFIX`] space, so quinn,
//! the registry and the relay loop treat a TCP client like any UDP one.
//!
//! Sending never waits: each link has a bounded queue, and a datagram that finds it full is
//! dropped and counted (`link_queue_full`), as a full socket buffer would drop it. So a slow
//! TCP reader costs only its own datagrams; quinn and every other client go on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use keywire_proto::link::MAX_LINK_DATAGRAM;
use tokio::sync::mpsc;

use super::paths::PathTable;
use crate::metrics::Metrics;

/// First 64 bits of a gate's addresses for the links it accepted: next to the virtual
/// addresses quinn sees (`fd6b:7769:7265:0::/64`), never a real host.
const LINK_PREFIX: [u16; 4] = [0xfd6b, 0x7769, 0x7265, 0x0001];

/// Whether `addr` is one a gate gave a link it accepted (see [`Links::accepted_addr`]).
fn is_accepted_link(addr: &SocketAddr) -> bool {
    matches!(addr.ip(), std::net::IpAddr::V6(v6) if v6.segments()[..4] == LINK_PREFIX)
}

/// Datagrams waiting to be written to one link: about 370 KB of full-size QUIC packets, enough
/// to ride out a TCP window's worth of delay; beyond it datagrams are dropped, so QUIC's
/// congestion control sees loss and slows down instead of queueing without end.
pub(crate) const LINK_QUEUE: usize = 256;

/// How a link cuts its byte stream into datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Length-prefixed datagrams (`keywire_proto::link::framing`).
    Raw,
    /// One binary WebSocket message per datagram; `client`: this side masks what it sends.
    WebSocket { client: bool },
    /// No stream: each queued item is one UDP datagram for a socket of its own (the extra
    /// socket birthday probing found a path through, `crate::birthday`).
    Datagram,
}

impl Framing {
    /// Appends `datagram` framed for the wire; false if it cannot be framed (too long).
    pub(crate) fn encode(self, datagram: &[u8], out: &mut Vec<u8>) -> bool {
        use keywire_proto::link::{framing, websocket};
        match self {
            Self::Raw => framing::encode(datagram, out).is_ok(),
            Self::WebSocket { client } => {
                // RFC 6455 §5.3: a fresh unpredictable key per client frame.
                let mask = client.then(rand::random::<[u8; 4]>);
                websocket::encode(websocket::Opcode::Binary, datagram, mask, out).is_ok()
            }
            Self::Datagram => {
                out.extend_from_slice(datagram);
                true
            }
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Tells this link from a later one for the same address.
    id: u64,
    framing: Framing,
    /// Framed bytes for the writer task.
    queue: mpsc::Sender<Vec<u8>>,
    /// The far end of the TCP connection (for a gate: where its client really is).
    peer: SocketAddr,
}

/// The socket's links, by the address each stands for.
#[derive(Debug)]
pub(crate) struct Links {
    table: RwLock<HashMap<SocketAddr, Entry>>,
    /// Whether a link stands for a real address (this node reaches a gate over TCP). Sends to
    /// other real addresses skip the table lock while none does — also on a gate serving links,
    /// whose accepted links all have addresses of their own ([`is_accepted_link`]).
    client_links: AtomicBool,
    next_id: AtomicU64,
    paths: Arc<PathTable>,
    metrics: Arc<Metrics>,
}

/// Removes its link from the table when dropped (when the link's task ends or is aborted).
#[derive(Debug)]
pub(crate) struct LinkRegistration {
    links: Arc<Links>,
    addr: SocketAddr,
    id: u64,
}

impl Drop for LinkRegistration {
    fn drop(&mut self) {
        let mut table = self.links.write();
        if table.get(&self.addr).is_some_and(|e| e.id == self.id) {
            table.remove(&self.addr);
            self.links.paths.set_stream_linked(self.addr, false);
        }
        let client_links = table.keys().any(|a| !is_accepted_link(a));
        self.links
            .client_links
            .store(client_links, Ordering::Release);
    }
}

impl Links {
    pub(crate) fn new(paths: Arc<PathTable>, metrics: Arc<Metrics>) -> Self {
        Self {
            table: RwLock::default(),
            client_links: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            paths,
            metrics,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SocketAddr, Entry>> {
        // Every update leaves the map consistent; poison is harmless.
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SocketAddr, Entry>> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh address for a link a gate accepted.
    pub(crate) fn accepted_addr(&self) -> SocketAddr {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        super::synthetic_addr(LINK_PREFIX, id, 1)
    }

    /// Makes datagrams for `addr` go to a link (replacing an earlier one); returns the queue its
    /// writer drains and the registration that undoes this.
    pub(crate) fn add(
        self: &Arc<Self>,
        addr: SocketAddr,
        peer: SocketAddr,
        framing: Framing,
    ) -> (mpsc::Receiver<Vec<u8>>, LinkRegistration) {
        let (queue, outgoing) = mpsc::channel(LINK_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut table = self.write();
        table.insert(
            addr,
            Entry {
                id,
                framing,
                queue,
                peer,
            },
        );
        if !is_accepted_link(&addr) {
            self.client_links.store(true, Ordering::Release);
        }
        if framing != Framing::Datagram {
            self.paths.set_stream_linked(addr, true);
        }
        drop(table);
        Metrics::inc(&self.metrics.links_opened);
        let registration = LinkRegistration {
            links: self.clone(),
            addr,
            id,
        };
        (outgoing, registration)
    }

    /// Where the far end of `addr`'s link really is, if `addr` is a link.
    pub(crate) fn peer_of(&self, addr: &SocketAddr) -> Option<SocketAddr> {
        if !is_accepted_link(addr) && !self.client_links.load(Ordering::Acquire) {
            return None;
        }
        self.read().get(addr).map(|e| e.peer)
    }

    /// Sends `contents` (datagrams of `segment` bytes, the last maybe shorter) over `addr`'s
    /// link; `None` if `addr` has no link (send over UDP). Never waits: a full queue drops.
    pub(crate) fn send(&self, addr: SocketAddr, contents: &[u8], segment: usize) -> Option<()> {
        if !is_accepted_link(&addr) && !self.client_links.load(Ordering::Acquire) {
            return None;
        }
        let table = self.read();
        let Some(entry) = table.get(&addr) else {
            // A gate's link that closed: its address means nothing to UDP.
            if is_accepted_link(&addr) {
                Metrics::inc(&self.metrics.send_no_path);
                return Some(());
            }
            return None;
        };
        for datagram in contents.chunks(segment.max(1)) {
            let mut framed = Vec::with_capacity(datagram.len() + 16);
            if datagram.len() > MAX_LINK_DATAGRAM || !entry.framing.encode(datagram, &mut framed) {
                Metrics::inc(&self.metrics.link_oversize);
                continue;
            }
            match entry.queue.try_send(framed) {
                Ok(()) => Metrics::inc(&self.metrics.link_datagrams_sent),
                Err(_) => Metrics::inc(&self.metrics.link_queue_full),
            }
        }
        Some(())
    }

    /// Queues bytes already framed (a WebSocket pong or close) for `addr`'s link.
    pub(crate) fn send_framed(&self, addr: SocketAddr, framed: Vec<u8>) {
        if let Some(entry) = self.read().get(&addr) {
            let _ = entry.queue.try_send(framed);
        }
    }
}
