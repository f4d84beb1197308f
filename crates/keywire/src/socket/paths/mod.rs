//! The path table: which real address each virtual address quinn sees stands for.
//!
//! quinn never sees a real address. A dial to real address R, or an Initial packet from R, gets a
//! virtual address V (`[fd6b:7769:7265::<n>]:1`, unique-local space, RFC 4193); quinn talks to V,
//! and the socket sends to whatever real address V currently maps to. Once the handshake names
//! the peer, V is bound to its node id, and later dials of that node reuse V. The relay and
//! hole-punching layers change V's real address underneath (a path switch) without quinn noticing.
//!
//! Bounded: at most `capacity` entries. When full, entries idle longer than `stale_after` are
//! evicted (oldest first); if none is, the new address is refused and its packet dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keywire_proto::NodeId;

/// First 48 bits of every virtual address: `fd6b:7769:7265` ("kwire" in unique-local space).
const VIRTUAL_PREFIX: [u16; 3] = [0xfd6b, 0x7769, 0x7265];
/// Port of every virtual address; quinn refuses port 0.
const VIRTUAL_PORT: u16 = 1;

/// Tells a connection's congestion controller that its path changed (see `congestion`), and
/// anyone watching the connection's path ([`crate::Connection::path_events`]).
#[derive(Debug)]
pub(crate) struct PathSwitch {
    generation: AtomicU64,
    switched_at: Mutex<Option<Instant>>,
    route: tokio::sync::watch::Sender<Route>,
}

impl PathSwitch {
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn switched_at(&self) -> Option<Instant> {
        *self.switched_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new(route: Route) -> Self {
        Self {
            generation: AtomicU64::new(0),
            switched_at: Mutex::new(None),
            route: tokio::sync::watch::Sender::new(route),
        }
    }

    fn record(&self, now: Instant, route: Route) {
        *self.switched_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.route.send_replace(route);
    }

    /// Watches the route: the current one, then every switch.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<Route> {
        self.route.subscribe()
    }
}

/// Receive-only routes kept per path (earlier routes and addresses the peer proved it sends
/// from), so that packets still in flight on them are not lost; the oldest goes first.
const MAX_ALIASES: usize = 8;

/// How datagrams for a virtual address travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Route {
    /// Straight to the peer's address.
    Direct(SocketAddr),
    /// Wrapped in relay frames of `channel`, through the gate at `gate`.
    Relayed {
        /// The gate's address.
        gate: SocketAddr,
        /// The channel the gate set up for this pair.
        channel: u32,
    },
}

impl Route {
    /// The address datagrams actually go to.
    pub(crate) fn next_hop(&self) -> SocketAddr {
        match self {
            Self::Direct(addr) => *addr,
            Self::Relayed { gate, .. } => *gate,
        }
    }
}

#[derive(Debug)]
struct Path {
    route: Route,
    /// The relay to fall back to (the route the path started on, or the gate it moved to).
    relay: Option<Route>,
    /// Other routes whose packets also belong to this path (received, never sent to).
    aliases: Vec<Route>,
    node: Option<NodeId>,
    switch: Arc<PathSwitch>,
    last_active: Instant,
    /// Connections on this path whose [`crate::Connection`] handles are still held (see
    /// [`PathLease`]), by lease id.
    /// (`Arc`, so that copying a handle under the table lock never touches quinn's locks.)
    /// `None`: a dial in progress, which counts as open.
    leases: Vec<(u64, Option<Arc<quinn::Connection>>)>,
    /// Whether a connection was ever handed out on this path.
    ever_leased: bool,
}

#[derive(Debug, Default)]
struct Tables {
    by_virtual: HashMap<SocketAddr, Path>,
    by_route: HashMap<Route, SocketAddr>,
    by_node: HashMap<NodeId, SocketAddr>,
    /// Each gate we are registered with: our session, our address as it sees us, and whether
    /// it answers its pings.
    gates: HashMap<SocketAddr, GateEntry>,
    next_id: u64,
    next_lease: u64,
    /// Next hops reached over a stream link (TCP or WebSocket) rather than UDP; a path through
    /// one reports itself so ([`crate::Path`]).
    stream_linked: std::collections::HashSet<SocketAddr>,
    /// Removed paths, dropped only once the lock is released: dropping a path drops quinn
    /// connection handles, and quinn takes its own locks then (see `PathTable::unlock`).
    graveyard: Vec<Path>,
}

#[derive(Debug)]
struct GateEntry {
    session: u64,
    /// Where the gate sees us, unless we reach it over a stream link (a TCP address is no
    /// candidate for UDP).
    observed: Option<SocketAddr>,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

/// Why no virtual address was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Only an Initial packet may open a new path from an unknown source.
    NotInitial,
    /// The table is full of active paths.
    Full,
    /// A relay frame from an address that is not one of our gates, or with another session.
    NotOurGate,
}

#[derive(Debug)]
pub(crate) struct PathTable {
    tables: Mutex<Tables>,
    capacity: usize,
    stale_after: Duration,
}

/// Whether `addr` is one of keywire's virtual addresses.
#[cfg(test)]
pub(crate) fn is_virtual(addr: &SocketAddr) -> bool {
    matches!(addr.ip(), std::net::IpAddr::V6(v6) if v6.segments()[..3] == VIRTUAL_PREFIX)
}

impl PathTable {
    pub(crate) fn new(capacity: usize, stale_after: Duration) -> Self {
        Self {
            tables: Mutex::new(Tables::default()),
            capacity,
            stale_after,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // Every update leaves the tables consistent before it can panic, so poison is harmless.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The virtual address for dialing `real` directly (an existing one if `real` is known).
    #[cfg(test)]
    pub(crate) fn for_dial(&self, real: SocketAddr, now: Instant) -> Result<SocketAddr, Refusal> {
        self.for_route(Route::Direct(real), now)
    }

    /// The virtual address for dialing over `route`.
    #[cfg(test)]
    pub(crate) fn for_route(&self, route: Route, now: Instant) -> Result<SocketAddr, Refusal> {
        self.retire_finished_owner(route, None);
        let mut t = self.lock();
        let result = self.lookup_or_insert(&mut t, route, now);
        Self::unlock(t);
        result
    }

    /// The virtual address for dialing over `route`, with a lease that keeps the path from
    /// being retired while the dial runs (drop it once the connection has its own).
    pub(crate) fn for_dial_route(
        self: &Arc<Self>,
        route: Route,
        now: Instant,
    ) -> Result<(SocketAddr, PathLease), Refusal> {
        self.retire_finished_owner(route, None);
        let mut t = self.lock();
        let result = self.lookup_or_insert(&mut t, route, now).map(|v| {
            let lease = Self::add_lease(&mut t, self, v, None);
            (v, lease)
        });
        Self::unlock(t);
        result
    }

    /// The virtual address for a datagram from `real`; a new one only for an Initial packet.
    pub(crate) fn for_source(
        &self,
        real: SocketAddr,
        initial: bool,
        now: Instant,
    ) -> Result<SocketAddr, Refusal> {
        self.for_arrival(Route::Direct(real), initial, now)
    }

    /// The virtual address for a relay frame of `channel` from `gate` carrying `session`: only
    /// from a gate we registered with, with our session there; a new path only for an Initial.
    pub(crate) fn for_relayed(
        &self,
        gate: SocketAddr,
        session: u64,
        channel: u32,
        initial: bool,
        now: Instant,
    ) -> Result<SocketAddr, Refusal> {
        if self.lock().gates.get(&gate).map(|g| g.session) != Some(session) {
            return Err(Refusal::NotOurGate);
        }
        self.for_arrival(Route::Relayed { gate, channel }, initial, now)
    }

    fn for_arrival(
        &self,
        route: Route,
        initial: bool,
        now: Instant,
    ) -> Result<SocketAddr, Refusal> {
        if initial {
            // A new connection on the path of finished ones gets a fresh path: the old one may
            // have been switched to another route, which is not where this Initial came from.
            self.retire_finished_owner(route, None);
        }
        let mut t = self.lock();
        if let Some(v) = t.by_route.get(&route).copied() {
            if let Some(path) = t.by_virtual.get_mut(&v) {
                path.last_active = now;
            }
            return Ok(v);
        }
        if !initial {
            return Err(Refusal::NotInitial);
        }
        let result = self.lookup_or_insert(&mut t, route, now);
        Self::unlock(t);
        result
    }

    fn lookup_or_insert(
        &self,
        t: &mut Tables,
        route: Route,
        now: Instant,
    ) -> Result<SocketAddr, Refusal> {
        if let Some(v) = t.by_route.get(&route).copied() {
            return Ok(v);
        }
        if t.by_virtual.len() >= self.capacity && !self.evict_stale(t, now) {
            return Err(Refusal::Full);
        }
        t.next_id += 1;
        let id = t.next_id;
        let [p0, p1, p2] = VIRTUAL_PREFIX;
        let v = super::synthetic_addr([p0, p1, p2, 0], id, VIRTUAL_PORT);
        t.by_virtual.insert(
            v,
            Path {
                route,
                relay: matches!(route, Route::Relayed { .. }).then_some(route),
                aliases: Vec::new(),
                node: None,
                switch: Arc::new(PathSwitch::new(route)),
                last_active: now,
                leases: Vec::new(),
                ever_leased: false,
            },
        );
        t.by_route.insert(route, v);
        Ok(v)
    }

    /// Evicts the stalest entry if it is stale enough; whether one was evicted.
    fn evict_stale(&self, t: &mut Tables, now: Instant) -> bool {
        let oldest = t
            .by_virtual
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_active) > self.stale_after)
            .min_by_key(|(_, p)| p.last_active)
            .map(|(v, _)| *v);
        let Some(v) = oldest else { return false };
        Self::remove(t, v);
        true
    }

    /// Removes a path and every route and node mapping pointing at it (into the graveyard).
    fn remove(t: &mut Tables, v: SocketAddr) {
        if let Some(path) = t.by_virtual.remove(&v) {
            t.by_route.remove(&path.route);
            for alias in &path.aliases {
                t.by_route.remove(alias);
            }
            if let Some(node) = path.node {
                if t.by_node.get(&node) == Some(&v) {
                    t.by_node.remove(&node);
                }
            }
            t.graveyard.push(path);
        }
    }

    /// How to send a datagram for `virtual_addr`: the route, and for a relayed route our
    /// session at its gate.
    pub(crate) fn route_for(&self, virtual_addr: &SocketAddr) -> Option<(Route, Option<u64>)> {
        let t = self.lock();
        let route = t.by_virtual.get(virtual_addr)?.route;
        match route {
            Route::Direct(_) => Some((route, None)),
            Route::Relayed { gate, .. } => Some((route, Some(t.gates.get(&gate)?.session))),
        }
    }

    /// The real address datagrams for `virtual_addr` go to (the peer's, or its gate's).
    pub(crate) fn real_for(&self, virtual_addr: &SocketAddr) -> Option<SocketAddr> {
        self.lock()
            .by_virtual
            .get(virtual_addr)
            .map(|p| p.route.next_hop())
    }

    /// The current route of `virtual_addr`.
    pub(crate) fn route_of(&self, virtual_addr: &SocketAddr) -> Option<Route> {
        self.lock().by_virtual.get(virtual_addr).map(|p| p.route)
    }

    /// Records our session at a gate (where it sees us, and its liveness flag), so its relay
    /// frames are accepted.
    pub(crate) fn add_gate(
        &self,
        gate: SocketAddr,
        session: u64,
        observed: Option<SocketAddr>,
        alive: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let entry = GateEntry {
            session,
            observed,
            alive,
        };
        self.lock().gates.insert(gate, entry);
    }

    /// Whether we are registered with `gate` and it answers its pings.
    pub(crate) fn gate_alive(&self, gate: &SocketAddr) -> bool {
        self.lock()
            .gates
            .get(gate)
            .is_some_and(|g| g.alive.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Records whether datagrams to `next_hop` travel over a stream link.
    pub(crate) fn set_stream_linked(&self, next_hop: SocketAddr, linked: bool) {
        let mut t = self.lock();
        if linked {
            t.stream_linked.insert(next_hop);
        } else {
            t.stream_linked.remove(&next_hop);
        }
    }

    /// How `route` looks to the application: [`Route`] plus whether its next hop is a stream link.
    pub(crate) fn path_of_route(&self, route: Route) -> crate::Path {
        let over_stream = self.lock().stream_linked.contains(&route.next_hop());
        crate::Path::from_route(route, over_stream)
    }

    /// The relay of `virtual_addr` (current route or not): its gate, channel, and our session
    /// at that gate.
    pub(crate) fn relay_session_of(
        &self,
        virtual_addr: &SocketAddr,
    ) -> Option<(SocketAddr, u32, u64)> {
        let t = self.lock();
        let Some(Route::Relayed { gate, channel }) = t.by_virtual.get(virtual_addr)?.relay else {
            return None;
        };
        Some((gate, channel, t.gates.get(&gate)?.session))
    }

    /// The relay `virtual_addr` falls back to.
    pub(crate) fn relay_of(&self, virtual_addr: &SocketAddr) -> Option<Route> {
        self.lock().by_virtual.get(virtual_addr)?.relay
    }

    /// Moves `virtual_addr`'s relay to `route` (another gate): packets arriving over it belong to
    /// the path, and a path that is relayed right now switches to it. False if unknown.
    pub(crate) fn move_relay(&self, virtual_addr: SocketAddr, route: Route, now: Instant) -> bool {
        let relayed_now = {
            let mut t = self.lock();
            let Some(path) = t.by_virtual.get_mut(&virtual_addr) else {
                return false;
            };
            path.relay = Some(route);
            matches!(path.route, Route::Relayed { .. })
        };
        if relayed_now {
            self.switch(virtual_addr, route, now)
        } else {
            self.accept_from(virtual_addr, route)
        }
    }

    /// The path of the latest connection to `node`.
    pub(crate) fn path_of_node(&self, node: &NodeId) -> Option<SocketAddr> {
        self.lock().by_node.get(node).copied()
    }

    /// Our addresses as the gates we use see them (reflexive candidates).
    pub(crate) fn gate_observed_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self
            .lock()
            .gates
            .values()
            .filter_map(|g| g.observed)
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Forgets a gate; its relayed paths can no longer send.
    pub(crate) fn remove_gate(&self, gate: &SocketAddr) {
        self.lock().gates.remove(gate);
    }

    /// Records that the handshake on `virtual_addr` proved `node`.
    pub(crate) fn bind(&self, virtual_addr: SocketAddr, node: NodeId) {
        let mut t = self.lock();
        if let Some(path) = t.by_virtual.get_mut(&virtual_addr) {
            path.node = Some(node);
            t.by_node.insert(node, virtual_addr);
        }
    }

    /// The path-switch signal of `virtual_addr`, for its connection's congestion controller.
    pub(crate) fn switch_signal(&self, virtual_addr: &SocketAddr) -> Option<Arc<PathSwitch>> {
        self.lock()
            .by_virtual
            .get(virtual_addr)
            .map(|p| p.switch.clone())
    }

    /// Whether `route` is free for `virtual_addr`: unused or already its own.
    fn is_free_for(t: &Tables, virtual_addr: SocketAddr, route: Route) -> bool {
        t.by_route
            .get(&route)
            .is_none_or(|owner| *owner == virtual_addr)
    }

    /// Moves `virtual_addr` to a new route (a path switch); the old route stays a receive-only
    /// alias, so packets in flight on it still arrive. Returns false if unknown or if the route
    /// belongs to another path with a live connection.
    pub(crate) fn switch(&self, virtual_addr: SocketAddr, route: Route, now: Instant) -> bool {
        self.retire_finished_owner(route, Some(virtual_addr));
        let mut t = self.lock();
        if !t.by_virtual.contains_key(&virtual_addr) || !Self::is_free_for(&t, virtual_addr, route)
        {
            return false;
        }
        let Some(path) = t.by_virtual.get_mut(&virtual_addr) else {
            return false;
        };
        if path.route == route {
            return true;
        }
        let old = std::mem::replace(&mut path.route, route);
        path.aliases.retain(|a| *a != route);
        path.aliases.push(old);
        let dropped = trim_aliases(&mut path.aliases);
        path.switch.record(now, route);
        for alias in dropped {
            t.by_route.remove(&alias);
        }
        t.by_route.insert(route, virtual_addr);
        true
    }

    /// Also accepts `virtual_addr`'s packets arriving over `route` (receive only). False if
    /// unknown or if the route belongs to another virtual address.
    pub(crate) fn accept_from(&self, virtual_addr: SocketAddr, route: Route) -> bool {
        self.retire_finished_owner(route, Some(virtual_addr));
        let mut t = self.lock();
        if !t.by_virtual.contains_key(&virtual_addr) || !Self::is_free_for(&t, virtual_addr, route)
        {
            return false;
        }
        if t.by_route.get(&route) == Some(&virtual_addr) {
            return true;
        }
        let Some(path) = t.by_virtual.get_mut(&virtual_addr) else {
            return false;
        };
        path.aliases.push(route);
        let dropped = trim_aliases(&mut path.aliases);
        for alias in dropped {
            t.by_route.remove(&alias);
        }
        t.by_route.insert(route, virtual_addr);
        true
    }

    /// A path's aliases (tests only).
    #[cfg(test)]
    fn aliases(&self, virtual_addr: &SocketAddr) -> Vec<Route> {
        self.lock().by_virtual[virtual_addr].aliases.clone()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().by_virtual.len()
    }
}

/// Drops the oldest aliases over [`MAX_ALIASES`]; returns them.
fn trim_aliases(aliases: &mut Vec<Route>) -> Vec<Route> {
    let excess = aliases.len().saturating_sub(MAX_ALIASES);
    aliases.drain(..excess).collect()
}

mod lease;
#[cfg(test)]
mod tests;

pub(crate) use lease::PathLease;
