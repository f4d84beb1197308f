//! The one UDP port: QUIC for quinn, keywire control packets for their protocols, and virtual
//! addresses so that quinn never sees (or depends on) a real address. See `docs/socket.md`.

mod batch;
pub(crate) mod congestion;
mod control;
pub(crate) mod paths;

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV6};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use keywire_proto::datagram::DatagramClass;
use keywire_proto::ticket::canonical_addr;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

pub(crate) use control::ControlRouter;
pub use control::{ControlChannel, ControlDatagram};
use paths::{PathTable, Refusal};

use crate::metrics::Metrics;

/// quinn's view of keywire's socket.
pub(crate) struct KeywireSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// Whether `inner` is an IPv6 socket, so IPv4 destinations must be v4-mapped.
    ipv6: bool,
    pub(crate) paths: Arc<PathTable>,
    pub(crate) control: ControlRouter,
    metrics: Arc<Metrics>,
}

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
            paths,
            control: ControlRouter::new(metrics.clone()),
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

    /// Sends a control packet (already encoded, first byte `0x04..=0x3F`) to a real address.
    pub(crate) fn send_control(&self, real: SocketAddr, packet: &[u8]) -> io::Result<()> {
        debug_assert_eq!(
            keywire_proto::datagram::classify(packet),
            DatagramClass::Control
        );
        let transmit = Transmit {
            destination: self.socket_destination(real),
            ecn: None,
            contents: packet,
            segment_size: None,
            src_ip: None,
        };
        self.inner.try_send(&transmit)
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

/// Whether a QUIC datagram may open a new path: a long-header Initial packet (RFC 9000 §17.2.2:
/// header form 1, fixed bit 1, type 0). Clients pad Initials to 1200 bytes (§14.1), so a short
/// one cannot start a connection either.
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
        let Some(real) = self.paths.real_for(&transmit.destination) else {
            // No path (evicted, or never known): drop and count, never block quinn on it.
            Metrics::inc(&self.metrics.send_no_path);
            return Ok(());
        };
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
        loop {
            let received = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let kept = self.sort_batch(bufs, meta, received);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
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
                router: &self.control,
                from: real,
                metrics: &self.metrics,
            };
            let len = batch::keep_quic(&mut bufs[i], entry.len, entry.stride, &mut sink);
            if len == 0 {
                continue;
            }
            let virtual_addr = match self
                .paths
                .for_source(real, opens_path(&bufs[i][..len]), now)
            {
                Ok(v) => v,
                Err(Refusal::NotInitial) => {
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
}
