//! `prune`: the whole-book sweep that writes only do for the node they touch. Runs at open and
//! whenever the owner likes (an hourly timer is plenty: reads already hide dead rows).

use std::time::SystemTime;

use rusqlite::{named_params, Transaction};

use super::write::{cap_brokers, delete_dead_brokers};
use super::{cap, cutoff, AddressBook, AddressBookError, BookLimits};

/// The nodes beyond `max_nodes`, least recently seen last in the order and so beyond the offset.
/// `LIMIT -1` is SQLite for "no limit", needed to use `OFFSET`.
macro_rules! evicted_nodes {
    () => {
        "(SELECT node FROM address_book_nodes ORDER BY last_seen DESC, node LIMIT -1 OFFSET :max)"
    };
}

impl AddressBook {
    /// Removes dead entries and enforces every cap, across the whole book:
    ///
    /// - an address that ever worked lives `worked_ttl` after it last worked, a hint `hint_ttl`
    ///   after it was last seen (a fresh hint also keeps an address that once worked);
    /// - a gate lives `hint_ttl` after it was last seen; a broker as an address does;
    /// - each node keeps its best `addresses_per_node` and newest `gates_per_node`;
    /// - nodes with nothing left go, then the least recently seen beyond `max_nodes`.
    ///
    /// Returns how many addresses, gates and brokers were removed (node rows are bookkeeping
    /// and not counted).
    pub fn prune(&self, now: SystemTime) -> Result<usize, AddressBookError> {
        self.write(|tx, limits| {
            let (w, h) = (cutoff(now, limits.worked_ttl), cutoff(now, limits.hint_ttl));
            let mut removed = tx
                .prepare_cached(concat!(
                    "DELETE FROM address_book_addresses WHERE NOT ",
                    live!()
                ))?
                .execute(named_params! { ":w": w, ":h": h })?;
            removed += tx
                .prepare_cached("DELETE FROM address_book_gates WHERE last_seen < :h")?
                .execute(named_params! { ":h": h })?;
            removed += delete_dead_brokers(tx, now, limits)?;
            removed += cap_all_nodes(tx, limits)?;
            removed += cap_brokers(tx, limits)?;
            // Rows whose node row is missing (a file edited by hand) would never be evicted.
            removed += tx.execute(
                "DELETE FROM address_book_addresses
                 WHERE node NOT IN (SELECT node FROM address_book_nodes)",
                [],
            )?;
            removed += tx.execute(
                "DELETE FROM address_book_gates
                 WHERE node NOT IN (SELECT node FROM address_book_nodes)",
                [],
            )?;
            tx.execute(
                "DELETE FROM address_book_nodes
                 WHERE node NOT IN (SELECT node FROM address_book_addresses)
                 AND node NOT IN (SELECT node FROM address_book_gates)",
                [],
            )?;
            removed += evict_nodes(tx, limits)?;
            Ok(removed)
        })
    }
}

/// The per-node caps of `write::cap_node`, for every node at once.
fn cap_all_nodes(tx: &Transaction<'_>, limits: &BookLimits) -> rusqlite::Result<usize> {
    let addresses = tx.execute(
        delete_beyond_cap!(
            "address_book_addresses",
            "PARTITION BY node",
            best_first!("addr"),
            ""
        ),
        named_params! { ":cap": cap(limits.addresses_per_node) },
    )?;
    let gates = tx.execute(
        delete_beyond_cap!(
            "address_book_gates",
            "PARTITION BY node",
            "last_seen DESC, gate",
            ""
        ),
        named_params! { ":cap": cap(limits.gates_per_node) },
    )?;
    Ok(addresses + gates)
}

/// Evicts the least recently seen nodes beyond `max_nodes`, with their addresses and gates;
/// returns how many addresses and gates went with them. The three statements see the same
/// node table, since it changes only in the last.
pub(super) fn evict_nodes(tx: &Transaction<'_>, limits: &BookLimits) -> rusqlite::Result<usize> {
    // Counting is one pass over the smallest index; it spares the three ordered scans below in
    // the usual case of a book under its cap.
    let nodes: i64 = tx
        .prepare_cached("SELECT count(*) FROM address_book_nodes")?
        .query_row([], |r| r.get(0))?;
    if nodes <= cap(limits.max_nodes) {
        return Ok(0);
    }
    let max = named_params! { ":max": cap(limits.max_nodes) };
    let mut removed = tx
        .prepare_cached(concat!(
            "DELETE FROM address_book_addresses WHERE node IN ",
            evicted_nodes!()
        ))?
        .execute(max)?;
    removed += tx
        .prepare_cached(concat!(
            "DELETE FROM address_book_gates WHERE node IN ",
            evicted_nodes!()
        ))?
        .execute(max)?;
    tx.prepare_cached(concat!(
        "DELETE FROM address_book_nodes WHERE node IN ",
        evicted_nodes!()
    ))?
    .execute(max)?;
    Ok(removed)
}
