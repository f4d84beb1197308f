//! The `note_*` calls and `forget`. Each is one transaction that also applies the caps of what
//! it touched, so no call ever leaves a node over its caps or the book over `max_nodes`.

use std::net::SocketAddr;
use std::time::SystemTime;

use keywire_proto::NodeId;
use rusqlite::{named_params, Transaction};

use super::{cap, cutoff, to_ms, AddressBook, AddressBookError, AddressSource, BookLimits};

/// A broker is `host:port`: at most a 253-byte DNS name, a colon and five digits (RFC 1035
/// §2.3.4), with room for IPv6 brackets. Longer text is not a broker and is refused.
pub const MAX_BROKER_LEN: usize = 261;

impl AddressBook {
    /// Notes that `node` may be reachable at `addr`, learned from `source`. Sets `last_seen` to
    /// `now`; the stored source only ever improves. `Connected` means a connection worked over
    /// it, so it is recorded as [`note_worked`](Self::note_worked) would.
    pub fn note_address(
        &self,
        node: &NodeId,
        addr: SocketAddr,
        source: AddressSource,
        now: SystemTime,
    ) -> Result<(), AddressBookError> {
        self.write(|tx, limits| {
            upsert_address(tx, node, addr, source, now)?;
            cap_node(tx, node, now, limits)
        })
    }

    /// Notes that a connection to `node` worked over `addr`: `last_worked = last_seen = now`,
    /// source `Connected`.
    pub fn note_worked(
        &self,
        node: &NodeId,
        addr: SocketAddr,
        now: SystemTime,
    ) -> Result<(), AddressBookError> {
        self.note_address(node, addr, AddressSource::Connected, now)
    }

    /// Notes that `gate` (at `gate_addr`) can introduce or relay for `node`. A gate has one
    /// address per node; a new one replaces the old.
    pub fn note_gate(
        &self,
        node: &NodeId,
        gate: &NodeId,
        gate_addr: SocketAddr,
        now: SystemTime,
    ) -> Result<(), AddressBookError> {
        self.write(|tx, limits| {
            tx.prepare_cached(
                "INSERT INTO address_book_gates (node, gate, gate_addr, last_seen)
                 VALUES (:node, :gate, :addr, :now)
                 ON CONFLICT (node, gate) DO UPDATE
                 SET gate_addr = excluded.gate_addr, last_seen = excluded.last_seen",
            )?
            .execute(named_params! {
                ":node": node.as_bytes(),
                ":gate": gate.as_bytes(),
                ":addr": gate_addr.to_string(),
                ":now": to_ms(now),
            })?;
            cap_node(tx, node, now, limits)
        })
    }

    /// Notes an MQTT broker (`host:port`) that was used: `worked` sets its `last_worked`.
    /// A failure is not recorded against a broker that worked before — back-off after failures
    /// belongs to the broker pool; the book only answers which brokers have worked lately.
    pub fn note_broker(
        &self,
        broker: &str,
        worked: bool,
        now: SystemTime,
    ) -> Result<(), AddressBookError> {
        if broker.len() > MAX_BROKER_LEN {
            return Err(AddressBookError::BrokerTooLong {
                len: broker.len(),
                max: MAX_BROKER_LEN,
            });
        }
        self.write(|tx, limits| {
            let now_ms = to_ms(now);
            tx.prepare_cached(
                "INSERT INTO address_book_brokers (broker, last_seen, last_worked)
                 VALUES (:broker, :now, :worked)
                 ON CONFLICT (broker) DO UPDATE SET last_seen = excluded.last_seen,
                     last_worked = coalesce(excluded.last_worked, last_worked)",
            )?
            .execute(named_params! {
                ":broker": broker,
                ":now": now_ms,
                ":worked": worked.then_some(now_ms),
            })?;
            delete_dead_brokers(tx, now, limits)?;
            cap_brokers(tx, limits).map(drop)
        })
    }

    /// Removes everything known about `node`: its addresses, its gates, its node entry. Entries
    /// naming it as another node's gate stay; they describe the other node.
    pub fn forget(&self, node: &NodeId) -> Result<(), AddressBookError> {
        self.write(|tx, _| {
            for sql in [
                "DELETE FROM address_book_addresses WHERE node = ?1",
                "DELETE FROM address_book_gates WHERE node = ?1",
                "DELETE FROM address_book_nodes WHERE node = ?1",
            ] {
                tx.prepare_cached(sql)?.execute([node.as_bytes()])?;
            }
            Ok(())
        })
    }
}

/// Inserts or refreshes one address. The source improves by `min` (lower code is stronger, see
/// `AddressSource::code`); `last_worked` is only ever set, by a `Connected` note.
fn upsert_address(
    tx: &Transaction<'_>,
    node: &NodeId,
    addr: SocketAddr,
    source: AddressSource,
    now: SystemTime,
) -> rusqlite::Result<()> {
    let now_ms = to_ms(now);
    let worked = (source == AddressSource::Connected).then_some(now_ms);
    tx.prepare_cached(
        "INSERT INTO address_book_addresses (node, addr, source, last_seen, last_worked)
         VALUES (:node, :addr, :source, :now, :worked)
         ON CONFLICT (node, addr) DO UPDATE SET source = min(source, excluded.source),
             last_seen = excluded.last_seen,
             last_worked = coalesce(excluded.last_worked, last_worked)",
    )?
    .execute(named_params! {
        ":node": node.as_bytes(),
        ":addr": addr.to_string(),
        ":source": source.code(),
        ":now": now_ms,
        ":worked": worked,
    })?;
    Ok(())
}

/// After a note about `node`: drops its dead entries (before capping, so that stale rows never
/// crowd out the fresh one), keeps its best `addresses_per_node` and newest `gates_per_node`,
/// and marks it seen. A node new to the book may push the book over `max_nodes`; the least
/// recently seen go.
fn cap_node(
    tx: &Transaction<'_>,
    node: &NodeId,
    now: SystemTime,
    limits: &BookLimits,
) -> rusqlite::Result<()> {
    let id = node.as_bytes();
    let (w, h) = (cutoff(now, limits.worked_ttl), cutoff(now, limits.hint_ttl));
    tx.prepare_cached(concat!(
        "DELETE FROM address_book_addresses WHERE node = :node AND NOT ",
        live!()
    ))?
    .execute(named_params! { ":node": id, ":w": w, ":h": h })?;
    tx.prepare_cached("DELETE FROM address_book_gates WHERE node = :node AND last_seen < :h")?
        .execute(named_params! { ":node": id, ":h": h })?;
    tx.prepare_cached(delete_beyond_cap!(
        "address_book_addresses",
        "",
        best_first!("addr"),
        "WHERE node = :node"
    ))?
    .execute(named_params! { ":node": id, ":cap": cap(limits.addresses_per_node) })?;
    tx.prepare_cached(delete_beyond_cap!(
        "address_book_gates",
        "",
        "last_seen DESC, gate",
        "WHERE node = :node"
    ))?
    .execute(named_params! { ":node": id, ":cap": cap(limits.gates_per_node) })?;

    let now_ms = to_ms(now);
    let new = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO address_book_nodes (node, last_seen) VALUES (?1, ?2)",
        )?
        .execute(rusqlite::params![id, now_ms])?
        == 1;
    if new {
        super::prune::evict_nodes(tx, limits)?;
    } else {
        tx.prepare_cached("UPDATE address_book_nodes SET last_seen = ?2 WHERE node = ?1")?
            .execute(rusqlite::params![id, now_ms])?;
    }
    Ok(())
}

/// Drops brokers past their lifetime; returns how many.
pub(super) fn delete_dead_brokers(
    tx: &Transaction<'_>,
    now: SystemTime,
    limits: &BookLimits,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(concat!(
        "DELETE FROM address_book_brokers WHERE NOT ",
        live!()
    ))?
    .execute(named_params! {
        ":w": cutoff(now, limits.worked_ttl),
        ":h": cutoff(now, limits.hint_ttl),
    })
}

/// Keeps the best `max_brokers`; returns how many were dropped.
pub(super) fn cap_brokers(tx: &Transaction<'_>, limits: &BookLimits) -> rusqlite::Result<usize> {
    tx.prepare_cached(delete_beyond_cap!(
        "address_book_brokers",
        "",
        best_first!("broker"),
        ""
    ))?
    .execute(named_params! { ":cap": cap(limits.max_brokers) })
}
