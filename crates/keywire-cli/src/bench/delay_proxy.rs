//! A UDP forwarder on loopback that delays every datagram by a fixed one-way time, so connection
//! set-up can be counted in round trips (elapsed / RTT) rather than reported as a bare time.
//!
//! Serves one client: the first source address that writes to it. Order is kept per direction
//! (a FIFO per direction with a constant delay): reordering would make QUIC drop 1-RTT packets
//! that overtake the handshake and skew the count. Bounded: at most `QUEUE` datagrams wait per
//! direction, more are dropped. It stops when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

const QUEUE: usize = 4096;

pub struct DelayProxy {
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

type Delayed = (Instant, Vec<u8>, SocketAddr);

impl DelayProxy {
    /// Starts a proxy in front of `server` adding `one_way` in each direction.
    pub async fn start(server: SocketAddr, one_way: Duration) -> std::io::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        Self::serve(socket, addr, server, one_way)
    }

    /// Like [`DelayProxy::start`], but reachable at 127.0.0.1 in front of a server on IPv6
    /// loopback (one dual-stack socket carries both sides).
    pub async fn start_v4_to_v6(server: SocketAddr, one_way: Duration) -> std::io::Result<Self> {
        let socket = UdpSocket::bind("[::]:0").await?;
        let addr = SocketAddr::from(([127, 0, 0, 1], socket.local_addr()?.port()));
        Self::serve(socket, addr, server, one_way)
    }

    fn serve(
        socket: UdpSocket,
        addr: SocketAddr,
        server: SocketAddr,
        one_way: Duration,
    ) -> std::io::Result<Self> {
        let socket = Arc::new(socket);
        let (to_server, from_client) = mpsc::channel::<Delayed>(QUEUE);
        let (to_client, from_server) = mpsc::channel::<Delayed>(QUEUE);
        let forwarders =
            [from_client, from_server].map(|queue| tokio::spawn(forward(socket.clone(), queue)));
        let receiver = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65536];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let due = Instant::now() + one_way;
                let (queue, to) = if from == server {
                    match client {
                        Some(c) => (&to_client, c),
                        None => continue,
                    }
                } else if *client.get_or_insert(from) == from {
                    (&to_server, server)
                } else {
                    continue;
                };
                // A full queue drops, like a router's buffer.
                let _ = queue.try_send((due, buf[..len].to_vec(), to));
            }
        });
        let mut tasks = vec![receiver];
        tasks.extend(forwarders);
        Ok(Self { addr, tasks })
    }
}

async fn forward(socket: Arc<UdpSocket>, mut queue: mpsc::Receiver<Delayed>) {
    while let Some((due, datagram, to)) = queue.recv().await {
        tokio::time::sleep_until(due).await;
        let _ = socket.send_to(&datagram, to).await;
    }
}
