//! The probing state machine of one connection, without I/O: which probes to send when, and
//! when to move the connection to a direct path or back to its relay.
//!
//! It starts *searching*: every candidate address of the peer gets a request each round, fast at
//! first, then slowly, then not at all (every loop here is bounded). The first valid response
//! makes the responding address the *direct* path. While direct, a keep-alive request goes out
//! every `keepalive_interval`; when no response came for `dead_after`, the connection falls back
//! to the relay and searching starts again.
//!
//! A valid request from the peer is answered (once per nonce, at most `max_responses_per_second`)
//! and, while searching, makes its source a candidate probed at once: the peer has just shown the
//! way, so a punched hole is used within one round trip.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::{Probe, ProbeError, ProbeKeys};
use crate::network_id::Role;
use crate::ticket::canonical_addr;

/// Timing and bounds of a [`Prober`].
#[derive(Debug, Clone)]
pub struct ProberConfig {
    /// Between the fast search rounds.
    pub fast_interval: Duration,
    /// How many fast rounds.
    pub fast_rounds: u32,
    /// Between the slow rounds that follow.
    pub slow_interval: Duration,
    /// How many slow rounds; then searching stops until [`Prober::restart`].
    pub slow_rounds: u32,
    /// Between keep-alive requests on the direct path.
    pub keepalive_interval: Duration,
    /// A direct path with no valid response for this long is dead.
    pub dead_after: Duration,
    /// Candidates kept (the peer's, then sources of its requests).
    pub max_candidates: usize,
    /// Requests awaiting a response; the oldest is forgotten first.
    pub max_outstanding: usize,
    /// Responses sent per second at most (replayed or flooded requests get no more).
    pub max_responses_per_second: u32,
    /// Requests an address gets before anything valid came from it; then it is skipped until it
    /// speaks (so a peer cannot aim a stream of probes at a third party).
    pub max_unconfirmed_probes: u32,
    /// The search rounds in which an address that has not spoken gets its requests (the k-th
    /// no earlier than round `unconfirmed_rounds[k]`; at most `max_unconfirmed_probes`). Spread
    /// out, so that our NAT's hole towards the peer stays open for a peer that starts probing
    /// seconds after us.
    pub unconfirmed_rounds: Vec<u32>,
}

impl Default for ProberConfig {
    fn default() -> Self {
        Self {
            fast_interval: Duration::from_millis(200),
            fast_rounds: 25,
            slow_interval: Duration::from_secs(5),
            slow_rounds: 60,
            keepalive_interval: Duration::from_millis(500),
            dead_after: Duration::from_millis(2000),
            max_candidates: 8,
            max_outstanding: 64,
            max_responses_per_second: 50,
            max_unconfirmed_probes: 5,
            // With 200 ms fast rounds: 0, 0.2, 0.4, 1.6 and 4.8 s into the search.
            unconfirmed_rounds: vec![0, 1, 2, 8, 24],
        }
    }
}

/// What the driver should do with the connection's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send to the peer directly at this address.
    UseDirect(SocketAddr),
    /// The direct path died: send through the relay again.
    UseRelay,
    /// The peer proved it sends from this address: accept the connection's packets from it.
    AcceptFrom(SocketAddr),
}

#[derive(Debug, Clone, Copy)]
enum State {
    Searching {
        round: u32,
        next_at: Instant,
    },
    Direct {
        addr: SocketAddr,
        last_ok: Instant,
        next_keepalive: Instant,
    },
    /// Searched everything, found nothing; waiting for [`Prober::restart`].
    Idle,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Prober {
    keys: ProbeKeys,
    role: Role,
    config: ProberConfig,
    candidates: Vec<SocketAddr>,
    /// Requests sent to each address that has not yet sent us anything valid.
    unconfirmed: Vec<(SocketAddr, u32)>,
    /// Addresses a valid probe came from.
    confirmed: Vec<SocketAddr>,
    outstanding: VecDeque<([u8; 16], SocketAddr)>,
    answered: VecDeque<[u8; 16]>,
    accepted_from: Vec<SocketAddr>,
    responses: (Instant, u32),
    state: State,
    observed: Option<SocketAddr>,
    /// Where the peer's latest valid request came from.
    peer_sends_from: Option<SocketAddr>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    decisions: VecDeque<Decision>,
    rng: ChaCha20Rng,
    /// Requests the scheduled rounds may give an address that has not spoken (the rest are
    /// for timed retries; see [`Prober::hold_back`]).
    scheduled_unconfirmed: u32,
}

/// Requests per silent address kept for timed retries once [`Prober::hold_back`] was called.
const RESERVED_FOR_RETRIES: u32 = 2;

impl Prober {
    /// Starts searching the peer's `candidates` at `now`. `seed` feeds the nonces.
    pub fn new(
        keys: ProbeKeys,
        role: Role,
        config: ProberConfig,
        candidates: &[SocketAddr],
        now: Instant,
        seed: [u8; 32],
    ) -> Self {
        let mut prober = Self {
            keys,
            role,
            candidates: Vec::new(),
            unconfirmed: Vec::new(),
            confirmed: Vec::new(),
            outstanding: VecDeque::new(),
            answered: VecDeque::new(),
            accepted_from: Vec::new(),
            responses: (now, 0),
            state: State::Searching {
                round: 0,
                next_at: now,
            },
            observed: None,
            peer_sends_from: None,
            transmits: VecDeque::new(),
            decisions: VecDeque::new(),
            rng: ChaCha20Rng::from_seed(seed),
            scheduled_unconfirmed: config.max_unconfirmed_probes,
            config,
        };
        for candidate in candidates {
            prober.add_candidate(*candidate);
        }
        prober
    }

    /// Adds a candidate address of the peer (ignored when known or when full).
    pub fn add_candidate(&mut self, addr: SocketAddr) -> bool {
        let addr = canonical_addr(addr);
        if addr.port() == 0
            || addr.ip().is_unspecified()
            || self.candidates.contains(&addr)
            || self.candidates.len() >= self.config.max_candidates
        {
            return false;
        }
        self.candidates.push(addr);
        true
    }

    /// Timed retries will come ([`Prober::retry`]): scheduled rounds give an address that has
    /// not spoken only the first three of its requests, keeping two for the retries.
    pub fn hold_back(&mut self) {
        self.scheduled_unconfirmed = self
            .config
            .max_unconfirmed_probes
            .saturating_sub(RESERVED_FOR_RETRIES);
    }

    /// A timed retry (the peer probes at the same moment): one request now to every candidate
    /// that may have one (an address that has not spoken still gets at most
    /// `max_unconfirmed_probes` in all).
    pub fn retry(&mut self) {
        if matches!(self.state, State::Direct { .. }) {
            return;
        }
        for addr in self.candidates.clone() {
            if self.may_probe(addr) {
                self.send_request(addr);
            }
        }
    }

    /// Searches again from the first fast round (e.g. after new candidates arrived).
    pub fn restart(&mut self, now: Instant) {
        if !matches!(self.state, State::Direct { .. }) {
            self.state = State::Searching {
                round: 0,
                next_at: now,
            };
        }
    }

    /// Our own network changed so that addresses which stayed silent may answer now (e.g. UDP
    /// to the internet started working for a node that reached its gate over TCP): forgets
    /// which candidates never answered and searches again from the first round. Only the
    /// local node calls this, from what it observed itself, so a peer cannot use it to aim
    /// more probes at a third party; each call allows at most `max_unconfirmed_probes` more per
    /// address.
    pub fn network_changed(&mut self, now: Instant) {
        self.unconfirmed.clear();
        self.restart(now);
    }

    /// The connection's tag (what its probes carry).
    pub fn tag(&self) -> super::ConnTag {
        self.keys.tag()
    }

    /// The direct path in use, if any.
    pub fn direct(&self) -> Option<SocketAddr> {
        match self.state {
            State::Direct { addr, .. } => Some(addr),
            _ => None,
        }
    }

    /// Our own address as the peer last saw it (from a response).
    pub fn observed(&self) -> Option<SocketAddr> {
        self.observed
    }

    /// The candidates being probed.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    /// When [`Prober::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Searching { next_at, .. } => Some(next_at),
            State::Direct {
                last_ok,
                next_keepalive,
                ..
            } => Some(next_keepalive.min(last_ok + self.config.dead_after)),
            State::Idle => None,
        }
    }

    /// The next probe to send: (destination, control-packet payload).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next path decision for the driver.
    pub fn poll_decision(&mut self) -> Option<Decision> {
        self.decisions.pop_front()
    }

    /// Sends what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Searching { round, next_at } if now >= next_at => {
                for addr in self.candidates.clone() {
                    if self.may_probe(addr) && self.due_in_round(addr, round) {
                        self.send_request(addr);
                    }
                }
                let round = round + 1;
                let c = &self.config;
                self.state = if round < c.fast_rounds {
                    State::Searching {
                        round,
                        next_at: now + c.fast_interval,
                    }
                } else if round < c.fast_rounds + c.slow_rounds {
                    State::Searching {
                        round,
                        next_at: now + c.slow_interval,
                    }
                } else {
                    State::Idle
                };
            }
            State::Direct { last_ok, .. }
                if now.saturating_duration_since(last_ok) >= self.config.dead_after =>
            {
                self.decisions.push_back(Decision::UseRelay);
                self.state = State::Searching {
                    round: 0,
                    next_at: now,
                };
                self.handle_timeout(now);
            }
            State::Direct {
                addr,
                last_ok,
                next_keepalive,
            } if now >= next_keepalive => {
                self.send_request(addr);
                self.state = State::Direct {
                    addr,
                    last_ok,
                    next_keepalive: now + self.config.keepalive_interval,
                };
            }
            _ => {}
        }
    }

    /// Handles a probe payload that came from `from` with this connection's tag.
    pub fn handle(
        &mut self,
        from: SocketAddr,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ProbeError> {
        let from = canonical_addr(from);
        match self.keys.open(payload, self.role)? {
            Probe::Request { nonce } => self.on_request(from, nonce, now),
            Probe::Response { nonce, observed } => self.on_response(from, nonce, observed, now),
        }
    }

    fn on_request(
        &mut self,
        from: SocketAddr,
        nonce: [u8; 16],
        now: Instant,
    ) -> Result<(), ProbeError> {
        if self.answered.contains(&nonce) {
            return Err(ProbeError::Replayed);
        }
        self.confirm(from);
        let (window_start, sent) = &mut self.responses;
        if now.saturating_duration_since(*window_start) >= Duration::from_secs(1) {
            *window_start = now;
            *sent = 0;
        }
        if *sent >= self.config.max_responses_per_second {
            return Err(ProbeError::RateLimited);
        }
        *sent += 1;
        if self.answered.len() >= self.config.max_outstanding {
            self.answered.pop_front();
        }
        self.answered.push_back(nonce);
        let response = self.keys.response(self.role, nonce, from);
        self.transmits.push_back((from, response));
        if !self.accepted_from.contains(&from) && self.accepted_from.len() < 2 * 8 {
            self.accepted_from.push(from);
            self.decisions.push_back(Decision::AcceptFrom(from));
        }
        self.peer_sends_from = Some(from);
        match self.state {
            State::Searching { .. } | State::Idle => {
                // A triggered check: the peer's request just came through from `from`.
                self.add_candidate(from);
                self.send_request(from);
            }
            // The peer sends from somewhere new while we send to `addr`: its NAT may have
            // rebound. Check the new address; the response decides (see `on_response`).
            State::Direct { addr, .. } if addr != from => self.send_request(from),
            State::Direct { .. } => {}
        }
        Ok(())
    }

    fn on_response(
        &mut self,
        from: SocketAddr,
        nonce: [u8; 16],
        observed: SocketAddr,
        now: Instant,
    ) -> Result<(), ProbeError> {
        let Some(index) = self
            .outstanding
            .iter()
            .position(|(n, to)| *n == nonce && *to == from)
        else {
            return Err(ProbeError::Unsolicited);
        };
        self.outstanding.remove(index);
        self.confirm(from);
        self.observed = Some(canonical_addr(observed));
        match self.state {
            State::Direct {
                addr,
                next_keepalive,
                ..
            } if addr == from => {
                self.state = State::Direct {
                    addr,
                    last_ok: now,
                    next_keepalive,
                };
            }
            // Rebinding: the peer now sends from `from`, and `from` answered a probe of ours.
            State::Direct { .. } if self.peer_sends_from == Some(from) => {
                self.switch_to(from, now);
            }
            State::Direct { .. } => {}
            State::Searching { .. } | State::Idle => self.switch_to(from, now),
        }
        Ok(())
    }

    fn switch_to(&mut self, addr: SocketAddr, now: Instant) {
        self.state = State::Direct {
            addr,
            last_ok: now,
            next_keepalive: now + self.config.keepalive_interval,
        };
        self.decisions.push_back(Decision::UseDirect(addr));
    }

    /// Whether `addr` may get another request: it spoke to us, or it has had fewer than
    /// `max_unconfirmed_probes`.
    fn may_probe(&self, addr: SocketAddr) -> bool {
        self.confirmed.contains(&addr)
            || self
                .unconfirmed
                .iter()
                .find(|(a, _)| *a == addr)
                .is_none_or(|(_, sent)| *sent < self.config.max_unconfirmed_probes)
    }

    /// Whether an address that has not spoken is due a request in search round `round`.
    fn due_in_round(&self, addr: SocketAddr, round: u32) -> bool {
        if self.confirmed.contains(&addr) {
            return true;
        }
        let sent = self
            .unconfirmed
            .iter()
            .find(|(a, _)| *a == addr)
            .map_or(0, |(_, sent)| *sent);
        if sent >= self.scheduled_unconfirmed {
            return false;
        }
        self.config
            .unconfirmed_rounds
            .get(sent as usize)
            .is_none_or(|first_round| round >= *first_round)
    }

    fn confirm(&mut self, addr: SocketAddr) {
        self.unconfirmed.retain(|(a, _)| *a != addr);
        if !self.confirmed.contains(&addr) && self.confirmed.len() < 2 * self.config.max_candidates
        {
            self.confirmed.push(addr);
        }
    }

    fn send_request(&mut self, to: SocketAddr) {
        if !self.confirmed.contains(&to) {
            match self.unconfirmed.iter_mut().find(|(a, _)| *a == to) {
                Some((_, sent)) => *sent += 1,
                None => {
                    // Bounded like the other per-address lists: the oldest entry goes.
                    if self.unconfirmed.len() >= 2 * self.config.max_candidates {
                        self.unconfirmed.remove(0);
                    }
                    self.unconfirmed.push((to, 1));
                }
            }
        }
        let mut nonce = [0u8; 16];
        self.rng.fill_bytes(&mut nonce);
        if self.outstanding.len() >= self.config.max_outstanding {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((nonce, to));
        self.transmits
            .push_back((to, self.keys.request(self.role, nonce)));
    }
}

#[cfg(test)]
#[path = "prober_tests.rs"]
mod tests;
