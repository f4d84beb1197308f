//! keywire: reach any peer by its public key over an encrypted, reliable, multiplexed channel.
//!
//! An [`Endpoint`] owns one UDP socket and one identity ([`SecretKey`]). It dials peers by
//! [`NodeAddr`] (a [`NodeId`] plus addresses, usually from a [`Ticket`]) and accepts their
//! connections; TLS 1.3 with raw public keys proves both keys, and a post-handshake check keeps
//! networks with different [`NetworkId`]s apart.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use keywire::{Endpoint, EndpointConfig, SecretKey};
//!
//! let key = SecretKey::generate(&mut rand::rngs::OsRng);
//! let endpoint = Endpoint::bind(EndpointConfig::new(key).alpn(b"my-app/1".to_vec()))?;
//! let ticket: keywire::Ticket = "kwt1...".parse()?;
//! let conn = endpoint.connect(&ticket.node, b"my-app/1").await?;
//! let (mut send, mut recv) = conn.open_bi().await?;
//! send.write_all(b"hello").await?;
//! send.finish()?;
//! let reply = recv.read_to_end(1024).await?;
//! # Ok(()) }
//! ```
// `deny`, not `forbid`: the `sys` module alone may call libc (DESIGN.md rule 9).
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod accept;
pub mod address_book;
pub mod bench_support;
mod birthday;
mod config;
mod connection;
pub mod dht;
mod dial;
pub mod discovery;
mod endpoint;
mod error;
pub mod gate;
mod handshake;
mod introducer;
pub mod key_file;
mod link;
mod metrics;
mod router;
pub mod signal;
mod socket;
mod sys;
mod tls;
mod transport;
mod udp;
mod upgrade;

pub use address_book::{AddressBook, AddressBookError, AddressSource, BookLimits, KnownAddress};
pub use config::{EndpointConfig, MAX_ANNOUNCED_ADDRS};
pub use connection::{Connection, Path, PathEvents, RelayLink};
pub use discovery::{Discovery, IntroChannel, KeyConnection};
pub use endpoint::Endpoint;
pub use error::{close_code, AttemptError, AttemptFailure, BindError, ConnectError};
pub use introducer::{GateIntroducer, Introducer, IntroductionFuture, PeerIntroducer};
pub use keywire_proto::datagram::ControlKind;
pub use keywire_proto::nat::{Mapping, NatReport};
pub use keywire_proto::{NetworkId, NodeAddr, NodeId, SecretKey, Ticket, TicketError};
pub use link::{GateLinkConfig, GateLinkMode, LinkError};
pub use metrics::MetricsSnapshot;
pub use router::{BoxFuture, ProtocolHandler};
pub use socket::{ControlChannel, ControlDatagram};
pub use tls::PeerPolicy;
pub use transport::{MAX_UDP_PAYLOAD, RELAY_HEADER_ROOM};
pub use {keywire_proto as proto, quinn};
