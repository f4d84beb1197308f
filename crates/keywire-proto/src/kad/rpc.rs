//! DHT RPCs: one datagram each, version 1, at most [`MAX_RPC_LEN`] bytes.
//!
//! ```text
//! version (1) = 1 | type (1) | txid (8) | flags (1) | sender key (32) | [cookie (8)] | body
//!   | zero padding
//! ```
//!
//! Flags: `0x01` the sender is in server mode (answers and stores; only such senders enter
//! routing tables), `0x02` a cookie follows the sender key. Other bits are refused. In a
//! request the cookie is the one the responder handed out earlier (it proves the source
//! address); in a reply it is a fresh cookie for the requester to use next time. Padding lets
//! a requester without a cookie make its request as large as the reply it asks for (see
//! [`super::limits`]). Bodies are listed on [`Message`]; layouts in `docs/dht.md`.

use std::net::SocketAddr;

use super::record::{AddressRecord, Publication};
use super::routing::Contact;
use super::wire::{put_socket_addr, socket_addr_len, Reader, WireError};
use crate::identity::NodeId;

/// The DHT wire version this node speaks.
pub const WIRE_VERSION: u8 = 1;
/// Largest RPC: with the 2-byte control header, 1200 bytes of UDP payload, which fits the
/// IPv6 minimum MTU (1280) with room for IP and UDP headers and keywire's relay header.
pub const MAX_RPC_LEN: usize = 1198;
/// Most contacts in one reply (BitTorrent's mainline DHT also answers with 8: enough for
/// α-parallel lookups, and a reply stays small).
pub const MAX_REPLY_CONTACTS: usize = 8;
/// Header length without a cookie.
pub const HEADER_LEN: usize = 43;
/// A stateless address-validation cookie.
pub type Cookie = [u8; 8];

const FLAG_SERVER: u8 = 0x01;
const FLAG_COOKIE: u8 = 0x02;

/// A whole RPC datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rpc {
    /// Matches a reply to its request; one-way messages use a random one too.
    pub txid: u64,
    /// The sender's key: a claim, not checked to be a curve point (see `docs/dht.md`, "what is
    /// and is not proven").
    pub sender: NodeId,
    /// Whether the sender answers and stores.
    pub sender_is_server: bool,
    /// See the module docs.
    pub cookie: Option<Cookie>,
    /// The body.
    pub message: Message,
    /// Zero bytes after the body.
    pub padding: usize,
}

/// RPC bodies. Requests have types `0x01..=0x0A`, replies `0x81..=0x86`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// `0x01`, empty. Liveness check; answered by [`Message::Pong`].
    Ping,
    /// `0x02`: target (32). Answered by [`Message::Nodes`].
    FindNode {
        /// Overlay id to find the closest nodes to.
        target: [u8; 32],
    },
    /// `0x03`: key (32). Answered by [`Message::RecordReply`].
    FindRecord {
        /// Whose address record.
        key: NodeId,
    },
    /// `0x04`: record. Answered by [`Message::Stored`].
    Store(AddressRecord),
    /// `0x05`: topic (32) | ttl seconds (2). Answered by [`Message::Subscribed`].
    Subscribe {
        /// Topic.
        topic: [u8; 32],
        /// Requested lifetime.
        ttl_secs: u16,
    },
    /// `0x06`: publication. Answered by [`Message::Published`].
    Publish(Publication),
    /// `0x07`: observed address | publication. One-way, to a subscriber.
    Deliver {
        /// The publisher's address as the forwarding node saw it (not signed by the publisher).
        observed: SocketAddr,
        /// The publication.
        publication: Publication,
    },
    /// `0x08`, empty. "Ask someone else to send me a [`Message::ReachProof`]". One-way.
    ReachRequest,
    /// `0x09`: target address. "Send a proof to this address", txid carried over. One-way.
    ReachRelay {
        /// Where the proof goes.
        target: SocketAddr,
    },
    /// `0x0A`, empty. Arrived unsolicited, so the receiver is reachable. One-way.
    ReachProof,
    /// `0x81`: observed address (the requester's, as the responder sees it).
    Pong {
        /// The requester's address as seen by the responder.
        observed: SocketAddr,
    },
    /// `0x82`: n (1, ≤ 8) | n × (key (32) | address).
    Nodes(Vec<Contact>),
    /// `0x83`: has record (1: 0 or 1) | optional record | n (1, ≤ 8) | n contacts.
    RecordReply {
        /// The freshest valid record the responder holds.
        record: Option<AddressRecord>,
        /// Closer nodes.
        closer: Vec<Contact>,
    },
    /// `0x84`: accepted (1: 0 or 1).
    Stored {
        /// Whether the record was kept.
        accepted: bool,
    },
    /// `0x85`: granted ttl seconds (2; 0 = refused).
    Subscribed {
        /// Granted lifetime.
        ttl_secs: u16,
    },
    /// `0x86`: forwarded to n subscribers (1).
    Published {
        /// How many subscribers it went to.
        forwarded: u8,
    },
}

impl Message {
    /// The type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Self::Ping => 0x01,
            Self::FindNode { .. } => 0x02,
            Self::FindRecord { .. } => 0x03,
            Self::Store(_) => 0x04,
            Self::Subscribe { .. } => 0x05,
            Self::Publish(_) => 0x06,
            Self::Deliver { .. } => 0x07,
            Self::ReachRequest => 0x08,
            Self::ReachRelay { .. } => 0x09,
            Self::ReachProof => 0x0A,
            Self::Pong { .. } => 0x81,
            Self::Nodes(_) => 0x82,
            Self::RecordReply { .. } => 0x83,
            Self::Stored { .. } => 0x84,
            Self::Subscribed { .. } => 0x85,
            Self::Published { .. } => 0x86,
        }
    }

    /// Whether this is a reply (matched to a pending request by txid).
    pub fn is_reply(&self) -> bool {
        self.type_byte() & 0x80 != 0
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ping | Self::ReachRequest | Self::ReachProof => {}
            Self::FindNode { target } => out.extend_from_slice(target),
            Self::FindRecord { key } => out.extend_from_slice(key.as_bytes()),
            Self::Store(record) => record.encode(out),
            Self::Subscribe { topic, ttl_secs } => {
                out.extend_from_slice(topic);
                out.extend_from_slice(&ttl_secs.to_be_bytes());
            }
            Self::Publish(p) => p.encode(out),
            Self::Deliver {
                observed,
                publication,
            } => {
                put_socket_addr(out, observed);
                publication.encode(out);
            }
            Self::ReachRelay { target } => put_socket_addr(out, target),
            Self::Pong { observed } => put_socket_addr(out, observed),
            Self::Nodes(contacts) => put_contacts(out, contacts),
            Self::RecordReply { record, closer } => {
                match record {
                    Some(r) => {
                        out.push(1);
                        r.encode(out);
                    }
                    None => out.push(0),
                }
                put_contacts(out, closer);
            }
            Self::Stored { accepted } => out.push(u8::from(*accepted)),
            Self::Subscribed { ttl_secs } => out.extend_from_slice(&ttl_secs.to_be_bytes()),
            Self::Published { forwarded } => out.push(*forwarded),
        }
    }

    fn decode_body(kind: u8, r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(match kind {
            0x01 => Self::Ping,
            0x02 => Self::FindNode { target: r.array()? },
            0x03 => Self::FindRecord {
                key: r.claimed_node_id()?,
            },
            0x04 => Self::Store(AddressRecord::decode(r)?),
            0x05 => Self::Subscribe {
                topic: r.array()?,
                ttl_secs: r.u16()?,
            },
            0x06 => Self::Publish(Publication::decode(r)?),
            0x07 => Self::Deliver {
                observed: r.socket_addr()?,
                publication: Publication::decode(r)?,
            },
            0x08 => Self::ReachRequest,
            0x09 => Self::ReachRelay {
                target: r.socket_addr()?,
            },
            0x0A => Self::ReachProof,
            0x81 => Self::Pong {
                observed: r.socket_addr()?,
            },
            0x82 => Self::Nodes(read_contacts(r)?),
            0x83 => {
                let record = match r.u8()? {
                    0 => None,
                    1 => Some(AddressRecord::decode(r)?),
                    _ => return Err(WireError::Invalid("record flag")),
                };
                Self::RecordReply {
                    record,
                    closer: read_contacts(r)?,
                }
            }
            0x84 => Self::Stored {
                accepted: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Invalid("accepted flag")),
                },
            },
            0x85 => Self::Subscribed { ttl_secs: r.u16()? },
            0x86 => Self::Published { forwarded: r.u8()? },
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

/// Encoded length of one contact.
pub fn contact_len(contact: &Contact) -> usize {
    32 + socket_addr_len(&contact.addr)
}

fn put_contacts(out: &mut Vec<u8>, contacts: &[Contact]) {
    let n = contacts.len().min(MAX_REPLY_CONTACTS);
    out.push(n as u8);
    for c in &contacts[..n] {
        out.extend_from_slice(c.node_id.as_bytes());
        put_socket_addr(out, &c.addr);
    }
}

fn read_contacts(r: &mut Reader<'_>) -> Result<Vec<Contact>, WireError> {
    let n = r.count("contacts", MAX_REPLY_CONTACTS)?;
    (0..n)
        .map(|_| Ok(Contact::new(r.claimed_node_id()?, r.socket_addr()?)))
        .collect()
}

impl Rpc {
    /// Encodes the RPC. Fails only on local misuse: a message over [`MAX_RPC_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(128);
        out.push(WIRE_VERSION);
        out.push(self.message.type_byte());
        out.extend_from_slice(&self.txid.to_be_bytes());
        let mut flags = 0;
        if self.sender_is_server {
            flags |= FLAG_SERVER;
        }
        if self.cookie.is_some() {
            flags |= FLAG_COOKIE;
        }
        out.push(flags);
        out.extend_from_slice(self.sender.as_bytes());
        if let Some(cookie) = &self.cookie {
            out.extend_from_slice(cookie);
        }
        self.message.encode_body(&mut out);
        out.resize(out.len() + self.padding, 0);
        if out.len() > MAX_RPC_LEN {
            return Err(WireError::TooLarge(out.len()));
        }
        Ok(out)
    }

    /// Decodes an RPC; never panics, whatever the input.
    pub fn decode(input: &[u8]) -> Result<Self, WireError> {
        if input.len() > MAX_RPC_LEN {
            return Err(WireError::TooLarge(input.len()));
        }
        let mut r = Reader::new(input);
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let kind = r.u8()?;
        let txid = r.u64()?;
        let flags = r.u8()?;
        if flags & !(FLAG_SERVER | FLAG_COOKIE) != 0 {
            return Err(WireError::Invalid("flags"));
        }
        let sender = r.claimed_node_id()?;
        let cookie = if flags & FLAG_COOKIE != 0 {
            Some(r.array()?)
        } else {
            None
        };
        let message = Message::decode_body(kind, &mut r)?;
        let rest = r.remaining();
        if rest.iter().any(|&b| b != 0) {
            return Err(WireError::TrailingBytes);
        }
        Ok(Self {
            txid,
            sender,
            sender_is_server: flags & FLAG_SERVER != 0,
            cookie,
            message,
            padding: rest.len(),
        })
    }
}

#[cfg(test)]
#[path = "rpc_tests.rs"]
mod tests;
