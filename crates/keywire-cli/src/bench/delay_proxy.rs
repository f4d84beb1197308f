//! A UDP forwarder on loopback that delays every datagram by a fixed one-way time, so connection
//! set-up can be counted in round trips (elapsed / RTT) rather than reported as a bare time.
//!
//! Serves one client: the first source address that writes to it. Bounded: at most
//! `MAX_IN_FLIGHT` datagrams wait at once, more are dropped; it stops when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

const MAX_IN_FLIGHT: usize = 4096;

pub struct DelayProxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DelayProxy {
    /// Starts a proxy in front of `server` adding `one_way` in each direction.
    pub async fn start(server: SocketAddr, one_way: Duration) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = socket.local_addr()?;
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let budget = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let mut buf = vec![0u8; 65536];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let to = if from == server {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client.get_or_insert(from);
                    if Some(from) != client {
                        continue;
                    }
                    server
                };
                let Ok(permit) = budget.clone().try_acquire_owned() else {
                    continue;
                };
                let datagram = buf[..len].to_vec();
                let socket = socket.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(one_way).await;
                    let _ = socket.send_to(&datagram, to).await;
                    drop(permit);
                });
            }
        });
        Ok(Self { addr, task })
    }
}
