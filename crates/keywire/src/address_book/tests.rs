//! Real SQLite files in a temporary directory; explicit times, no sleeping.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keywire_proto::{NodeId, SecretKey};

use super::*;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A directory removed when the test ends, pass or fail.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "keywire-address-book-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        Self(dir)
    }

    /// In a subdirectory that does not exist yet: `open` must create it.
    fn file(&self) -> PathBuf {
        self.0.join("state").join("keywire.sqlite")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn node(i: u8) -> NodeId {
    SecretKey::from_seed([i; 32]).node_id()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

/// Test times start at the real clock: `open` prunes against it, so times far in the past
/// would be swept away at every reopen.
fn start() -> SystemTime {
    // Whole milliseconds, so times survive the round trip through the file exactly.
    from_ms(to_ms(SystemTime::now())).unwrap()
}

fn ports(found: &[KnownAddress]) -> Vec<u16> {
    found.iter().map(|a| a.addr.port()).collect()
}

fn open(dir: &TempDir) -> AddressBook {
    AddressBook::open(&dir.file()).unwrap()
}

#[test]
fn book_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<AddressBook>();
}

#[test]
fn everything_survives_close_and_reopen() {
    let dir = TempDir::new("reopen");
    let t0 = start();
    let v6: SocketAddr = "[2001:db8::7]:4433".parse().unwrap();
    {
        let book = open(&dir);
        book.note_worked(&node(1), addr(1), t0).unwrap();
        book.note_address(&node(1), v6, AddressSource::Dht, t0 + HOUR)
            .unwrap();
        book.note_gate(&node(1), &node(9), addr(900), t0).unwrap();
        book.note_broker("broker.example:1883", true, t0).unwrap();
    }
    let book = open(&dir);
    let found = book.addresses(&node(1), t0 + HOUR).unwrap();
    assert_eq!(
        found,
        vec![
            KnownAddress {
                addr: addr(1),
                source: AddressSource::Connected,
                last_seen: t0,
                last_worked: Some(t0),
            },
            KnownAddress {
                addr: v6,
                source: AddressSource::Dht,
                last_seen: t0 + HOUR,
                last_worked: None,
            },
        ]
    );
    assert_eq!(
        book.gates(&node(1), t0).unwrap(),
        vec![(node(9), addr(900))]
    );
    assert_eq!(book.brokers(t0).unwrap(), vec!["broker.example:1883"]);
    assert_eq!(book.nodes(t0).unwrap(), vec![node(1)]);
    assert_eq!(book.skipped_rows(), 0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.file()), 0o600);
        assert_eq!(mode(dir.file().with_extension("sqlite-wal")), 0o600);
    }
}

#[test]
fn worked_addresses_come_first_then_hints_by_last_seen() {
    let dir = TempDir::new("order");
    let book = open(&dir);
    let t0 = start();
    let n = node(1);
    book.note_address(&n, addr(1), AddressSource::Ticket, t0 + 5 * HOUR)
        .unwrap();
    book.note_worked(&n, addr(2), t0).unwrap();
    book.note_address(&n, addr(3), AddressSource::Dht, t0 + 3 * HOUR)
        .unwrap();
    book.note_worked(&n, addr(4), t0 + HOUR).unwrap();
    // Seen again as a hint: last_seen moves, last_worked does not.
    book.note_address(&n, addr(2), AddressSource::Mqtt, t0 + 6 * HOUR)
        .unwrap();
    let found = book.addresses(&n, t0 + 6 * HOUR).unwrap();
    assert_eq!(ports(&found), vec![4, 2, 1, 3]);
    assert_eq!(found[1].last_seen, t0 + 6 * HOUR);
    assert_eq!(found[1].last_worked, Some(t0));
}

#[test]
fn source_only_improves() {
    let dir = TempDir::new("source");
    let book = open(&dir);
    let t0 = start();
    let n = node(1);
    let source = |t| book.addresses(&n, t).unwrap()[0].source;
    book.note_address(&n, addr(1), AddressSource::Ticket, t0)
        .unwrap();
    assert_eq!(source(t0), AddressSource::Ticket);
    book.note_address(&n, addr(1), AddressSource::Dht, t0)
        .unwrap();
    book.note_address(&n, addr(1), AddressSource::Mqtt, t0)
        .unwrap();
    assert_eq!(source(t0), AddressSource::Dht);
    book.note_address(&n, addr(1), AddressSource::Connected, t0 + HOUR)
        .unwrap();
    book.note_address(&n, addr(1), AddressSource::Ticket, t0 + 2 * HOUR)
        .unwrap();
    let found = book.addresses(&n, t0 + 2 * HOUR).unwrap();
    assert_eq!(found[0].source, AddressSource::Connected);
    // `Connected` through note_address is a worked note.
    assert_eq!(found[0].last_worked, Some(t0 + HOUR));
    assert_eq!(found[0].last_seen, t0 + 2 * HOUR);
}

#[test]
fn per_node_caps_hold_after_every_write() {
    let dir = TempDir::new("caps");
    let limits = BookLimits {
        addresses_per_node: 3,
        gates_per_node: 2,
        ..BookLimits::default()
    };
    let book = open(&dir).with_limits(limits);
    let t0 = start();
    let n = node(1);
    book.note_worked(&n, addr(1), t0).unwrap();
    for port in 2..=6u16 {
        let t = t0 + HOUR * u32::from(port);
        book.note_address(&n, addr(port), AddressSource::Dht, t)
            .unwrap();
        let count: i64 = book
            .lock()
            .query_row(
                "SELECT count(*) FROM address_book_addresses WHERE node = ?1",
                [n.as_bytes()],
                |r| r.get(0),
            )
            .unwrap();
        assert!(count <= 3, "{count} rows after writing port {port}");
    }
    // The oldest address stays because it worked; of the hints, the newest.
    assert_eq!(
        ports(&book.addresses(&n, t0 + 6 * HOUR).unwrap()),
        vec![1, 6, 5]
    );

    for g in 10..14u8 {
        book.note_gate(&n, &node(g), addr(u16::from(g)), t0 + HOUR * u32::from(g))
            .unwrap();
    }
    assert_eq!(
        book.gates(&n, t0 + 13 * HOUR).unwrap(),
        vec![(node(13), addr(13)), (node(12), addr(12))]
    );
}

#[test]
fn least_recently_seen_nodes_are_evicted_beyond_max_nodes() {
    let dir = TempDir::new("evict");
    let limits = BookLimits {
        max_nodes: 3,
        ..BookLimits::default()
    };
    let book = open(&dir).with_limits(limits);
    let t0 = start();
    for i in 1..=3u8 {
        book.note_address(
            &node(i),
            addr(1),
            AddressSource::Dht,
            t0 + HOUR * u32::from(i),
        )
        .unwrap();
    }
    // Node 1 is seen again (through a gate): node 2 is now the least recently seen.
    book.note_gate(&node(1), &node(9), addr(9), t0 + 4 * HOUR)
        .unwrap();
    book.note_address(&node(4), addr(1), AddressSource::Dht, t0 + 5 * HOUR)
        .unwrap();
    let now = t0 + 5 * HOUR;
    assert_eq!(book.nodes(now).unwrap(), vec![node(4), node(1), node(3)]);
    assert!(book.addresses(&node(2), now).unwrap().is_empty());
    assert_eq!(book.prune(now).unwrap(), 0, "the write already evicted");
}

#[test]
fn entries_age_out_of_reads_before_prune_removes_them() {
    let dir = TempDir::new("aging");
    let book = open(&dir);
    let t0 = start();
    let n = node(1);
    book.note_worked(&n, addr(1), t0).unwrap();
    book.note_address(&n, addr(2), AddressSource::Dht, t0)
        .unwrap();
    book.note_gate(&n, &node(9), addr(9), t0).unwrap();

    let just_before_hint_ttl = t0 + DAY;
    assert_eq!(
        ports(&book.addresses(&n, just_before_hint_ttl).unwrap()),
        vec![1, 2]
    );
    assert_eq!(book.gates(&n, just_before_hint_ttl).unwrap().len(), 1);

    let after_hint_ttl = t0 + DAY + Duration::from_millis(1);
    assert_eq!(ports(&book.addresses(&n, after_hint_ttl).unwrap()), vec![1]);
    assert!(book.gates(&n, after_hint_ttl).unwrap().is_empty());
    assert_eq!(book.nodes(after_hint_ttl).unwrap(), vec![n]);
    assert_eq!(
        book.prune(after_hint_ttl).unwrap(),
        2,
        "the hint and the gate"
    );

    let after_worked_ttl = t0 + 30 * DAY + Duration::from_millis(1);
    assert!(book.addresses(&n, after_worked_ttl).unwrap().is_empty());
    assert!(book.nodes(after_worked_ttl).unwrap().is_empty());
    assert_eq!(book.prune(after_worked_ttl).unwrap(), 1);
    assert_eq!(book.prune(after_worked_ttl).unwrap(), 0);
}

#[test]
fn a_fresh_hint_keeps_an_address_that_worked_long_ago() {
    let dir = TempDir::new("rehint");
    let book = open(&dir);
    let t0 = start();
    let n = node(1);
    book.note_worked(&n, addr(1), t0).unwrap();
    book.note_address(&n, addr(1), AddressSource::Dht, t0 + 40 * DAY)
        .unwrap();
    let found = book.addresses(&n, t0 + 40 * DAY + HOUR).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].last_worked, Some(t0));
}

#[test]
fn stale_rows_do_not_crowd_out_a_fresh_note() {
    let dir = TempDir::new("crowd");
    let limits = BookLimits {
        addresses_per_node: 2,
        ..BookLimits::default()
    };
    let book = open(&dir).with_limits(limits);
    let t0 = start();
    let n = node(1);
    book.note_worked(&n, addr(1), t0).unwrap();
    book.note_worked(&n, addr(2), t0).unwrap();
    // Both worked addresses are dead by now; the new hint must not be the one capped away.
    let later = t0 + 31 * DAY;
    book.note_address(&n, addr(3), AddressSource::Ticket, later)
        .unwrap();
    assert_eq!(ports(&book.addresses(&n, later).unwrap()), vec![3]);
}

#[test]
fn brokers_that_worked_most_recent_first() {
    let dir = TempDir::new("brokers");
    let limits = BookLimits {
        max_brokers: 2,
        ..BookLimits::default()
    };
    let book = open(&dir).with_limits(limits);
    let t0 = start();
    book.note_broker("a.example:1883", true, t0).unwrap();
    book.note_broker("b.example:1883", true, t0 + HOUR).unwrap();
    // Heard of, never worked: kept but not offered.
    book.note_broker("c.example:1883", false, t0 + 2 * HOUR)
        .unwrap();
    // A failure does not erase that a broker worked.
    book.note_broker("a.example:1883", false, t0 + 3 * HOUR)
        .unwrap();
    assert_eq!(
        book.brokers(t0 + 3 * HOUR).unwrap(),
        vec!["b.example:1883", "a.example:1883"]
    );
    // Over the cap of two: the never-worked broker is the one dropped.
    let count: i64 = book
        .lock()
        .query_row("SELECT count(*) FROM address_book_brokers", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(count, 2);
    assert_eq!(
        book.brokers(t0 + HOUR + 30 * DAY).unwrap(),
        vec!["b.example:1883"]
    );
    let long = "x".repeat(MAX_BROKER_LEN + 1);
    assert!(matches!(
        book.note_broker(&long, true, t0),
        Err(AddressBookError::BrokerTooLong { .. })
    ));
}

#[test]
fn forget_removes_a_node_and_only_it() {
    let dir = TempDir::new("forget");
    let book = open(&dir);
    let t0 = start();
    book.note_worked(&node(1), addr(1), t0).unwrap();
    book.note_gate(&node(1), &node(2), addr(2), t0).unwrap();
    book.note_gate(&node(3), &node(1), addr(1), t0).unwrap();
    book.forget(&node(1)).unwrap();
    assert!(book.addresses(&node(1), t0).unwrap().is_empty());
    assert!(book.gates(&node(1), t0).unwrap().is_empty());
    assert_eq!(book.nodes(t0).unwrap(), vec![node(3)]);
    assert_eq!(book.gates(&node(3), t0).unwrap(), vec![(node(1), addr(1))]);
}

#[test]
fn prune_applies_tightened_caps_everywhere() {
    let dir = TempDir::new("tighten");
    let t0 = start();
    let book = open(&dir);
    for i in 1..=3u8 {
        for port in 1..=4 {
            book.note_address(
                &node(i),
                addr(port),
                AddressSource::Dht,
                t0 + HOUR * u32::from(i),
            )
            .unwrap();
        }
    }
    let book = book.with_limits(BookLimits {
        max_nodes: 2,
        addresses_per_node: 1,
        ..BookLimits::default()
    });
    // Node 1 goes with its 4 addresses; nodes 2 and 3 keep 1 of 4 each.
    assert_eq!(book.prune(t0 + 3 * HOUR).unwrap(), 4 + 3 + 3);
    assert_eq!(book.nodes(t0 + 3 * HOUR).unwrap(), vec![node(3), node(2)]);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = TempDir::new("newer");
    drop(open(&dir));
    let raw = rusqlite::Connection::open(dir.file()).unwrap();
    raw.execute(
        "UPDATE keywire_schema SET version = 7 WHERE component = 'address_book'",
        [],
    )
    .unwrap();
    drop(raw);
    let err = AddressBook::open(&dir.file()).unwrap_err();
    assert!(
        matches!(
            err,
            AddressBookError::NewerSchema {
                found: 7,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("keywire.sqlite"), "{message}");
}

#[test]
fn undecodable_rows_are_skipped_and_counted() {
    let dir = TempDir::new("tampered");
    let t0 = start();
    let book = open(&dir);
    book.note_worked(&node(1), addr(1), t0).unwrap();
    let raw = rusqlite::Connection::open(dir.file()).unwrap();
    let n1 = node(1).as_bytes().to_vec();
    let now = to_ms(t0);
    raw.execute_batch("PRAGMA busy_timeout = 2000").unwrap();
    for (addr_text, source, seen) in [
        ("not an address", 1, now),
        ("192.0.2.1:2", 99, now),
        ("192.0.2.1:3", 1, -5),
    ] {
        raw.execute(
            "INSERT INTO address_book_addresses (node, addr, source, last_seen) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![n1, addr_text, source, seen],
        )
        .unwrap();
    }
    // A node id of the wrong length, and one that is no curve point; a broker stored as a blob.
    // (Negative times are never live, so they never reach decoding in a read.)
    raw.execute(
        "INSERT INTO address_book_nodes (node, last_seen) VALUES (x'0102', ?1)",
        [now],
    )
    .unwrap();
    raw.execute(
        "INSERT INTO address_book_gates (node, gate, gate_addr, last_seen) VALUES (x'0102', ?1, '192.0.2.1:9', ?2)",
        rusqlite::params![vec![0xffu8; 32], now],
    )
    .unwrap();
    raw.execute(
        "INSERT INTO address_book_gates (node, gate, gate_addr, last_seen) VALUES (?1, ?2, '192.0.2.1:9', ?3)",
        rusqlite::params![n1, vec![0x02u8; 32], now],
    )
    .unwrap();
    raw.execute(
        "INSERT INTO address_book_brokers (broker, last_seen, last_worked) VALUES (x'00', ?1, ?1)",
        [now],
    )
    .unwrap();

    assert_eq!(ports(&book.addresses(&node(1), t0).unwrap()), vec![1]);
    assert_eq!(book.skipped_rows(), 2);
    assert!(book.gates(&node(1), t0).unwrap().is_empty());
    assert_eq!(book.skipped_rows(), 3);
    assert!(book.brokers(t0).unwrap().is_empty());
    assert_eq!(book.skipped_rows(), 4);
    assert_eq!(book.nodes(t0).unwrap(), vec![node(1)]);
    assert_eq!(book.skipped_rows(), 5);
    // Prune and reopen cope with the same rows.
    book.prune(t0).unwrap();
    drop(book);
    let book = open(&dir);
    assert_eq!(ports(&book.addresses(&node(1), t0).unwrap()), vec![1]);
}

#[test]
fn threads_write_through_one_shared_book() {
    let dir = TempDir::new("threads");
    let book = Arc::new(open(&dir));
    let t0 = start();
    let writers: Vec<_> = (1..=4u8)
        .map(|i| {
            let book = Arc::clone(&book);
            std::thread::spawn(move || {
                for port in 1..=20 {
                    book.note_address(&node(i), addr(port), AddressSource::Dht, t0)
                        .unwrap();
                    book.note_broker(&format!("b{i}.example:{port}"), true, t0)
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let mut nodes = book.nodes(t0).unwrap();
    nodes.sort_by_key(|n| *n.as_bytes());
    let mut expected: Vec<_> = (1..=4).map(node).collect();
    expected.sort_by_key(|n| *n.as_bytes());
    assert_eq!(nodes, expected);
    for i in 1..=4 {
        assert_eq!(book.addresses(&node(i), t0).unwrap().len(), 8);
    }
    assert_eq!(book.brokers(t0).unwrap().len(), 64);
}

#[test]
fn two_books_on_one_file_see_each_others_writes() {
    let dir = TempDir::new("two");
    let t0 = start();
    let a = open(&dir);
    let b = open(&dir);
    a.note_worked(&node(1), addr(1), t0).unwrap();
    assert_eq!(ports(&b.addresses(&node(1), t0).unwrap()), vec![1]);
    b.note_address(&node(1), addr(2), AddressSource::Mqtt, t0)
        .unwrap();
    assert_eq!(ports(&a.addresses(&node(1), t0).unwrap()), vec![1, 2]);
    let mode: String = a
        .lock()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}
