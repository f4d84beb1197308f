//! Stream links: keywire's datagrams carried over a byte stream, for networks that block UDP.
//!
//! A client that cannot reach a gate over UDP opens TCP to the same host and port and sends the
//! same datagrams it would have sent over UDP (QUIC packets, relay frames, control packets),
//! each framed so the far end can cut the stream back into datagrams. Two framings:
//!
//! - [`framing`]: raw TCP. An 8-byte preamble, then each datagram behind a 2-byte length.
//! - [`websocket`]: an HTTP/1.1 upgrade ([`http`]), then one binary WebSocket message per
//!   datagram (RFC 6455), so the link passes HTTP proxies and can sit behind a reverse proxy.
//!
//! [`http`] also holds the HTTP CONNECT exchange a client uses to go through a proxy.
//! Every decoder here is a pure function of its input buffer, checks every length before
//! reading and never panics; byte layouts are in `docs/relay.md`.

pub mod framing;
pub mod http;
pub mod websocket;

/// Largest datagram a link carries. Everything keywire sends on UDP is smaller: QUIC packets
/// stay under 1452 bytes including the relay header (`MAX_UDP_PAYLOAD` in the `keywire`
/// crate), and control packets are smaller still. A larger length on the wire is a protocol
/// violation, so a peer can never make the reader buffer more than this per datagram.
pub const MAX_LINK_DATAGRAM: usize = 2048;
