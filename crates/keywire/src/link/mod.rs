//! Stream links: a TCP connection (raw, or WebSocket) that carries the socket's datagrams for
//! one address when UDP is blocked. [`run`] moves datagrams between the stream and the socket;
//! `dial` opens one to a gate (directly or through an HTTP CONNECT proxy); the gate's side
//! accepts them in `gate::stream_listener`. Framing: `keywire_proto::link`.

pub(crate) mod dial;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use keywire_proto::link::{framing, websocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub(crate) use crate::socket::links::Framing;
use crate::socket::KeywireSocket;

pub use dial::{GateLinkConfig, GateLinkMode, LinkError};

/// A link that carried no whole frame for this long is dead: every QUIC connection over it
/// sends a keep-alive at least every 10 s (the default), so a minute without one means the far
/// end is gone without closing (a dropped NAT or proxy mapping), or is trickling bytes to hold
/// a slot, and its table entry must go.
const LINK_IDLE: Duration = Duration::from_secs(60);
/// How long a closing link may take to write what was queued before it closed.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);
/// Most framed bytes written to the stream in one write (batching small datagrams).
const WRITE_BATCH: usize = 64 << 10;
/// Bytes read from the stream in one go.
const READ_CHUNK: usize = 16 << 10;

/// Carries `addr`'s datagrams over `stream` until either side ends it or it goes idle. The
/// address goes back to UDP when this returns (or is aborted).
pub(crate) async fn run(
    socket: Arc<KeywireSocket>,
    addr: SocketAddr,
    stream: TcpStream,
    framing: Framing,
) {
    // Datagrams are small and latency-bound (QUIC's ACKs pace the sender): no Nagle delay.
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (outgoing, registration) = socket.links.add(addr, peer, framing);
    let (read, write) = stream.into_split();
    let mut writer = std::pin::pin!(write_loop(write, outgoing));
    tokio::select! {
        _ = &mut writer => {}
        _ = read_loop(&socket, addr, read, framing) => {
            // Dropping the registration closes the queue behind what is in it (a WebSocket
            // close frame, say); the writer gets a moment to send that, then stops.
            drop(registration);
            let _ = tokio::time::timeout(CLOSE_DRAIN, &mut writer).await;
        }
    }
}

async fn write_loop(mut write: OwnedWriteHalf, mut outgoing: mpsc::Receiver<Vec<u8>>) {
    let mut out = Vec::with_capacity(WRITE_BATCH);
    while let Some(first) = outgoing.recv().await {
        out.clear();
        out.extend_from_slice(&first);
        while out.len() < WRITE_BATCH {
            match outgoing.try_recv() {
                Ok(more) => out.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Reads frames until the stream ends, breaks its framing or goes idle.
async fn read_loop(
    socket: &KeywireSocket,
    addr: SocketAddr,
    mut read: OwnedReadHalf,
    framing: Framing,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut reassembly = websocket::Reassembly::default();
    // Only whole frames count as life: bytes trickled into a frame never finished do not.
    let mut deadline = tokio::time::Instant::now() + LINK_IDLE;
    loop {
        buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, read.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        let before = buf.len();
        let more = match framing {
            Framing::Raw => take_raw(socket, addr, &mut buf),
            Framing::WebSocket { client } => {
                take_websocket(socket, addr, &mut buf, client, &mut reassembly)
            }
            // Datagram framing belongs to UDP side sockets; on a stream it means nothing.
            Framing::Datagram => false,
        };
        if !more {
            return;
        }
        if buf.len() < before {
            deadline = tokio::time::Instant::now() + LINK_IDLE;
        }
    }
}

/// Delivers every whole raw frame in `buf` (consuming it); false if the stream is broken.
fn take_raw(socket: &KeywireSocket, addr: SocketAddr, buf: &mut BytesMut) -> bool {
    loop {
        match framing::decode(buf) {
            Ok(Some((datagram, used))) => {
                socket.deliver_from_link(addr, datagram.to_vec());
                buf.advance(used);
            }
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// Handles every whole WebSocket frame in `buf` (consuming it); false if the link must end.
fn take_websocket(
    socket: &KeywireSocket,
    addr: SocketAddr,
    buf: &mut BytesMut,
    client: bool,
    reassembly: &mut websocket::Reassembly,
) -> bool {
    use websocket::{Opcode, WsEvent};
    let mask = || client.then(rand::random::<[u8; 4]>);
    loop {
        let frame = match websocket::decode(buf, !client) {
            Ok(Some(frame)) => frame,
            Ok(None) => return true,
            Err(_) => return false,
        };
        let event = reassembly.handle_frame(&frame, &buf[frame.payload.clone()]);
        buf.advance(frame.consumed);
        match event {
            Ok(WsEvent::Datagram(datagram)) => socket.deliver_from_link(addr, datagram),
            Ok(WsEvent::Ping(payload)) => {
                let mut pong = Vec::new();
                if websocket::encode(Opcode::Pong, &payload, mask(), &mut pong).is_ok() {
                    socket.links.send_framed(addr, pong);
                }
            }
            Ok(WsEvent::Nothing) => {}
            Ok(WsEvent::Close) | Err(_) => {
                let mut close = Vec::new();
                let _ = websocket::encode(Opcode::Close, &[], mask(), &mut close);
                socket.links.send_framed(addr, close);
                return false;
            }
        }
    }
}

/// Reads an HTTP head one byte at a time, so that nothing after it is taken from the stream,
/// until `check` accepts or refuses it (at most `keywire_proto::link::http::MAX_HEAD` bytes).
pub(crate) async fn read_head<T, E>(
    stream: &mut TcpStream,
    start: &[u8],
    check: impl Fn(&[u8]) -> Result<Option<T>, E>,
) -> Result<T, LinkError>
where
    E: Into<LinkError>,
{
    let mut head = start.to_vec();
    loop {
        // Only a whole head (or one too long) is worth parsing.
        if head.ends_with(b"\r\n\r\n") || head.len() >= keywire_proto::link::http::MAX_HEAD {
            if let Some(done) = check(&head).map_err(Into::into)? {
                return Ok(done);
            }
        }
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Err(LinkError::Closed);
        }
        head.push(byte[0]);
    }
}
