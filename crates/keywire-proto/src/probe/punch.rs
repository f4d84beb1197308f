//! Hole punching beyond plain probing, without I/O: the two ends of a relayed connection swap
//! their NAT kinds over the relay ([`super::signal`]), and when exactly one of them maps
//! endpoint-dependently, they try *birthday probing*:
//!
//! - the hard side (endpoint-dependent) opens many extra UDP sockets, each sending a probe to
//!   the easy side's reflexive address: each opens a new mapping on the hard NAT, filtered to
//!   the easy side's address, and then says "go" through the relay;
//! - the easy side, on "go", sends probes from its main socket to random ports of the hard side's
//!   IP ([`Spray`]): its endpoint-independent mapping makes them all come from the address the
//!   hard side's mappings wait for, and each opens the easy side's filter for that port. One
//!   that lands on a port the hard NAT mapped reaches an extra socket; the path probes take it
//!   from there ([`super::Prober`]).
//!
//! With 256 mappings among 64,512 ports, a probe hits with p ≈ 1/252: 2,000 probes miss all with
//! probability e^-7.9 ≈ 0.04 %, and the median hit comes after ≈ 175 probes (0.9 s at 200/s).
//!
//! Everything is bounded: hellos, attempts per connection, probes per attempt (and their rate),
//! an attempt's duration. Birthday probing aims only at the IP the peer itself claimed in its
//! authenticated hello, never where both sides map endpoint-dependently (odds ≈ 0), and not
//! when this side has no NAT (plain probing reaches it).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::signal::Signal;
use super::{ProbeError, ProbeKeys};
use crate::nat::Mapping;
use crate::network_id::Role;
use crate::ticket::canonical_addr;

/// Limits and timing of [`Punch`] and [`Spray`].
#[derive(Debug, Clone)]
pub struct PunchConfig {
    /// Between two hellos while the peer has not confirmed ours.
    pub hello_interval: Duration,
    /// Hellos sent per connection at most.
    pub max_hellos: u32,
    /// How long plain probing gets, once both NAT kinds are known, before birthday probing.
    pub birthday_after: Duration,
    /// Birthday attempts per connection.
    pub birthday_attempts: u8,
    /// Longest birthday attempt; then its sockets close and its probing stops.
    pub attempt_limit: Duration,
    /// "Go" signals per attempt (the relay may lose one) and the gap between them.
    pub go_repeats: u32,
    /// Between two "go" signals of one attempt.
    pub go_interval: Duration,
    /// Extra sockets the hard side opens.
    pub extra_sockets: usize,
    /// How often each extra socket sends again (keeps its NAT mapping alive).
    pub extra_resend: Duration,
    /// Easy side: probes per second at most.
    pub probes_per_second: u32,
    /// Easy side: probes per attempt at most.
    pub max_probes: u32,
    /// Timed retries of plain probing: the first this long after both NAT kinds are known.
    pub sync_after: Duration,
    /// Between two timed retries.
    pub sync_interval: Duration,
    /// Timed retries per connection (each gives every silent candidate one more request, within
    /// the prober's cap).
    pub sync_rounds: u8,
}

impl Default for PunchConfig {
    fn default() -> Self {
        Self {
            hello_interval: Duration::from_millis(1000),
            max_hellos: 10,
            birthday_after: Duration::from_millis(1000),
            birthday_attempts: 2,
            attempt_limit: Duration::from_secs(12),
            go_repeats: 3,
            go_interval: Duration::from_millis(300),
            extra_sockets: 256,
            extra_resend: Duration::from_secs(2),
            probes_per_second: 200,
            max_probes: 2000,
            sync_after: Duration::from_millis(1000),
            sync_interval: Duration::from_secs(4),
            sync_rounds: 2,
        }
    }
}

/// This end's part in birthday probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Endpoint-dependent mapping: opens the extra sockets.
    Hard,
    /// Endpoint-independent mapping: sprays the hard side's ports.
    Easy,
}

/// Which part this end plays given both NAT kinds; `None`: no birthday probing (both easy,
/// both hard, no NAT on one side, or a kind unknown).
pub fn birthday_side(ours: Mapping, theirs: Mapping) -> Option<Side> {
    use Mapping::{EndpointDependent as Edm, EndpointIndependent as Eim};
    match (ours, theirs) {
        (Edm, Eim) => Some(Side::Hard),
        (Eim, Edm) => Some(Side::Easy),
        _ => None,
    }
}

/// What the driver should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this signal to the peer through the relay.
    Signal(Vec<u8>),
    /// Hard side: open `sockets` extra sockets, each sending a probe to `target` now and every
    /// `resend`, then call [`Punch::sockets_open`].
    OpenSockets {
        /// The attempt they belong to.
        attempt: u8,
        /// The easy side's reflexive address.
        target: SocketAddr,
        /// How many.
        sockets: usize,
        /// Between two sends of one socket.
        resend: Duration,
    },
    /// Hard side: the attempt is over; close its extra sockets, except one the connection now
    /// runs over.
    CloseSockets {
        /// The attempt.
        attempt: u8,
    },
    /// Easy side: start a [`Spray`] of `ip`.
    Spray {
        /// The attempt.
        attempt: u8,
        /// The hard side's IP.
        ip: IpAddr,
    },
    /// Easy side: stop spraying.
    StopSpray {
        /// The attempt.
        attempt: u8,
    },
    /// Timed retries will come: keep requests for them ([`super::Prober::hold_back`]).
    HoldBack,
    /// Probe every candidate once now ([`super::Prober::retry`]): the peer does the same.
    Retry,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No attempt running; `since`: when birthday probing became worth trying.
    Waiting {
        since: Option<Instant>,
    },
    Hard {
        attempt: u8,
        until: Instant,
        gos_left: u32,
        next_go: Option<Instant>,
    },
    Easy {
        attempt: u8,
        until: Instant,
    },
}

#[derive(Debug, Clone, Copy)]
struct Nat {
    mapping: Mapping,
    reflexive: Option<SocketAddr>,
}

/// See the module documentation. One per relayed connection.
#[derive(Debug)]
pub struct Punch {
    keys: ProbeKeys,
    role: Role,
    config: PunchConfig,
    local: Option<Nat>,
    peer: Option<Nat>,
    seq_out: u32,
    seq_in: u32,
    hellos_sent: u32,
    next_hello: Option<Instant>,
    peer_heard_us: bool,
    direct: bool,
    attempts: u8,
    phase: Phase,
    actions: VecDeque<Action>,
    /// The peer's handshake candidates, and our own IPs (see [`Punch::set_peer_candidates`]).
    peer_candidates: Vec<SocketAddr>,
    ours: Vec<IpAddr>,
    /// Timed retries: rounds sent (dialer) or taken (acceptor), when the dialer sends the next,
    /// when it probes for the last one sent, whether the prober was told to hold back, and the
    /// relayed round trip.
    syncs: u8,
    next_sync: Option<Instant>,
    retry_at: Option<Instant>,
    held_back: bool,
    relay_rtt: Duration,
}

/// Whether `ip` can be a NAT's outside address: not loopback, private, link-local, multicast,
/// unspecified, broadcast, nor unique-local IPv6 (keywire's virtual addresses are there).
pub fn is_public_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unspecified()
                || first & 0xfe00 == 0xfc00
                || first & 0xffc0 == 0xfe80)
        }
    }
}

impl Punch {
    /// A connection's punching, for the end playing `role`.
    pub fn new(keys: ProbeKeys, role: Role, config: PunchConfig) -> Self {
        Self {
            keys,
            role,
            config,
            local: None,
            peer: None,
            seq_out: 0,
            seq_in: 0,
            hellos_sent: 0,
            next_hello: None,
            peer_heard_us: false,
            direct: false,
            attempts: 0,
            phase: Phase::Waiting { since: None },
            actions: VecDeque::new(),
            peer_candidates: Vec::new(),
            ours: Vec::new(),
            syncs: 0,
            next_sync: None,
            retry_at: None,
            held_back: false,
            relay_rtt: Duration::ZERO,
        }
    }

    /// This end's NAT, once known: it is told to the peer.
    pub fn set_local(&mut self, mapping: Mapping, reflexive: Option<SocketAddr>, now: Instant) {
        self.local = Some(Nat { mapping, reflexive });
        if !self.peer_heard_us {
            self.next_hello = Some(now);
        }
        self.handle_timeout(now);
    }

    /// The peer's NAT kind, once it told us.
    pub fn peer_mapping(&self) -> Option<Mapping> {
        self.peer.map(|p| p.mapping)
    }

    /// Birthday attempts started so far.
    pub fn attempts(&self) -> u8 {
        self.attempts
    }

    /// Whether the connection runs on a direct path now: an attempt in progress ends, and none
    /// starts while it does.
    pub fn set_direct(&mut self, direct: bool, now: Instant) {
        if direct == self.direct {
            return;
        }
        self.direct = direct;
        if direct {
            match self.phase {
                Phase::Easy { attempt, .. } => {
                    self.actions.push_back(Action::StopSpray { attempt });
                }
                Phase::Hard { attempt, .. } => {
                    self.actions.push_back(Action::CloseSockets { attempt });
                }
                Phase::Waiting { .. } => {}
            }
            self.phase = Phase::Waiting { since: None };
        } else {
            self.handle_timeout(now);
        }
    }

    /// The hard side's extra sockets for `attempt` are open and have sent: tell the peer to go.
    pub fn sockets_open(&mut self, attempt: u8, now: Instant) {
        if let Phase::Hard {
            attempt: current,
            ref mut next_go,
            ..
        } = self.phase
        {
            if current == attempt {
                *next_go = Some(now);
            }
        }
        self.handle_timeout(now);
    }

    /// The hard side could not open `attempt`'s sockets now (another attempt of this node is
    /// running, say): the attempt does not count, and is tried again `birthday_after` later.
    pub fn defer(&mut self, attempt: u8, now: Instant) {
        if let Phase::Hard {
            attempt: current,
            next_go: None,
            ..
        } = self.phase
        {
            if current == attempt {
                self.attempts -= 1;
                self.phase = Phase::Waiting { since: Some(now) };
            }
        }
    }

    /// Handles a signal that came through the relay.
    pub fn handle(&mut self, payload: &[u8], now: Instant) -> Result<(), ProbeError> {
        let (seq, signal) = self.keys.open_signal(payload, self.role)?;
        if seq <= self.seq_in {
            return Err(ProbeError::Replayed);
        }
        self.seq_in = seq;
        match signal {
            Signal::Hello {
                mapping,
                reflexive,
                heard,
            } => {
                // An address the peer did not also name in its handshake, or one no NAT can
                // stand for, is no target: birthday probing would aim at someone else.
                let reflexive = reflexive.filter(|a| self.may_target(*a));
                self.peer = Some(Nat { mapping, reflexive });
                self.peer_heard_us |= heard;
                // A hello that has not heard us is answered at once; once the peer has heard
                // us, we keep quiet.
                if !heard {
                    self.next_hello = Some(now);
                } else {
                    self.next_hello = None;
                }
            }
            Signal::BirthdayGo { attempt } => self.on_go(attempt, now)?,
            Signal::Sync { round } => self.on_sync(round)?,
        }
        self.handle_timeout(now);
        Ok(())
    }

    /// The peer's candidates from the connection's handshake: a reflexive address in a hello
    /// counts only if it is one of them (the peer's own authenticated claim, made before any
    /// punching), and only if it is a public unicast address that is not one of `ours`.
    pub fn set_peer_candidates(&mut self, candidates: &[SocketAddr], ours: &[SocketAddr]) {
        self.peer_candidates = candidates.iter().map(|a| canonical_addr(*a)).collect();
        self.ours = ours.iter().map(|a| canonical_addr(*a).ip()).collect();
    }

    fn may_target(&self, addr: SocketAddr) -> bool {
        let addr = canonical_addr(addr);
        addr.port() != 0
            && is_public_unicast(addr.ip())
            && !self.ours.contains(&addr.ip())
            && self.peer_candidates.contains(&addr)
    }

    /// Whether timed retries of plain probing can help: both NAT kinds known, no birthday
    /// probing between them, and not both endpoint-dependent (nothing plain can do there).
    fn plain_retries_apply(&self) -> bool {
        let (Some(local), Some(peer)) = (self.local, self.peer) else {
            return false;
        };
        let hard = Mapping::EndpointDependent;
        self.side().is_none() && !(local.mapping == hard && peer.mapping == hard)
    }

    /// The acceptor's side of a timed retry: probe at once (the dialer waits half a relayed
    /// round trip after sending, so both sides' probes cross).
    fn on_sync(&mut self, round: u8) -> Result<(), ProbeError> {
        if self.role != Role::Acceptor {
            return Err(ProbeError::Malformed("sync to the dialer"));
        }
        if round > self.config.sync_rounds {
            return Err(ProbeError::Malformed("more sync rounds than allowed"));
        }
        if round > self.syncs {
            self.syncs = round;
            if !self.direct && self.plain_retries_apply() {
                self.actions.push_back(Action::Retry);
            }
        }
        Ok(())
    }

    /// The relayed round trip, for timing the dialer's half of a retry.
    pub fn set_relay_rtt(&mut self, rtt: Duration) {
        self.relay_rtt = rtt;
    }

    /// Timed retries of plain probing (the dialer leads): hold back, then sync and retry.
    fn sync_timeout(&mut self, now: Instant) {
        if !self.held_back && self.plain_retries_apply() {
            self.held_back = true;
            self.actions.push_back(Action::HoldBack);
            if self.role == Role::Dialer {
                self.next_sync = Some(now + self.config.sync_after);
            }
        }
        if self.retry_at.is_some_and(|at| now >= at) {
            self.retry_at = None;
            if !self.direct {
                self.actions.push_back(Action::Retry);
            }
        }
        let Some(at) = self.next_sync else { return };
        if now < at {
            return;
        }
        if self.direct || self.syncs >= self.config.sync_rounds {
            self.next_sync = None;
            return;
        }
        self.syncs += 1;
        self.seq_out += 1;
        let sync = Signal::Sync { round: self.syncs };
        let signal = self.keys.signal(self.role, self.seq_out, &sync);
        self.actions.push_back(Action::Signal(signal));
        self.retry_at = Some(now + self.relay_rtt / 2);
        self.next_sync =
            (self.syncs < self.config.sync_rounds).then_some(now + self.config.sync_interval);
    }

    fn side(&self) -> Option<Side> {
        birthday_side(self.local?.mapping, self.peer?.mapping)
    }

    fn on_go(&mut self, attempt: u8, now: Instant) -> Result<(), ProbeError> {
        if self.side() != Some(Side::Easy) {
            return Err(ProbeError::Malformed(
                "birthday go to a side that does not spray",
            ));
        }
        let Some(ip) = self.peer.and_then(|p| p.reflexive).map(|a| a.ip()) else {
            return Err(ProbeError::Malformed(
                "birthday go before the peer's address",
            ));
        };
        match self.phase {
            // A repeat of the go that started this attempt, or a stale one.
            Phase::Easy {
                attempt: current, ..
            } if attempt <= current => Ok(()),
            _ if self.direct || attempt <= self.attempts => Ok(()),
            _ if attempt > self.config.birthday_attempts => {
                Err(ProbeError::Malformed("more birthday attempts than allowed"))
            }
            _ => {
                if let Phase::Easy { attempt: old, .. } = self.phase {
                    self.actions.push_back(Action::StopSpray { attempt: old });
                }
                self.attempts = attempt;
                self.phase = Phase::Easy {
                    attempt,
                    until: now + self.config.attempt_limit,
                };
                self.actions.push_back(Action::Spray { attempt, ip });
                Ok(())
            }
        }
    }

    /// When [`Punch::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Waiting { since: Some(since) } if self.attempts_left() => {
                Some(since + self.config.birthday_after)
            }
            Phase::Waiting { .. } => None,
            Phase::Hard {
                until,
                next_go,
                gos_left,
                ..
            } => Some(
                next_go
                    .filter(|_| gos_left > 0)
                    .map_or(until, |go| go.min(until)),
            ),
            Phase::Easy { until, .. } => Some(until),
        };
        let hello = self.next_hello.filter(|_| self.may_hello());
        [phase, hello, self.retry_at, self.next_sync]
            .into_iter()
            .flatten()
            .min()
    }

    fn may_hello(&self) -> bool {
        self.local.is_some() && self.hellos_sent < self.config.max_hellos
    }

    fn attempts_left(&self) -> bool {
        self.attempts < self.config.birthday_attempts
    }

    /// Sends what is due and moves the attempts along.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.send_hello_if_due(now);
        self.sync_timeout(now);
        match self.phase {
            Phase::Waiting { since } => {
                let worth_it = !self.direct
                    && self.attempts_left()
                    && self.side() == Some(Side::Hard)
                    && self.peer.is_some_and(|p| p.reflexive.is_some());
                match since {
                    _ if !worth_it => self.phase = Phase::Waiting { since: None },
                    None => self.phase = Phase::Waiting { since: Some(now) },
                    Some(since) if now >= since + self.config.birthday_after => {
                        self.start_hard(now)
                    }
                    Some(_) => {}
                }
            }
            Phase::Hard {
                attempt,
                until,
                gos_left,
                next_go,
            } => {
                if now >= until {
                    self.actions.push_back(Action::CloseSockets { attempt });
                    self.phase = Phase::Waiting { since: Some(now) };
                } else if gos_left > 0 && next_go.is_some_and(|at| now >= at) {
                    self.seq_out += 1;
                    let go = Signal::BirthdayGo { attempt };
                    let signal = self.keys.signal(self.role, self.seq_out, &go);
                    self.actions.push_back(Action::Signal(signal));
                    self.phase = Phase::Hard {
                        attempt,
                        until,
                        gos_left: gos_left - 1,
                        next_go: (gos_left > 1).then_some(now + self.config.go_interval),
                    };
                }
            }
            Phase::Easy { attempt, until } => {
                if now >= until {
                    self.actions.push_back(Action::StopSpray { attempt });
                    self.phase = Phase::Waiting { since: None };
                }
            }
        }
    }

    fn start_hard(&mut self, now: Instant) {
        let Some(target) = self.peer.and_then(|p| p.reflexive) else {
            return;
        };
        self.attempts += 1;
        let attempt = self.attempts;
        self.phase = Phase::Hard {
            attempt,
            until: now + self.config.attempt_limit,
            gos_left: self.config.go_repeats,
            next_go: None,
        };
        self.actions.push_back(Action::OpenSockets {
            attempt,
            target,
            sockets: self.config.extra_sockets,
            resend: self.config.extra_resend,
        });
    }

    fn send_hello_if_due(&mut self, now: Instant) {
        let Some(at) = self.next_hello else { return };
        if now < at || !self.may_hello() {
            return;
        }
        let Some(local) = self.local else { return };
        self.seq_out += 1;
        self.hellos_sent += 1;
        let hello = Signal::Hello {
            mapping: local.mapping,
            reflexive: local.reflexive,
            heard: self.peer.is_some(),
        };
        let signal = self.keys.signal(self.role, self.seq_out, &hello);
        self.actions.push_back(Action::Signal(signal));
        self.next_hello = (!self.peer_heard_us).then_some(now + self.config.hello_interval);
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }
}

/// The easy side's probes of one birthday attempt: distinct random ports (1024–65535) of one
/// IP, at most `probes_per_second`, at most `max_probes`.
#[derive(Debug)]
pub struct Spray {
    ip: IpAddr,
    start: Instant,
    sent: u32,
    max: u32,
    per_second: u32,
    /// Ports already probed (one bit per port).
    tried: Box<[u64; 1024]>,
    rng: ChaCha20Rng,
}

/// Most spray probes sent at once after a stall (50 ms worth at 200/s).
pub const SPRAY_BURST: u32 = 10;

/// Lowest port a spray probes: below are well-known ports no NAT hands out.
pub const SPRAY_FIRST_PORT: u16 = 1024;

impl Spray {
    /// Starts spraying `ip` at `now`.
    pub fn new(ip: IpAddr, config: &PunchConfig, now: Instant, seed: [u8; 32]) -> Self {
        Self {
            ip,
            start: now,
            sent: 0,
            max: config
                .max_probes
                .min(u32::from(u16::MAX - SPRAY_FIRST_PORT) + 1),
            per_second: config.probes_per_second.max(1),
            tried: Box::new([0; 1024]),
            rng: ChaCha20Rng::from_seed(seed),
        }
    }

    /// Probes sent so far.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// How many probes the rate allows by `now` in total (integer nanoseconds, so that
    /// [`Spray::next_at`] is exactly when the next one becomes due).
    fn allowed_by(&self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let allowed = 1 + elapsed * u128::from(self.per_second) / 1_000_000_000;
        allowed.min(u128::from(self.max)) as u32
    }

    /// The addresses to probe now (none once `max_probes` went out). After a stall (a driver
    /// that could not call for a while), at most [`SPRAY_BURST`] go out at once and the
    /// schedule resumes from `now`: the rate holds over every second.
    pub fn poll_due(&mut self, now: Instant) -> Vec<SocketAddr> {
        let mut due = self.allowed_by(now).saturating_sub(self.sent);
        if due > SPRAY_BURST {
            due = SPRAY_BURST;
            // The first probe is due at `start`: `sent + due` probes are due `sent + due - 1`
            // intervals after it.
            let behind =
                u64::from(self.sent + due - 1) * 1_000_000_000 / u64::from(self.per_second);
            self.start = now
                .checked_sub(Duration::from_nanos(behind))
                .unwrap_or(self.start);
        }
        let mut out = Vec::with_capacity(due as usize);
        for _ in 0..due {
            let port = self.fresh_port();
            out.push(SocketAddr::new(self.ip, port));
            self.sent += 1;
        }
        out
    }

    fn fresh_port(&mut self) -> u16 {
        let span = u32::from(u16::MAX - SPRAY_FIRST_PORT) + 1;
        loop {
            // `max` is far below `span`, so a free port turns up within a few draws.
            let port = SPRAY_FIRST_PORT + (self.rng.next_u32() % span) as u16;
            let (word, bit) = (usize::from(port / 64), port % 64);
            if self.tried[word] & (1 << bit) == 0 {
                self.tried[word] |= 1 << bit;
                return port;
            }
        }
    }

    /// When more probes are due; `None` once all went out.
    pub fn next_at(&self) -> Option<Instant> {
        if self.sent >= self.max {
            return None;
        }
        let nanos = (u64::from(self.sent) * 1_000_000_000).div_ceil(u64::from(self.per_second));
        Some(self.start + Duration::from_nanos(nanos))
    }
}

#[cfg(test)]
#[path = "punch_tests.rs"]
mod tests;
