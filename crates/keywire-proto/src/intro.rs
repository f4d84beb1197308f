//! Introductions by key (issue 11): how a dialer that knows only a node's key asks it, through
//! the DHT or the MQTT pool, to open its NAT toward the dialer, and the nudge that does it.
//!
//! ```text
//! introduction: version = 1 | kind (1: 1 request, 2 reply) | to (32) | time, unix ms (8)
//!               | nonce (16) | n (1, ≤ 8) | n × address
//! nudge:        0x21 | version = 1 | token (16)          (a control packet, 18 bytes)
//!               token = BLAKE3("keywire nudge v1" ‖ nonce)[..16]
//! over the DHT: sealed box (as MQTT envelopes) of "keywire intro v1" ‖ sender key (32)
//!               ‖ introduction
//! ```
//!
//! An introduction travels inside something already signed by its sender: a DHT publication
//! (signed over topic, publisher, sequence and time) or an MQTT envelope (sealed to the
//! destination, signed over source, destination and time). Over the DHT it is also sealed to
//! the destination, so that no one else (not the nodes that forward it, nor anyone subscribed
//! to the same topic) learns its nonce or the sender's addresses, and it names its sender, who
//! must be the publication's publisher. It repeats the destination and a time so that it
//! cannot be moved to another node or replayed later, and carries a random nonce. The receiver
//! answers by sending a nudge to each of the sender's candidate addresses: the nudge opens the
//! receiver's NAT toward the sender, and tells the sender which of the receiver's addresses is
//! open. The nudge carries a hash of the nonce, so the bytes it carries are not the sender's
//! choice. Nothing in a nudge is trusted beyond that: the connection that follows proves the
//! key with TLS, so a forged nudge or a forged address can waste a dial, never redirect it.

use std::net::{IpAddr, SocketAddr};

use crate::datagram::{ControlKind, CONTROL_VERSION};
use crate::wire::{put_addr, Reader, WireError};
use crate::NodeId;

/// The introduction format's version.
pub const INTRO_VERSION: u8 = 1;
/// Most candidate addresses in an introduction.
pub const MAX_INTRO_CANDIDATES: usize = 8;
/// How far an introduction's time may be from ours (either way), in ms.
pub const INTRO_WINDOW_MS: u64 = 60_000;
/// Length of a nudge packet, control header included.
pub const NUDGE_LEN: usize = 2 + 16;

const REQUEST: u8 = 1;
const REPLY: u8 = 2;

/// A request ("I want to reach you, open toward me") or a reply ("here is where I am").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntroKind {
    /// From the dialer.
    Request,
    /// From the node dialed, answering a request (over MQTT, where the dialer has no record).
    Reply,
}

/// An introduction (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introduction {
    /// Request or reply.
    pub kind: IntroKind,
    /// The node it is meant for.
    pub to: NodeId,
    /// The sender's clock, unix ms.
    pub time_ms: u64,
    /// Random; echoed in nudges (and in a reply to a request).
    pub nonce: [u8; 16],
    /// Where the sender can be reached (at most [`MAX_INTRO_CANDIDATES`]).
    pub candidates: Vec<SocketAddr>,
}

/// Why an introduction was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntroError {
    /// Not a well-formed introduction.
    #[error("malformed introduction: {0}")]
    Malformed(&'static str),
    /// Truncated or with a bad address.
    #[error("malformed introduction: {0}")]
    Wire(#[from] WireError),
    /// Meant for another node.
    #[error("introduction meant for another node")]
    WrongDestination,
    /// Its time is too far from ours.
    #[error("introduction time is {0} ms away from ours")]
    Stale(u64),
    /// Seen before.
    #[error("introduction replayed")]
    Replayed,
}

impl Introduction {
    /// The encoded bytes. Candidates beyond [`MAX_INTRO_CANDIDATES`] are left out.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(60 + 19 * self.candidates.len());
        out.push(INTRO_VERSION);
        out.push(match self.kind {
            IntroKind::Request => REQUEST,
            IntroKind::Reply => REPLY,
        });
        out.extend_from_slice(self.to.as_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        let candidates = &self.candidates[..self.candidates.len().min(MAX_INTRO_CANDIDATES)];
        out.push(candidates.len() as u8);
        for addr in candidates {
            put_addr(&mut out, addr);
        }
        out
    }

    /// Parses bytes; never panics. Trailing bytes, unknown versions or kinds, a destination
    /// that is not a key, too many candidates or an unusable candidate are refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, IntroError> {
        let mut r = Reader(bytes);
        if r.u8()? != INTRO_VERSION {
            return Err(IntroError::Malformed("unknown version"));
        }
        let kind = match r.u8()? {
            REQUEST => IntroKind::Request,
            REPLY => IntroKind::Reply,
            _ => return Err(IntroError::Malformed("unknown kind")),
        };
        let to = NodeId::from_bytes(r.array()?)
            .map_err(|_| IntroError::Malformed("destination is not a key"))?;
        let time_ms = r.u64()?;
        let nonce = r.array()?;
        let n = usize::from(r.u8()?);
        if n > MAX_INTRO_CANDIDATES {
            return Err(IntroError::Malformed("too many candidates"));
        }
        let mut candidates = Vec::with_capacity(n);
        for _ in 0..n {
            let addr = r.addr()?;
            if !is_usable_candidate(&addr) {
                return Err(IntroError::Malformed("unusable candidate address"));
            }
            candidates.push(addr);
        }
        if !r.is_empty() {
            return Err(IntroError::Malformed("trailing bytes"));
        }
        Ok(Self {
            kind,
            to,
            time_ms,
            nonce,
            candidates,
        })
    }

    /// Checks destination and time against ours.
    pub fn check(&self, me: &NodeId, now_ms: u64) -> Result<(), IntroError> {
        if self.to != *me {
            return Err(IntroError::WrongDestination);
        }
        let skew = self.time_ms.abs_diff(now_ms);
        if skew > INTRO_WINDOW_MS {
            return Err(IntroError::Stale(skew));
        }
        Ok(())
    }
}

/// Whether an address may be nudged or dialed at all: a unicast address with a port.
pub fn is_usable_candidate(addr: &SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    match addr.ip() {
        IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast()),
        IpAddr::V6(ip) => !(ip.is_unspecified() || ip.is_multicast()),
    }
}

/// The DHT topic a node listens on for introductions.
pub fn intro_topic(node: &NodeId) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"keywire intro topic v1");
    hasher.update(node.as_bytes());
    *hasher.finalize().as_bytes()
}

/// The token nudges answering the introduction with `nonce` carry.
pub fn nudge_token(nonce: &[u8; 16]) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"keywire nudge v1");
    hasher.update(nonce);
    let mut token = [0u8; 16];
    token.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    token
}

/// A nudge packet carrying `token` (see [`nudge_token`]).
pub fn encode_nudge(token: &[u8; 16]) -> [u8; NUDGE_LEN] {
    let mut out = [0u8; NUDGE_LEN];
    out[0] = ControlKind::Intro.to_byte();
    out[1] = CONTROL_VERSION;
    out[2..].copy_from_slice(token);
    out
}

const SEALED_TAG: &[u8; 16] = b"keywire intro v1";

/// Seals `intro`, from `from`, to its destination (for the DHT, where anyone may read a topic).
pub fn seal_intro<R: rand_core::CryptoRngCore + ?Sized>(
    intro: &Introduction,
    from: &NodeId,
    rng: &mut R,
) -> Result<Vec<u8>, crate::signal::SealError> {
    let mut inner = Vec::with_capacity(48 + 60);
    inner.extend_from_slice(SEALED_TAG);
    inner.extend_from_slice(from.as_bytes());
    inner.extend_from_slice(&intro.encode());
    crate::signal::seal_raw(&inner, &intro.to, rng)
}

/// Opens a sealed introduction published by `publisher`; refused if it does not open with our
/// key, is not an introduction, or names another sender than the publisher.
pub fn open_intro(
    opener: &crate::signal::Opener,
    sealed: &[u8],
    publisher: &NodeId,
) -> Result<Introduction, IntroError> {
    let inner = opener
        .open_raw(sealed)
        .map_err(|_| IntroError::Malformed("does not open with our key"))?;
    let mut r = Reader(&inner);
    if r.bytes(SEALED_TAG.len())? != SEALED_TAG {
        return Err(IntroError::Malformed("not a sealed introduction"));
    }
    if r.array::<32>()? != *publisher.as_bytes() {
        return Err(IntroError::Malformed(
            "sealed by someone else than its publisher",
        ));
    }
    Introduction::decode(r.0)
}

/// The token of a nudge packet (control header included); `None` for anything else.
pub fn decode_nudge(packet: &[u8]) -> Option<[u8; 16]> {
    if packet.len() != NUDGE_LEN
        || packet[0] != ControlKind::Intro.to_byte()
        || packet[1] != CONTROL_VERSION
    {
        return None;
    }
    packet[2..].try_into().ok()
}

/// Remembers the introductions accepted lately, so that a replayed one is refused. Bounded:
/// entries older than twice [`INTRO_WINDOW_MS`] are forgotten (a replay that old fails the time
/// check anyway); when full, the oldest entry goes.
#[derive(Debug)]
pub struct IntroGuard {
    seen: std::collections::VecDeque<(u64, NodeId, [u8; 16])>,
    capacity: usize,
}

impl IntroGuard {
    /// A guard remembering at most `capacity` introductions.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: std::collections::VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Checks `intro` from `from` (destination, time, replay) and remembers it if accepted.
    pub fn accept(
        &mut self,
        from: &NodeId,
        intro: &Introduction,
        me: &NodeId,
        now_ms: u64,
    ) -> Result<(), IntroError> {
        intro.check(me, now_ms)?;
        while self
            .seen
            .front()
            .is_some_and(|(at, _, _)| now_ms.saturating_sub(*at) > 2 * INTRO_WINDOW_MS)
        {
            self.seen.pop_front();
        }
        if self
            .seen
            .iter()
            .any(|(_, f, n)| f == from && *n == intro.nonce)
        {
            return Err(IntroError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            self.seen.pop_front();
        }
        self.seen.push_back((now_ms, *from, intro.nonce));
        Ok(())
    }
}

#[cfg(test)]
#[path = "intro_tests.rs"]
mod tests;
