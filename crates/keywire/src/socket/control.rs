//! Handing control packets to the protocol that owns their kind.
//!
//! Each kind has at most one bounded queue. A packet of a kind nobody registered is dropped and
//! counted (`control_unknown`), as is a malformed one (`control_malformed`) and one arriving at a
//! full queue (`control_queue_full`): a slow protocol loses its own packets, never QUIC's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use keywire_proto::datagram::{ControlError, ControlKind, ControlPacket, DatagramClass};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use keywire_proto::gro::SegmentSink;

/// A control packet as a protocol receives it.
#[derive(Debug, Clone)]
pub struct ControlDatagram {
    /// The real address it came from.
    pub from: SocketAddr,
    /// The payload after the two-byte header.
    pub payload: Bytes,
}

/// A protocol's share of the endpoint's UDP port: control packets of one kind, in and out.
/// Made by [`crate::Endpoint::control_channel`].
#[derive(Debug)]
pub struct ControlChannel {
    pub(crate) kind: ControlKind,
    pub(crate) receiver: mpsc::Receiver<ControlDatagram>,
    pub(crate) socket: Arc<super::KeywireSocket>,
}

impl ControlChannel {
    /// The next packet of this kind; `None` once another claim replaced this channel.
    pub async fn recv(&mut self) -> Option<ControlDatagram> {
        self.receiver.recv().await
    }

    /// The next packet if one is waiting (for draining a burst in one go).
    pub(crate) fn try_recv(&mut self) -> Option<ControlDatagram> {
        self.receiver.try_recv().ok()
    }

    /// Sends `payload` as a control packet of this kind to a real address. Fails only as the
    /// socket does (`WouldBlock` if its send buffer stays full: control traffic gives way to
    /// QUIC rather than queueing).
    pub async fn send(&self, to: SocketAddr, payload: &[u8]) -> std::io::Result<()> {
        let mut packet =
            Vec::with_capacity(payload.len() + keywire_proto::datagram::CONTROL_HEADER_LEN);
        ControlPacket {
            kind: self.kind,
            payload,
        }
        .encode(&mut packet);
        self.socket.send_control(to, &packet).await
    }
}

#[derive(Debug)]
pub(crate) struct ControlRouter {
    queues: RwLock<HashMap<ControlKind, mpsc::Sender<ControlDatagram>>>,
    pub(super) metrics: Arc<Metrics>,
}

impl ControlRouter {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            queues: RwLock::default(),
            metrics,
        }
    }

    /// Routes packets of `kind` to a new queue of `capacity`, replacing an earlier one.
    pub(crate) fn register(
        &self,
        kind: ControlKind,
        capacity: usize,
    ) -> mpsc::Receiver<ControlDatagram> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kind, tx);
        rx
    }

    pub(super) fn deliver(&self, from: SocketAddr, datagram: &[u8]) {
        let packet = match ControlPacket::decode(datagram) {
            Ok(packet) => packet,
            Err(ControlError::UnknownKind(_)) => {
                return Metrics::inc(&self.metrics.control_unknown)
            }
            Err(_) => return Metrics::inc(&self.metrics.control_malformed),
        };
        let queues = self.queues.read().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = queues.get(&packet.kind) else {
            return Metrics::inc(&self.metrics.control_unknown);
        };
        let item = ControlDatagram {
            from,
            payload: Bytes::copy_from_slice(packet.payload),
        };
        match queue.try_send(item) {
            Ok(()) => Metrics::inc(&self.metrics.control_received),
            Err(_) => Metrics::inc(&self.metrics.control_queue_full),
        }
    }
}

/// Adapter from the batch sorter to the socket, for one source address: relay frames may carry
/// QUIC for one of our relayed paths; other control packets go to their protocol.
pub(super) struct Sink<'a> {
    pub(super) socket: &'a super::KeywireSocket,
    pub(super) from: SocketAddr,
    pub(super) now: std::time::Instant,
}

impl SegmentSink for Sink<'_> {
    fn control(&mut self, packet: &[u8]) {
        if packet.first() == Some(&ControlKind::Relay.to_byte()) {
            self.socket.relay_frame(self.from, packet, self.now);
        } else {
            self.socket.control.deliver(self.from, packet);
        }
    }

    fn dropped(&mut self, class: DatagramClass) {
        let metrics = &self.socket.control.metrics;
        match class {
            DatagramClass::Stun => Metrics::inc(&metrics.stun_ignored),
            _ => Metrics::inc(&metrics.control_malformed),
        }
    }
}
