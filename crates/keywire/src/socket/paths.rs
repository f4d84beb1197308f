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
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keywire_proto::NodeId;

/// First 48 bits of every virtual address: `fd6b:7769:7265` ("kwire" in unique-local space).
const VIRTUAL_PREFIX: [u16; 3] = [0xfd6b, 0x7769, 0x7265];
/// Port of every virtual address; quinn refuses port 0.
const VIRTUAL_PORT: u16 = 1;

/// Tells a connection's congestion controller that its path changed (see `congestion`).
#[derive(Debug, Default)]
pub(crate) struct PathSwitch {
    generation: AtomicU64,
    switched_at: Mutex<Option<Instant>>,
}

impl PathSwitch {
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn switched_at(&self) -> Option<Instant> {
        *self.switched_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg_attr(not(test), allow(dead_code))]
    fn record(&self, now: Instant) {
        *self.switched_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Path {
    real: SocketAddr,
    node: Option<NodeId>,
    switch: Arc<PathSwitch>,
    last_active: Instant,
}

#[derive(Debug, Default)]
struct Tables {
    by_virtual: HashMap<SocketAddr, Path>,
    by_real: HashMap<SocketAddr, SocketAddr>,
    by_node: HashMap<NodeId, SocketAddr>,
    next_id: u64,
}

/// Why no virtual address was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Only an Initial packet may open a new path from an unknown source.
    NotInitial,
    /// The table is full of active paths.
    Full,
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

    /// The virtual address for dialing `real` (an existing one if `real` is known).
    pub(crate) fn for_dial(&self, real: SocketAddr, now: Instant) -> Result<SocketAddr, Refusal> {
        let mut t = self.lock();
        self.lookup_or_insert(&mut t, real, now)
    }

    /// The virtual address for a datagram from `real`; a new one only for an Initial packet.
    pub(crate) fn for_source(
        &self,
        real: SocketAddr,
        initial: bool,
        now: Instant,
    ) -> Result<SocketAddr, Refusal> {
        let mut t = self.lock();
        if let Some(v) = t.by_real.get(&real).copied() {
            if let Some(path) = t.by_virtual.get_mut(&v) {
                path.last_active = now;
            }
            return Ok(v);
        }
        if !initial {
            return Err(Refusal::NotInitial);
        }
        self.lookup_or_insert(&mut t, real, now)
    }

    fn lookup_or_insert(
        &self,
        t: &mut Tables,
        real: SocketAddr,
        now: Instant,
    ) -> Result<SocketAddr, Refusal> {
        if let Some(v) = t.by_real.get(&real).copied() {
            return Ok(v);
        }
        if t.by_virtual.len() >= self.capacity && !self.evict_stale(t, now) {
            return Err(Refusal::Full);
        }
        t.next_id += 1;
        let id = t.next_id;
        let [p0, p1, p2] = VIRTUAL_PREFIX;
        let ip = Ipv6Addr::new(
            p0,
            p1,
            p2,
            0,
            (id >> 48) as u16,
            (id >> 32) as u16,
            (id >> 16) as u16,
            id as u16,
        );
        let v = SocketAddr::new(ip.into(), VIRTUAL_PORT);
        t.by_virtual.insert(
            v,
            Path {
                real,
                node: None,
                switch: Arc::default(),
                last_active: now,
            },
        );
        t.by_real.insert(real, v);
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
        if let Some(path) = t.by_virtual.remove(&v) {
            t.by_real.remove(&path.real);
            if let Some(node) = path.node {
                if t.by_node.get(&node) == Some(&v) {
                    t.by_node.remove(&node);
                }
            }
        }
        true
    }

    /// The real address to send a datagram for `virtual_addr` to.
    pub(crate) fn real_for(&self, virtual_addr: &SocketAddr) -> Option<SocketAddr> {
        self.lock().by_virtual.get(virtual_addr).map(|p| p.real)
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

    /// Moves `virtual_addr` to a new real address (a path switch). Returns false if unknown or
    /// if `real` already belongs to another virtual address. The relay and hole-punching layers
    /// call it; until they land, only tests do.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn switch(&self, virtual_addr: SocketAddr, real: SocketAddr, now: Instant) -> bool {
        let mut t = self.lock();
        if t.by_real.get(&real).is_some_and(|v| *v != virtual_addr) {
            return false;
        }
        let Some(path) = t.by_virtual.get_mut(&virtual_addr) else {
            return false;
        };
        let old = std::mem::replace(&mut path.real, real);
        path.switch.record(now);
        t.by_real.remove(&old);
        t.by_real.insert(real, virtual_addr);
        true
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().by_virtual.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real(port: u16) -> SocketAddr {
        SocketAddr::new([192, 0, 2, 1].into(), port)
    }

    #[test]
    fn one_virtual_address_per_real_address() {
        let table = PathTable::new(8, Duration::from_secs(60));
        let now = Instant::now();
        let v = table.for_dial(real(1), now).unwrap();
        assert!(is_virtual(&v));
        assert!(!is_virtual(&real(1)));
        assert_eq!(table.for_dial(real(1), now), Ok(v));
        assert_eq!(table.for_source(real(1), false, now), Ok(v));
        assert_eq!(table.real_for(&v), Some(real(1)));
        let w = table.for_source(real(2), true, now).unwrap();
        assert_ne!(v, w);
    }

    #[test]
    fn only_initial_packets_open_paths() {
        let table = PathTable::new(8, Duration::from_secs(60));
        assert_eq!(
            table.for_source(real(3), false, Instant::now()),
            Err(Refusal::NotInitial)
        );
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn bounded_with_stale_eviction() {
        let table = PathTable::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        table.for_source(real(1), true, t0).unwrap();
        table
            .for_source(real(2), true, t0 + Duration::from_secs(30))
            .unwrap();
        // Full and nothing stale yet.
        assert_eq!(
            table.for_source(real(3), true, t0 + Duration::from_secs(40)),
            Err(Refusal::Full)
        );
        // Entry 1 is stale at t0 + 61 s: it goes, entry 3 comes.
        assert!(table
            .for_source(real(3), true, t0 + Duration::from_secs(61))
            .is_ok());
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.for_source(real(1), false, t0 + Duration::from_secs(61)),
            Err(Refusal::NotInitial)
        );
    }

    #[test]
    fn switching_moves_the_real_address_and_signals() {
        let table = PathTable::new(8, Duration::from_secs(60));
        let now = Instant::now();
        let v = table.for_dial(real(1), now).unwrap();
        let signal = table.switch_signal(&v).unwrap();
        assert_eq!(signal.generation(), 0);
        assert!(table.switch(v, real(9), now));
        assert_eq!(table.real_for(&v), Some(real(9)));
        assert_eq!(table.for_source(real(9), false, now), Ok(v));
        assert_eq!(
            table.for_source(real(1), false, now),
            Err(Refusal::NotInitial)
        );
        assert_eq!(signal.generation(), 1);
        assert_eq!(signal.switched_at(), Some(now));
        // A real address already in use elsewhere cannot be taken over.
        let w = table.for_dial(real(5), now).unwrap();
        assert!(!table.switch(w, real(9), now));
    }
}
