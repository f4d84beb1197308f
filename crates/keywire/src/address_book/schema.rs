//! Opening the file: permissions, pragmas, and the schema with its version.
//!
//! The log-sync store will share this SQLite file, so every table here is prefixed
//! `address_book_` and the version lives in the shared `keywire_schema` table under the
//! component `address_book` (`PRAGMA user_version` is one number per file and would collide).

use std::fs;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::AddressBookError;

/// The schema version this build writes and understands.
pub(super) const VERSION: i64 = 1;

/// Another writer (a second `AddressBook`, another process) holds the lock for one short
/// transaction at a time; two seconds is far beyond any of ours, short enough to surface a
/// stuck writer as an error rather than a hang.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

const SHARED: &str = "CREATE TABLE IF NOT EXISTS keywire_schema (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL
)";

/// Version 1. Times are unix milliseconds. Node ids are the 32 raw key bytes. Addresses are
/// `SocketAddr`'s text form (`192.0.2.7:4433`, `[2001:db8::7]:4433`): readable with the
/// `sqlite3` shell, and the form is canonical, so one address is one primary key.
const V1: &str = "
CREATE TABLE address_book_nodes (
    node BLOB PRIMARY KEY,
    last_seen INTEGER NOT NULL
);
CREATE INDEX address_book_nodes_by_seen ON address_book_nodes (last_seen);
CREATE TABLE address_book_addresses (
    node BLOB NOT NULL,
    addr TEXT NOT NULL,
    source INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    last_worked INTEGER,
    PRIMARY KEY (node, addr)
);
CREATE TABLE address_book_gates (
    node BLOB NOT NULL,
    gate BLOB NOT NULL,
    gate_addr TEXT NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (node, gate)
);
CREATE TABLE address_book_brokers (
    broker TEXT PRIMARY KEY,
    last_seen INTEGER NOT NULL,
    last_worked INTEGER
);
";

/// Opens the file private to its owner, sets the pragmas, and creates or checks the schema.
pub(super) fn open(path: &Path) -> Result<Connection, AddressBookError> {
    create_private(path)?;
    let open_err = |source| AddressBookError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_err)?;
    configure(&conn).map_err(open_err)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Creates the parent directories and the file with mode 0600, or tightens an existing file to
/// 0600: the book says whom this node talks to and where they are. SQLite gives the `-wal` and
/// `-shm` files the mode of the database file.
fn create_private(path: &Path) -> Result<(), AddressBookError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AddressBookError::Io { path, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        options.open(path).map_err(io_err(path))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    }
    #[cfg(not(unix))]
    options.open(path).map_err(io_err(path))?;
    Ok(())
}

/// WAL lets readers run beside the one writer, so several books (or processes) can share the
/// file. `synchronous=NORMAL` skips the fsync at each commit: in WAL mode a crash can then lose
/// the last commits but never corrupts the file — the right trade for a cache that is rebuilt
/// by the next lookup.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Some file systems (network mounts) cannot hold WAL's shared memory. The rollback
        // journal still works, with readers waiting for writers.
        tracing::warn!(journal_mode = %mode, "address book: WAL unavailable");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(BUSY_TIMEOUT)
}

/// Creates the tables on a new file; refuses a file from a newer keywire. `IMMEDIATE`, so two
/// processes opening a new file at once do not both create the tables.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), AddressBookError> {
    let sql_err = |source| AddressBookError::Open {
        path: path.to_path_buf(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err)?;
    tx.execute_batch(SHARED).map_err(sql_err)?;
    let found: Option<i64> = tx
        .query_row(
            "SELECT version FROM keywire_schema WHERE component = 'address_book'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql_err)?;
    match found {
        Some(found) if found > VERSION => {
            return Err(AddressBookError::NewerSchema {
                path: path.to_path_buf(),
                found,
                supported: VERSION,
            })
        }
        // Version 1 is the first; when version 2 comes, its migration from 1 goes here.
        Some(_) => {}
        None => {
            tx.execute_batch(V1).map_err(sql_err)?;
            tx.execute(
                "INSERT INTO keywire_schema (component, version) VALUES ('address_book', ?1)",
                [VERSION],
            )
            .map_err(sql_err)?;
        }
    }
    tx.commit().map_err(sql_err)
}
