//! The one UDP port: QUIC for quinn, keywire control packets for their protocols, and virtual
//! addresses so that quinn never sees (or depends on) a real address. See `docs/socket.md`.

pub(crate) mod congestion;
mod control;
pub(crate) mod links;
pub(crate) mod paths;

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV6};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use keywire_proto::datagram::DatagramClass;
use keywire_proto::gro;
use keywire_proto::ticket::canonical_addr;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

pub(crate) use control::ControlRouter;
pub use control::{ControlChannel, ControlDatagram};
use keywire_proto::gate::frame::{RelayFrame, RELAY_HEADER_LEN};
use paths::{PathTable, Refusal, Route};
use std::collections::VecDeque;

/// An address that names something inside keywire, not a host: the 64-bit network `net`
/// (in `fd6b:7769:7265::/48`, unique local), then `id` as the interface part.
pub(crate) fn synthetic_addr(net: [u16; 4], id: u64, port: u16) -> SocketAddr {
    let high = net
        .iter()
        .fold(0u64, |acc, part| (acc << 16) | u64::from(*part));
    let ip = std::net::Ipv6Addr::from((u128::from(high) << 64) | u128::from(id));
    SocketAddr::new(ip.into(), port)
}
use std::sync::Mutex;

use crate::metrics::Metrics;

/// quinn's view of keywire's socket.
pub(crate) struct KeywireSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// Whether `inner` is an IPv6 socket, so IPv4 destinations must be v4-mapped.
    ipv6: bool,
    pub(crate) paths: Arc<PathTable>,
    pub(crate) control: ControlRouter,
    /// QUIC packets unwrapped from relay frames, waiting to be handed to quinn under their
    /// path's virtual address. Bounded; when full, frames are dropped and counted.
    relayed: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
    /// Addresses reached over TCP or WebSocket instead of UDP.
    pub(crate) links: Arc<links::Links>,
    /// quinn's receive task, woken when a link delivers a packet for it (links are read on
    /// their own tasks, not in `poll_recv`).
    receiver: Mutex<Option<Waker>>,
    /// Whether the next `poll_recv` serves the inbox before the UDP socket (they alternate).
    inbox_first: AtomicBool,
    metrics: Arc<Metrics>,
}

/// Relayed packets waiting for quinn; a burst beyond this is dropped like a full socket buffer.
const RELAYED_INBOX: usize = 1024;

impl fmt::Debug for KeywireSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeywireSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl KeywireSocket {
    pub(crate) fn new(
        socket: std::net::UdpSocket,
        paths: Arc<PathTable>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        let ipv6 = socket.local_addr()?.is_ipv6();
        // quinn's own tokio socket brings quinn-udp's GSO, GRO and ECN handling.
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
        Ok(Self {
            inner,
            ipv6,
            control: ControlRouter::new(metrics.clone()),
            relayed: Mutex::default(),
            links: Arc::new(links::Links::new(paths.clone(), metrics.clone())),
            receiver: Mutex::default(),
            inbox_first: AtomicBool::new(true),
            paths,
            metrics,
        })
    }

    /// The real bound address.
    pub(crate) fn real_local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr().map(canonical_addr_keep_wildcard)
    }

    /// What the kernel wants as destination on this socket.
    fn socket_destination(&self, real: SocketAddr) -> SocketAddr {
        match real {
            SocketAddr::V4(v4) if self.ipv6 => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        }
    }

    /// Sends a control packet (already encoded, first byte `0x04..=0x3F`) to a real address,
    /// waiting for the socket to be writable (at most `CONTROL_SEND_TRIES` times).
    pub(crate) async fn send_control(
        self: &Arc<Self>,
        real: SocketAddr,
        packet: &[u8],
    ) -> io::Result<()> {
        debug_assert_eq!(
            keywire_proto::datagram::classify(packet),
            DatagramClass::Control
        );
        self.send_control_batch(real, packet, packet.len()).await
    }
}

impl KeywireSocket {
    /// Sends already-encoded control packets to one real address as one GSO batch: `contents`
    /// is packets of `segment` bytes each, the last possibly shorter. Waits for the socket like
    /// [`KeywireSocket::send_control`].
    pub(crate) async fn send_control_batch(
        self: &Arc<Self>,
        real: SocketAddr,
        contents: &[u8],
        segment: usize,
    ) -> io::Result<()> {
        /// A socket that stays unwritable this often is congested; control traffic yields.
        const CONTROL_SEND_TRIES: usize = 4;
        if self.links.send(real, contents, segment).is_some() {
            return Ok(());
        }
        let transmit = Transmit {
            destination: self.socket_destination(real),
            ecn: None,
            contents,
            segment_size: (contents.len() > segment).then_some(segment),
            src_ip: None,
        };
        let mut poller = self.inner.clone().create_io_poller();
        for _ in 0..CONTROL_SEND_TRIES {
            match self.inner.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?;
                }
                other => return other,
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// How many packets one GSO batch may carry.
    pub(crate) fn max_batch_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }
}

/// v4-mapped addresses become IPv4; `[::]` stays as it is.
fn canonical_addr_keep_wildcard(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr
    } else {
        canonical_addr(addr)
    }
}

/// The size of each datagram in `transmit` (all but the last; quinn's GSO batches).
fn segment_of(transmit: &Transmit) -> usize {
    transmit
        .segment_size
        .unwrap_or(transmit.contents.len())
        .max(1)
}

/// Whether a QUIC datagram may open a new path: a long-header Initial packet (RFC 9000 §17.2.2:
/// header form 1, fixed bit 1, type 0). Clients pad Initials to 1200 bytes (§14.1), so a short
/// one cannot start a connection either.
/// Whether a relay frame's payload is a punch signal (a control packet of the probe kind
/// carrying one). Path probes never count through a relay: they prove real addresses.
fn is_relayed_control(payload: &[u8]) -> bool {
    matches!(
        keywire_proto::datagram::ControlPacket::decode(payload),
        Ok(packet) if packet.kind == keywire_proto::datagram::ControlKind::Probe
            && keywire_proto::probe::signal::is_signal(packet.payload)
    )
}

fn opens_path(datagram: &[u8]) -> bool {
    const MIN_INITIAL_DATAGRAM: usize = 1200;
    datagram.len() >= MIN_INITIAL_DATAGRAM && datagram[0] & 0xF0 == 0xC0
}

impl AsyncUdpSocket for KeywireSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        debug_assert!(
            transmit
                .contents
                .chunks(
                    transmit
                        .segment_size
                        .unwrap_or(transmit.contents.len())
                        .max(1)
                )
                .all(|segment| segment.first().is_some_and(|b| b & 0xC0 != 0)),
            "quinn sent a packet with the QUIC bit clear; greasing must stay off"
        );
        let real = match self.paths.route_for(&transmit.destination) {
            Some((Route::Direct(real), _)) => real,
            Some((Route::Relayed { gate, channel }, Some(session))) => {
                return self.send_relayed(transmit, gate, session, channel);
            }
            // No path (evicted, never known, or its gate gone): drop and count, never block
            // quinn on it.
            _ => {
                Metrics::inc(&self.metrics.send_no_path);
                return Ok(());
            }
        };
        if let Some(()) = self
            .links
            .send(real, transmit.contents, segment_of(transmit))
        {
            return Ok(());
        }
        let transmit = Transmit {
            destination: self.socket_destination(real),
            ecn: transmit.ecn,
            contents: transmit.contents,
            segment_size: transmit.segment_size,
            // quinn picks no source address for virtual peers: dst_ip is never reported.
            src_ip: None,
        };
        self.inner.try_send(&transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Packets waiting in the inbox (relayed ones unwrapped during an earlier batch, or
        // delivered by a link) and the UDP socket take turns going first, so that a busy link
        // cannot starve UDP, nor busy UDP the inbox (which also fills the batch's free entries).
        let mut inbox_first = self.inbox_first.fetch_xor(true, Ordering::Relaxed);
        loop {
            if inbox_first {
                let waiting = self.drain_relayed(bufs, meta, 0);
                if waiting > 0 {
                    return Poll::Ready(Ok(waiting));
                }
            }
            inbox_first = true;
            let received = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    *self.receiver.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(cx.waker().clone());
                    // A link may have delivered between the drain and the registration.
                    if self.has_relayed() {
                        continue;
                    }
                    return Poll::Pending;
                }
            };
            let kept = self.sort_batch(bufs, meta, received);
            let total = self.drain_relayed(bufs, meta, kept);
            if total > 0 {
                return Poll::Ready(Ok(total));
            }
            // Nothing for quinn in this batch: read on (the inner socket re-arms its waker when
            // it runs dry).
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        // Always IPv6, so that quinn accepts the IPv6 virtual addresses even on an IPv4 socket.
        let real = self.inner.local_addr()?;
        Ok(match real {
            SocketAddr::V4(v4) => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            v6 => v6,
        })
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

impl KeywireSocket {
    /// Cuts control packets out of the batch, maps sources to virtual addresses and compacts the
    /// batch; returns how many entries are left for quinn.
    fn sort_batch(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
        received: usize,
    ) -> usize {
        let now = Instant::now();
        let mut kept = 0;
        for i in 0..received.min(meta.len()).min(bufs.len()) {
            let entry = meta[i];
            let real = canonical_addr(entry.addr);
            let mut sink = control::Sink {
                socket: self,
                from: real,
                now,
            };
            let len = gro::keep_quic(&mut bufs[i], entry.len, entry.stride, &mut sink);
            if len == 0 {
                continue;
            }
            let virtual_addr = match self
                .paths
                .for_source(real, opens_path(&bufs[i][..len]), now)
            {
                Ok(v) => v,
                Err(Refusal::NotInitial | Refusal::NotOurGate) => {
                    Metrics::inc(&self.metrics.quic_from_unknown_source);
                    continue;
                }
                Err(Refusal::Full) => {
                    Metrics::inc(&self.metrics.path_table_full);
                    continue;
                }
            };
            if kept != i {
                let (front, back) = bufs.split_at_mut(i);
                front[kept][..len].copy_from_slice(&back[0][..len]);
            }
            meta[kept] = RecvMeta {
                addr: virtual_addr,
                len,
                stride: if entry.stride == 0 {
                    len
                } else {
                    entry.stride.min(len)
                },
                ecn: entry.ecn,
                // The real destination address means nothing on a virtual path.
                dst_ip: None,
            };
            kept += 1;
        }
        kept
    }

    /// Handles a relay frame from `from`: a QUIC packet for one of our relayed paths is queued
    /// for quinn; anything else goes to the control router (e.g. a gate's relay loop).
    pub(crate) fn relay_frame(&self, from: SocketAddr, datagram: &[u8], now: Instant) {
        let Ok(frame) = RelayFrame::decode(datagram) else {
            return self.control.deliver(from, datagram);
        };
        let initial = opens_path(frame.payload);
        match self
            .paths
            .for_relayed(from, frame.session, frame.channel, initial, now)
        {
            // A punch signal from the peer, through the relay (`crate::upgrade`): only the probe
            // kind may come this way, under the path's virtual address.
            Ok(virtual_addr) if is_relayed_control(frame.payload) => {
                self.control.deliver(virtual_addr, frame.payload)
            }
            Ok(virtual_addr) => {
                let mut inbox = self.relayed.lock().unwrap_or_else(|p| p.into_inner());
                if inbox.len() < RELAYED_INBOX {
                    inbox.push_back((virtual_addr, frame.payload.to_vec()));
                    Metrics::inc(&self.metrics.relayed_received);
                } else {
                    Metrics::inc(&self.metrics.relayed_inbox_full);
                }
            }
            // A frame from one of our gates on an unknown channel that cannot open a path.
            Err(Refusal::NotInitial | Refusal::Full) => {
                Metrics::inc(&self.metrics.quic_from_unknown_source)
            }
            // Not one of our gates: maybe we are the gate.
            Err(Refusal::NotOurGate) => self.control.deliver(from, datagram),
        }
    }

    /// Sends a control packet to the peer of `virtual_addr` through its relay (also while the
    /// connection runs direct); fails if the path has no relay or the socket is full.
    pub(crate) fn send_control_relayed(
        &self,
        virtual_addr: SocketAddr,
        packet: &[u8],
    ) -> io::Result<()> {
        let Some((gate, channel, session)) = self.paths.relay_session_of(&virtual_addr) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let transmit = Transmit {
            destination: virtual_addr,
            ecn: None,
            contents: packet,
            segment_size: None,
            src_ip: None,
        };
        self.send_relayed(&transmit, gate, session, channel)
    }

    fn has_relayed(&self) -> bool {
        !self
            .relayed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Handles a datagram a link delivered as if it had come from `from` over UDP: control
    /// packets go to their protocol, QUIC to quinn (waking its receive task).
    pub(crate) fn deliver_from_link(&self, from: SocketAddr, mut datagram: Vec<u8>) {
        let now = Instant::now();
        Metrics::inc(&self.metrics.link_datagrams_received);
        let mut sink = control::Sink {
            socket: self,
            from,
            now,
        };
        let len = datagram.len();
        let len = gro::keep_quic(&mut datagram, len, 0, &mut sink);
        if len > 0 {
            datagram.truncate(len);
            match self.paths.for_source(from, opens_path(&datagram), now) {
                Ok(virtual_addr) => self.queue_for_quinn(virtual_addr, datagram),
                Err(Refusal::NotInitial | Refusal::NotOurGate) => {
                    Metrics::inc(&self.metrics.quic_from_unknown_source)
                }
                Err(Refusal::Full) => Metrics::inc(&self.metrics.path_table_full),
            }
        }
        // A relay frame for one of our paths was queued by the sink, or a QUIC packet above.
        if self.has_relayed() {
            if let Some(waker) = self
                .receiver
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                waker.wake();
            }
        }
    }

    /// Queues a packet for quinn under `virtual_addr`; dropped and counted when the inbox is full.
    fn queue_for_quinn(&self, virtual_addr: SocketAddr, packet: Vec<u8>) {
        let mut inbox = self.relayed.lock().unwrap_or_else(|p| p.into_inner());
        if inbox.len() < RELAYED_INBOX {
            inbox.push_back((virtual_addr, packet));
        } else {
            Metrics::inc(&self.metrics.relayed_inbox_full);
        }
    }

    /// Moves waiting relayed packets into the free entries after `used`; returns the new count.
    fn drain_relayed(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
        used: usize,
    ) -> usize {
        let mut inbox = self.relayed.lock().unwrap_or_else(|p| p.into_inner());
        let mut used = used;
        while used < meta.len().min(bufs.len()) {
            let Some((virtual_addr, packet)) = inbox.pop_front() else {
                break;
            };
            if packet.len() > bufs[used].len() {
                continue;
            }
            bufs[used][..packet.len()].copy_from_slice(&packet);
            meta[used] = RecvMeta {
                addr: virtual_addr,
                len: packet.len(),
                stride: packet.len(),
                ecn: None,
                dst_ip: None,
            };
            used += 1;
        }
        used
    }

    /// Wraps each packet of `transmit` in a relay frame and sends them to the gate, as one GSO
    /// batch when quinn sent one.
    fn send_relayed(
        &self,
        transmit: &Transmit,
        gate: SocketAddr,
        session: u64,
        channel: u32,
    ) -> io::Result<()> {
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        let mut out = Vec::with_capacity(
            transmit.contents.len() + RELAY_HEADER_LEN * transmit.contents.len().div_ceil(segment),
        );
        for payload in transmit.contents.chunks(segment) {
            RelayFrame {
                session,
                channel,
                payload,
            }
            .encode(&mut out);
        }
        if let Some(()) = self.links.send(gate, &out, segment + RELAY_HEADER_LEN) {
            return Ok(());
        }
        let wrapped = Transmit {
            destination: self.socket_destination(gate),
            ecn: transmit.ecn,
            contents: &out,
            segment_size: transmit.segment_size.map(|s| s + RELAY_HEADER_LEN),
            src_ip: None,
        };
        self.inner.try_send(&wrapped)
    }
}

#[cfg(test)]
mod tests;
