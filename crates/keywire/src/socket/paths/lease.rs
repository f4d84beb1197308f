//! Which paths are in use: every live connection (and every dial or accepted handshake in
//! progress) holds a lease on its path. A path all of whose connections are over is
//! *finished*; its routes may go to a new connection or a path switch (`retire_finished_owner`).
//!
//! Lock order: quinn holds a connection's lock while it sends, and sending takes the table's
//! lock. So nothing here takes a quinn lock while holding the table's: connection handles are
//! `Arc`s (copied without quinn's lock), queried with the table unlocked, and dropped only
//! after it is released.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{PathTable, Route, Tables};

/// Held by every live [`crate::Connection`]: a path with none may give its routes to a new
/// path (an earlier connection to the same peer is over).
#[derive(Debug)]
pub(crate) struct PathLease {
    paths: Arc<PathTable>,
    virtual_addr: SocketAddr,
    id: u64,
}

impl Drop for PathLease {
    fn drop(&mut self) {
        let mut t = self.paths.lock();
        let released = t.by_virtual.get_mut(&self.virtual_addr).and_then(|path| {
            let index = path.leases.iter().position(|(id, _)| *id == self.id)?;
            Some(path.leases.swap_remove(index))
        });
        // The connection handle goes only after the lock (see `PathTable::unlock`).
        drop(t);
        drop(released);
    }
}

impl PathTable {
    /// Releases the lock, then drops what was removed under it.
    ///
    /// Lock order: quinn holds a connection's lock while it sends, and sending takes this
    /// table's lock. So nothing may take a quinn lock while holding ours: no `close_reason()`
    /// and no dropping of a `quinn::Connection` handle under the table lock.
    pub(super) fn unlock(t: std::sync::MutexGuard<'_, Tables>) {
        let mut t = t;
        let dead = std::mem::take(&mut t.graveyard);
        drop(t);
        drop(dead);
    }

    /// If `route` belongs to a path (other than `keep`) all of whose connections are over,
    /// removes that path, so a new connection or a path switch can take the route. Asks quinn
    /// about the connections without holding the table lock (see [`PathTable::unlock`]).
    pub(super) fn retire_finished_owner(&self, route: Route, keep: Option<SocketAddr>) {
        let (owner, connections) = {
            let t = self.lock();
            let Some(owner) = t.by_route.get(&route).copied() else {
                return;
            };
            match t.by_virtual.get(&owner) {
                // A path whose first handshake is still running has no lease yet: not finished.
                Some(path) if Some(owner) != keep && path.ever_leased => (
                    owner,
                    path.leases
                        .iter()
                        .map(|(_, c)| c.clone())
                        .collect::<Vec<_>>(),
                ),
                _ => return,
            }
        };
        let finished = connections
            .iter()
            .all(|c| c.as_ref().is_some_and(|c| c.close_reason().is_some()));
        drop(connections);
        if finished {
            let mut t = self.lock();
            if t.by_route.get(&route) == Some(&owner) {
                Self::remove(&mut t, owner);
            }
            Self::unlock(t);
        }
    }

    /// Records `conn` as a connection on its path, until the lease is dropped. (If the path is
    /// gone the handle is dropped here, outside the lock.)
    pub(crate) fn lease(self: &Arc<Self>, conn: &quinn::Connection) -> PathLease {
        let virtual_addr = conn.remote_address();
        // Cloning a quinn handle takes quinn's lock: done before taking ours.
        let handle = Arc::new(conn.clone());
        let mut t = self.lock();
        Self::add_lease(&mut t, self, virtual_addr, Some(handle))
    }

    /// A lease for a handshake in progress on `virtual_addr` (an accepted one), so that the
    /// path is not retired under it; drop it once the connection has its own.
    pub(crate) fn handshake_lease(self: &Arc<Self>, virtual_addr: SocketAddr) -> PathLease {
        let mut t = self.lock();
        Self::add_lease(&mut t, self, virtual_addr, None)
    }

    pub(super) fn add_lease(
        t: &mut Tables,
        paths: &Arc<Self>,
        virtual_addr: SocketAddr,
        handle: Option<Arc<quinn::Connection>>,
    ) -> PathLease {
        t.next_lease += 1;
        let id = t.next_lease;
        if let Some(path) = t.by_virtual.get_mut(&virtual_addr) {
            path.leases.push((id, handle));
            path.ever_leased = true;
        }
        PathLease {
            paths: paths.clone(),
            virtual_addr,
            id,
        }
    }
}
