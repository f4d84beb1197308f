//! The address book: where peers were last reachable, kept in SQLite across restarts.
//!
//! Dialing a bare key (issue #11) starts here: the addresses a peer was last reached at, the gates
//! that introduced it and the MQTT brokers that worked are tried before any slower discovery. The
//! book is a cache: every entry ages out (see [`BookLimits`]), every table has a cap, and a lost
//! or damaged entry costs one slower lookup, never correctness — which is why the file is written
//! with `synchronous=NORMAL` (see `schema.rs`).
//!
//! Each call is one short transaction on one connection behind a mutex, so a shared
//! `Arc<AddressBook>` serves every task; several `AddressBook`s (or processes) may open the same
//! file, since WAL lets readers and one writer proceed together. Schema, limits and aging are
//! described in `docs/address-book.md`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, Transaction, TransactionBehavior};

// SQL fragments shared by writes, reads and prune, so each policy is written once. Macros, not
// consts, because `concat!` takes only literals and the statements stay `&'static str`.

/// An address (or broker) is live while it worked within `worked_ttl` (`:w` is the cutoff) or
/// was seen within `hint_ttl` (`:h`). `coalesce` turns a never-worked row's NULL comparison into
/// false: a bare NULL would make `NOT live` NULL too, and such rows would never be deleted.
macro_rules! live {
    () => {
        "(coalesce(last_worked >= :w, 0) OR last_seen >= :h)"
    };
}

/// Best first: worked most recently, then hints by last seen; the key breaks ties so the order
/// (and which rows a cap keeps) is deterministic.
macro_rules! best_first {
    ($key:literal) => {
        concat!(
            "last_worked IS NULL, last_worked DESC, last_seen DESC, ",
            $key
        )
    };
}

/// Deletes the rows of `$table` ranked past `:cap` by `$order`, within each window `$over`
/// (`""` for the whole scope, `"PARTITION BY node"` for per node) among the rows `$scope`
/// selects. The caps of writes, of prune and of brokers are all this one statement.
macro_rules! delete_beyond_cap {
    ($table:literal, $over:literal, $order:expr, $scope:literal) => {
        concat!(
            "DELETE FROM ",
            $table,
            " WHERE rowid IN (SELECT rowid FROM (",
            "SELECT rowid, row_number() OVER (",
            $over,
            " ORDER BY ",
            $order,
            ") AS n ",
            "FROM ",
            $table,
            " ",
            $scope,
            ") WHERE n > :cap)"
        )
    };
}

mod prune;
mod read;
mod schema;
mod write;

#[cfg(test)]
mod tests;

pub use write::MAX_BROKER_LEN;

/// How an address came to be known. Stored as a small integer; a stronger source replaces a
/// weaker one, never the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AddressSource {
    /// A connection actually worked over it: the strongest evidence there is.
    Connected,
    /// Learned from a DHT record.
    Dht,
    /// Learned from an MQTT signalling envelope.
    Mqtt,
    /// Learned from a ticket.
    Ticket,
}

impl AddressSource {
    /// The stored integer, fixed forever since files hold it. A lower code is stronger evidence,
    /// so an upgrade is SQL `min(old, new)`. Only `Connected` is proof; the hints are ordered by
    /// how directly they come from the node itself: a DHT record it published, an MQTT envelope
    /// it sent, a ticket that may be old.
    fn code(self) -> i64 {
        match self {
            AddressSource::Connected => 0,
            AddressSource::Dht => 1,
            AddressSource::Mqtt => 2,
            AddressSource::Ticket => 3,
        }
    }

    fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => AddressSource::Connected,
            1 => AddressSource::Dht,
            2 => AddressSource::Mqtt,
            3 => AddressSource::Ticket,
            _ => return None,
        })
    }
}

/// One address of a node, as the book knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownAddress {
    /// The address.
    pub addr: SocketAddr,
    /// The best source it was learned from.
    pub source: AddressSource,
    /// When it was last noted, by any source.
    pub last_seen: SystemTime,
    /// When a connection last worked over it, if ever.
    pub last_worked: Option<SystemTime>,
}

/// Caps and lifetimes. Every table is bounded; the policy when full is to keep the best entries
/// (worked most recently, then seen most recently) and drop the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookLimits {
    /// Nodes kept; beyond it the least recently seen nodes are evicted.
    pub max_nodes: usize,
    /// Addresses kept per node.
    pub addresses_per_node: usize,
    /// Gates kept per node.
    pub gates_per_node: usize,
    /// Brokers kept.
    pub max_brokers: usize,
    /// How long an address or broker that worked stays after it last worked.
    pub worked_ttl: Duration,
    /// How long a hint (never worked), a gate, or a never-worked broker stays after last seen.
    pub hint_ttl: Duration,
}

impl Default for BookLimits {
    /// 10 000 nodes × 8 addresses is a few megabytes at most. A month keeps a peer that is
    /// reached weekly; a day is longer than most NAT mappings and DHT records live.
    fn default() -> Self {
        Self {
            max_nodes: 10_000,
            addresses_per_node: 8,
            gates_per_node: 4,
            max_brokers: 64,
            worked_ttl: Duration::from_secs(30 * 24 * 3600),
            hint_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why the address book failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddressBookError {
    /// The directory for the file could not be created, or the file could not be made private.
    #[error("address book {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// SQLite could not open the file or set it up.
    #[error("address book {path}: cannot open: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A query failed (disk full, file locked longer than the busy timeout, damaged file).
    #[error("address book {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A broker name longer than any `host:port` can be.
    #[error("broker name of {len} bytes is longer than a host:port can be ({max})")]
    BrokerTooLong {
        /// Its length.
        len: usize,
        /// [`MAX_BROKER_LEN`].
        max: usize,
    },
    /// The file was written by a newer keywire; it is left untouched rather than downgraded.
    #[error(
        "address book {path}: schema version {found} is newer than this keywire supports ({supported})"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: i64,
        /// The newest version this build understands.
        supported: i64,
    },
}

/// A persisted address book. `Send + Sync`; share it through an `Arc`.
pub struct AddressBook {
    conn: Mutex<Connection>,
    path: PathBuf,
    limits: BookLimits,
    skipped: AtomicU64,
}

impl fmt::Debug for AddressBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressBook")
            .field("path", &self.path)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl AddressBook {
    /// Opens (creating if needed) the book at `path` with the default limits, and prunes it.
    pub fn open(path: &Path) -> Result<Self, AddressBookError> {
        Self::open_with_limits(path, BookLimits::default())
    }

    /// Opens the book with `limits`, and prunes it under them. Use this rather than
    /// [`with_limits`](Self::with_limits) when the limits are looser than the defaults: the
    /// prune at open would otherwise drop what the looser limits would keep.
    pub fn open_with_limits(path: &Path, limits: BookLimits) -> Result<Self, AddressBookError> {
        let conn = schema::open(path)?;
        let book = Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            limits,
            skipped: AtomicU64::new(0),
        };
        book.prune(SystemTime::now())?;
        Ok(book)
    }

    /// Replaces the limits for every later call. Tighter caps take effect at the next write to a
    /// node, or everywhere at the next [`prune`](Self::prune).
    pub fn with_limits(mut self, limits: BookLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The file this book lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows that could not be decoded (a damaged or tampered file) and were left out of answers,
    /// counted since this book was opened.
    pub fn skipped_rows(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Runs `f` in one transaction and commits it. `IMMEDIATE` takes the write lock up front:
    /// a deferred transaction that reads and then writes can fail with `SQLITE_BUSY` at once
    /// (no busy wait) when another connection wrote in between.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>, &BookLimits) -> rusqlite::Result<T>,
    ) -> Result<T, AddressBookError> {
        let mut conn = self.lock();
        let run = || {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx, &self.limits)?;
            tx.commit()?;
            Ok(out)
        };
        run().map_err(|source| self.sqlite_error(source))
    }

    /// Runs a read on the connection; each read is a single statement, hence consistent alone.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection, &BookLimits) -> rusqlite::Result<T>,
    ) -> Result<T, AddressBookError> {
        let conn = self.lock();
        f(&conn, &self.limits).map_err(|source| self.sqlite_error(source))
    }

    /// A panic while the lock was held dropped its `Transaction`, which rolls back, so the
    /// connection is still consistent: poisoning is no reason to stop serving.
    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sqlite_error(&self, source: rusqlite::Error) -> AddressBookError {
        AddressBookError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn count_skipped(&self, n: u64) {
        if n > 0 {
            self.skipped.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(path = %self.path.display(), rows = n, "address book: skipped undecodable rows");
        }
    }
}

/// Unix milliseconds; times before 1970 become 0 and times past year 292 million saturate.
fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The inverse of [`to_ms`]; `None` for a value no writer produces (negative: a damaged row).
fn from_ms(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// `now - ttl` in unix ms: rows last touched before it have aged out.
fn cutoff(now: SystemTime, ttl: Duration) -> i64 {
    to_ms(now).saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// A cap as an SQL integer (`usize` can exceed `i64` on paper).
fn cap(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
