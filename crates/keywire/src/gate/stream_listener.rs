//! The gate's side of stream links: TCP on the same port number as its UDP port (and any
//! extra addresses configured), for clients whose networks block UDP. The first bytes tell a
//! raw link (its preamble) from an HTTP request (a WebSocket upgrade, e.g. through a reverse
//! proxy); each accepted link gets an address of its own in the socket, so registration and
//! relaying treat its client like any other (`docs/relay.md`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keywire_proto::link::framing::{self, StreamStart};
use keywire_proto::link::http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::server::{Counters, State};
use crate::link::{self, read_head, Framing, LinkError};
use crate::socket::KeywireSocket;

/// How long a new TCP connection may take to show what it is (preamble or upgrade).
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Links open per IP address; a link holds its entry until it ends. Bounded by the links
/// themselves (at most `max_links` entries).
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One IP address's share of the links, released on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// A slot for `ip` unless it already holds `limit` links.
    fn take(table: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        let mut open = table.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The gate's bounds on links, shared by all its listeners (the UDP port's number and any
/// extra addresses), so that more listeners do not multiply them.
pub(crate) struct LinkLimits {
    slots: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
}

impl LinkLimits {
    pub(crate) fn new(max_links: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_links)),
            per_ip: Arc::new(PerIp::default()),
        }
    }
}

/// The part of an address that names one host for the per-address bound: an IPv4 address, or
/// an IPv6 /64 (one host usually holds a whole /64).
fn host_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(prefix.into())
        }
    }
}

/// Accepts links on `listener` until the gate stops (dropping this future ends every link).
pub(crate) async fn listen(
    state: Arc<State>,
    socket: Arc<KeywireSocket>,
    listener: TcpListener,
    limits: Arc<LinkLimits>,
) {
    let mut links = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = links.join_next() => continue,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        // Bounded: past `max_links` in all, or `max_links_per_ip` from one address (an IPv6
        // /64), a new connection is closed at once (so one host cannot hold every slot).
        let ip = host_of(keywire_proto::ticket::canonical_addr(peer).ip());
        let (Ok(slot), Some(ip_slot)) = (
            limits.slots.clone().try_acquire_owned(),
            PerIp::take(&limits.per_ip, ip, state.config.max_links_per_ip),
        ) else {
            Counters::inc(&state.counters.links_refused);
            continue;
        };
        let (state, socket) = (state.clone(), socket.clone());
        links.spawn(async move {
            let _slots = (slot, ip_slot);
            serve(state, socket, stream).await;
        });
    }
}

async fn serve(state: Arc<State>, socket: Arc<KeywireSocket>, mut stream: TcpStream) {
    let framing = match tokio::time::timeout(HANDSHAKE_LIMIT, handshake(&mut stream)).await {
        Ok(Ok(framing)) => framing,
        _ => {
            Counters::inc(&state.counters.links_refused);
            return;
        }
    };
    Counters::inc(&state.counters.links_accepted);
    let addr = socket.links.accepted_addr();
    link::run(socket, addr, stream, framing).await;
}

/// Reads what the stream starts with and answers an upgrade; the framing to use from then on.
async fn handshake(stream: &mut TcpStream) -> Result<Framing, LinkError> {
    let mut start = [0u8; framing::PREAMBLE.len()];
    stream.read_exact(&mut start).await?;
    match framing::sniff(&start) {
        StreamStart::RawLink => Ok(Framing::Raw),
        StreamStart::HttpGet => {
            match read_head(stream, &start, http::parse_upgrade_request).await {
                Ok(request) => {
                    let accept = keywire_proto::link::websocket::accept_value(&request.key);
                    stream
                        .write_all(http::upgrade_response(&accept).as_bytes())
                        .await?;
                    Ok(Framing::WebSocket { client: false })
                }
                Err(e) => {
                    let _ = stream.write_all(http::BAD_REQUEST.as_bytes()).await;
                    Err(e)
                }
            }
        }
        StreamStart::Unknown | StreamStart::NeedMore => Err(LinkError::NotALink),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ipv6_host_is_its_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(host_of(a), host_of(b));
        assert_ne!(host_of(a), host_of(other));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(host_of(v4), v4);
    }
}
