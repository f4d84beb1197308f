//! The I/O half of birthday probing (the plan is `keywire_proto::probe::punch`): the hard
//! side's extra sockets, and the one that becomes a path of its connection.
//!
//! The extra sockets live beside the endpoint's socket; quinn never sees them. Each sends a
//! path probe request to the easy side's reflexive address (opening a mapping on our NAT) and
//! again every `resend`, and listens. The first to receive a valid request of the peer from the
//! easy side's IP wins: it becomes a *side socket*, registered as a link for the address the
//! request came from (`socket::links`, datagram framing), so everything keywire sends there
//! (probes, then QUIC once the path probes agree) leaves through it, and what it receives is
//! handled as if the main socket had received it. The losers close at once.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use keywire_proto::datagram::{ControlKind, ControlPacket};
use keywire_proto::probe::{Probe, ProbeKeys};
use keywire_proto::Role;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::socket::links::{Framing, LinkRegistration};
use crate::socket::KeywireSocket;
use crate::upgrade::probe_packet;

/// Largest datagram a side socket reads (keywire never sends larger UDP payloads).
const MAX_DATAGRAM: usize = 2048;

/// An extra socket that received the peer's request: where from, and the request itself.
#[derive(Debug)]
pub(crate) struct Hit {
    socket: UdpSocket,
    from: SocketAddr,
    datagram: Vec<u8>,
}

/// One attempt's extra sockets, sending and listening until dropped (dropping closes them all).
#[derive(Debug)]
pub(crate) struct ExtraSockets {
    tasks: JoinSet<()>,
    /// Sockets that could be opened.
    pub(crate) opened: usize,
}

/// What an extra socket needs to know.
struct Probing {
    keys: ProbeKeys,
    role: Role,
    target: SocketAddr,
    resend: Duration,
    hits: mpsc::Sender<Hit>,
    metrics: Arc<Metrics>,
}

impl ExtraSockets {
    /// Opens up to `count` sockets on `local_ip` (unspecified: any), each probing `target`.
    /// A socket that cannot be opened (a file-descriptor limit, say) is skipped.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        keys: &ProbeKeys,
        role: Role,
        local_ip: IpAddr,
        target: SocketAddr,
        count: usize,
        resend: Duration,
        hits: mpsc::Sender<Hit>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let probing = Arc::new(Probing {
            keys: keys.clone(),
            role,
            target,
            resend,
            hits,
            metrics,
        });
        let bind_ip = match (local_ip, target.ip()) {
            (IpAddr::V6(v6), IpAddr::V4(_)) if v6.is_unspecified() => IpAddr::from([0, 0, 0, 0]),
            (ip, _) => ip,
        };
        // Half of the descriptors still free at most: the rest of the node (gate links,
        // files, other sockets) must not run out because of an attempt.
        let count =
            crate::sys::spare_file_descriptors().map_or(count, |spare| count.min(spare / 2));
        let first = probe_packet(&probing.keys.request(role, rand::random()));
        let mut tasks = JoinSet::new();
        let mut opened = 0;
        for _ in 0..count {
            let Ok(std_socket) = std::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0)) else {
                break;
            };
            if std_socket.set_nonblocking(true).is_err() {
                continue;
            }
            // The first request leaves now, so that the mapping exists before the go is sent.
            if std_socket.send_to(&first, target).is_ok() {
                Metrics::inc(&probing.metrics.birthday_probes_sent);
            }
            let Ok(socket) = UdpSocket::from_std(std_socket) else {
                continue;
            };
            opened += 1;
            tasks.spawn(probe_from(socket, probing.clone()));
        }
        Metrics::add(&probing.metrics.birthday_sockets_opened, opened as u64);
        Self { tasks, opened }
    }
}

impl Drop for ExtraSockets {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// One extra socket: sends a request to the target every `resend` and waits for the peer's.
async fn probe_from(socket: UdpSocket, probing: Arc<Probing>) {
    let start = tokio::time::Instant::now() + probing.resend;
    let mut resend = tokio::time::interval_at(start, probing.resend);
    // A task that fell behind sends once, not a burst of missed ticks.
    resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            _ = resend.tick() => {
                let packet = probe_packet(&probing.keys.request(probing.role, rand::random()));
                if socket.send_to(&packet, probing.target).await.is_ok() {
                    Metrics::inc(&probing.metrics.birthday_probes_sent);
                }
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((len, from)) = received else {
                    // An error (an ICMP report on some systems) must not spin the task.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if is_peer_request(&probing, from, &buf[..len]) {
                    let hit = Hit { socket, from, datagram: buf[..len].to_vec() };
                    let _ = probing.hits.send(hit).await;
                    return;
                }
                Metrics::inc(&probing.metrics.probes_refused);
            }
        }
    }
}

/// Whether `datagram` from `from` is a valid path probe request of the peer, from exactly the
/// easy side's address (its mapping is endpoint-independent: it sprays from nowhere else).
fn is_peer_request(probing: &Probing, from: SocketAddr, datagram: &[u8]) -> bool {
    if keywire_proto::ticket::canonical_addr(from) != probing.target {
        return false;
    }
    let Ok(packet) = ControlPacket::decode(datagram) else {
        return false;
    };
    packet.kind == ControlKind::Probe
        && matches!(
            probing.keys.open(packet.payload, probing.role),
            Ok(Probe::Request { .. })
        )
}

/// The extra socket a connection's direct path runs over; closing when dropped.
#[derive(Debug)]
pub(crate) struct SideSocket {
    task: tokio::task::JoinHandle<()>,
    _registration: LinkRegistration,
}

impl Drop for SideSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SideSocket {
    /// Makes `hit`'s socket the way to its sender: a link for that address, then hands the
    /// request that won to the endpoint as if the main socket had received it. `None` if that
    /// address already has a link (another connection's side socket, or a gate's stream link):
    /// a link stands for an address for the whole endpoint, and must not be taken from it.
    pub(crate) fn adopt(main: &Arc<KeywireSocket>, hit: Hit) -> Option<Self> {
        let Hit {
            socket,
            from,
            datagram,
        } = hit;
        if main.links.peer_of(&from).is_some() {
            return None;
        }
        let (outgoing, registration) = main.links.add(from, from, Framing::Datagram);
        let task = tokio::spawn(carry(main.clone(), socket, from, outgoing));
        main.deliver_from_link(from, datagram);
        Some(Self {
            task,
            _registration: registration,
        })
    }
}

/// Moves datagrams between the side socket and the endpoint until aborted.
async fn carry(
    main: Arc<KeywireSocket>,
    socket: UdpSocket,
    peer: SocketAddr,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            datagram = outgoing.recv() => {
                let Some(datagram) = datagram else { return };
                // A full socket buffer drops, as on the main socket; QUIC recovers.
                let _ = socket.send_to(&datagram, peer).await;
            }
            received = socket.recv_from(&mut buf) => {
                match received {
                    Ok((len, from)) if from == peer => main.deliver_from_link(from, buf[..len].to_vec()),
                    // Only the peer's address counts on this socket.
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8) -> ProbeKeys {
        ProbeKeys::from_exported([seed; 32])
    }

    fn request_packet(keys: &ProbeKeys, sender: Role) -> Vec<u8> {
        probe_packet(&keys.request(sender, rand::random()))
    }

    /// The extra sockets each probe the target from a port of their own, and only an authentic
    /// request of the peer from the target's IP makes a hit.
    #[tokio::test]
    async fn extra_sockets_probe_from_their_own_ports_and_hit_only_on_the_peers_request() {
        let easy = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = easy.local_addr().unwrap();
        let (hits_sender, mut hits) = mpsc::channel(4);
        let metrics = Arc::new(Metrics::default());
        let sockets = ExtraSockets::open(
            &keys(1),
            Role::Dialer,
            IpAddr::from([127, 0, 0, 1]),
            target,
            8,
            Duration::from_secs(60),
            hits_sender,
            metrics.clone(),
        );
        assert_eq!(sockets.opened, 8);
        let mut ports = std::collections::HashSet::new();
        let mut buf = [0u8; 2048];
        while ports.len() < 8 {
            let (len, from) =
                tokio::time::timeout(Duration::from_secs(5), easy.recv_from(&mut buf))
                    .await
                    .expect("every extra socket probes the target")
                    .unwrap();
            let packet = ControlPacket::decode(&buf[..len]).unwrap();
            assert!(matches!(
                keys(1).open(packet.payload, Role::Acceptor),
                Ok(Probe::Request { .. })
            ));
            ports.insert(from);
        }
        let mut extra: Vec<SocketAddr> = ports.into_iter().collect();

        // Forged (another key), reflected (our own role) and from another IP: no hit.
        easy.send_to(&request_packet(&keys(2), Role::Acceptor), extra[0])
            .await
            .unwrap();
        easy.send_to(&request_packet(&keys(1), Role::Dialer), extra[1])
            .await
            .unwrap();
        let elsewhere = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        elsewhere
            .send_to(&request_packet(&keys(1), Role::Acceptor), extra[2])
            .await
            .unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(300), hits.recv()).await;
        assert!(
            quiet.is_err(),
            "a hit from a forged, reflected or foreign request"
        );

        // The peer's request: a hit, carrying the socket that received it.
        let winner = extra.pop().unwrap();
        easy.send_to(&request_packet(&keys(1), Role::Acceptor), winner)
            .await
            .unwrap();
        let hit = tokio::time::timeout(Duration::from_secs(5), hits.recv())
            .await
            .expect("a hit")
            .unwrap();
        assert_eq!(hit.from, target);
        assert_eq!(hit.socket.local_addr().unwrap().port(), winner.port());
        assert_eq!(
            metrics
                .birthday_sockets_opened
                .load(std::sync::atomic::Ordering::Relaxed),
            8
        );
        assert!(
            metrics
                .probes_refused
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 3
        );
    }
}
