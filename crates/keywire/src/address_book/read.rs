//! The read calls. Each is one statement that filters dead rows itself, so nothing stale comes
//! back even between prunes, and each is bounded by the matching cap. A row that does not
//! decode (a damaged or hand-edited file) is skipped and counted, never a panic or an error.

use std::net::SocketAddr;
use std::time::SystemTime;

use keywire_proto::NodeId;
use rusqlite::types::ValueRef;
use rusqlite::{named_params, Row, Rows};

use super::write::MAX_BROKER_LEN;
use super::{cap, cutoff, from_ms, AddressBook, AddressBookError, AddressSource, KnownAddress};

impl AddressBook {
    /// The live addresses of `node`, best first: those that worked, most recently worked first,
    /// then the hints, most recently seen first.
    pub fn addresses(
        &self,
        node: &NodeId,
        now: SystemTime,
    ) -> Result<Vec<KnownAddress>, AddressBookError> {
        self.read(|conn, limits| {
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT addr, source, last_seen, last_worked FROM address_book_addresses
                 WHERE node = :node AND ",
                live!(),
                " ORDER BY ",
                best_first!("addr"),
                " LIMIT :cap"
            ))?;
            let rows = stmt.query(named_params! {
                ":node": node.as_bytes(),
                ":w": cutoff(now, limits.worked_ttl),
                ":h": cutoff(now, limits.hint_ttl),
                ":cap": cap(limits.addresses_per_node),
            })?;
            self.decode_all(rows, decode_address)
        })
    }

    /// The live gates of `node` with their addresses, most recently seen first.
    pub fn gates(
        &self,
        node: &NodeId,
        now: SystemTime,
    ) -> Result<Vec<(NodeId, SocketAddr)>, AddressBookError> {
        self.read(|conn, limits| {
            let mut stmt = conn.prepare_cached(
                "SELECT gate, gate_addr FROM address_book_gates
                 WHERE node = :node AND last_seen >= :h
                 ORDER BY last_seen DESC, gate LIMIT :cap",
            )?;
            let rows = stmt.query(named_params! {
                ":node": node.as_bytes(),
                ":h": cutoff(now, limits.hint_ttl),
                ":cap": cap(limits.gates_per_node),
            })?;
            self.decode_all(rows, |row| Some((node_at(row, 0)?, addr_at(row, 1)?)))
        })
    }

    /// The brokers that worked within `worked_ttl`, most recently worked first.
    pub fn brokers(&self, now: SystemTime) -> Result<Vec<String>, AddressBookError> {
        self.read(|conn, limits| {
            let mut stmt = conn.prepare_cached(
                "SELECT broker FROM address_book_brokers WHERE last_worked >= :w
                 ORDER BY last_worked DESC, broker LIMIT :cap",
            )?;
            let rows = stmt.query(named_params! {
                ":w": cutoff(now, limits.worked_ttl),
                ":cap": cap(limits.max_brokers),
            })?;
            self.decode_all(rows, |row| match row.get_ref(0).ok()? {
                ValueRef::Text(t) if t.len() <= MAX_BROKER_LEN => {
                    std::str::from_utf8(t).ok().map(str::to_owned)
                }
                _ => None,
            })
        })
    }

    /// The nodes with at least one live address or gate, most recently seen first.
    pub fn nodes(&self, now: SystemTime) -> Result<Vec<NodeId>, AddressBookError> {
        self.read(|conn, limits| {
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT node FROM address_book_nodes AS n
                 WHERE EXISTS (SELECT 1 FROM address_book_addresses
                               WHERE node = n.node AND ",
                live!(),
                ") OR EXISTS (SELECT 1 FROM address_book_gates
                              WHERE node = n.node AND last_seen >= :h)
                 ORDER BY last_seen DESC, node LIMIT :cap"
            ))?;
            let rows = stmt.query(named_params! {
                ":w": cutoff(now, limits.worked_ttl),
                ":h": cutoff(now, limits.hint_ttl),
                ":cap": cap(limits.max_nodes),
            })?;
            self.decode_all(rows, |row| node_at(row, 0))
        })
    }

    /// Decodes every row with `decode`, skipping and counting the ones it refuses.
    fn decode_all<T>(
        &self,
        mut rows: Rows<'_>,
        decode: impl Fn(&Row<'_>) -> Option<T>,
    ) -> rusqlite::Result<Vec<T>> {
        let mut out = Vec::new();
        let mut skipped = 0;
        while let Some(row) = rows.next()? {
            match decode(row) {
                Some(value) => out.push(value),
                None => skipped += 1,
            }
        }
        self.count_skipped(skipped);
        Ok(out)
    }
}

fn decode_address(row: &Row<'_>) -> Option<KnownAddress> {
    let last_worked = match row.get_ref(3).ok()? {
        ValueRef::Null => None,
        ValueRef::Integer(ms) => Some(from_ms(ms)?),
        _ => return None,
    };
    Some(KnownAddress {
        addr: addr_at(row, 0)?,
        source: AddressSource::from_code(int_at(row, 1)?)?,
        last_seen: from_ms(int_at(row, 2)?)?,
        last_worked,
    })
}

/// A node id column: exactly 32 bytes that are an ed25519 public key.
fn node_at(row: &Row<'_>, i: usize) -> Option<NodeId> {
    match row.get_ref(i).ok()? {
        ValueRef::Blob(b) => NodeId::from_bytes(b.try_into().ok()?).ok(),
        _ => None,
    }
}

/// An address column: `SocketAddr` text.
fn addr_at(row: &Row<'_>, i: usize) -> Option<SocketAddr> {
    match row.get_ref(i).ok()? {
        ValueRef::Text(t) => std::str::from_utf8(t).ok()?.parse().ok(),
        _ => None,
    }
}

fn int_at(row: &Row<'_>, i: usize) -> Option<i64> {
    match row.get_ref(i).ok()? {
        ValueRef::Integer(n) => Some(n),
        _ => None,
    }
}
