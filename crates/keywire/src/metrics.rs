//! Counters an operator can read through [`crate::Endpoint::metrics`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Declares a set of counters: `$live`, the atomics the tasks bump, and `$snapshot`, the
/// public copy with one documented `u64` per counter and `pairs()` for printing. Used for the
/// endpoint's, the gate's and the signalling node's counters.
macro_rules! counter_set {
    (
        $(#[$live_meta:meta])* live $live:ident;
        $(#[$snap_meta:meta])* snapshot $snapshot:ident;
        $($(#[doc = $doc:literal])* $name:ident,)*
    ) => {
        $(#[$live_meta])*
        #[derive(Debug, Default)]
        pub(crate) struct $live {
            $(pub(crate) $name: std::sync::atomic::AtomicU64,)*
        }

        $(#[$snap_meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct $snapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl $live {
            pub(crate) fn snapshot(&self) -> $snapshot {
                $snapshot { $($name: self.$name.load(std::sync::atomic::Ordering::Relaxed),)* }
            }
        }

        impl $snapshot {
            /// Every counter as `(name, value)`, in a stable order (for printing and JSON).
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}
pub(crate) use counter_set;

counter_set! {
    /// Live counters, shared by the endpoint's tasks.
    live Metrics;
    /// A point-in-time copy of an endpoint's counters.
    snapshot MetricsSnapshot;
    /// Calls to `connect` made.
    dials,
    /// Calls to `connect` that returned a connection.
    dials_succeeded,
    /// Calls to `connect` that failed.
    dials_failed,
    /// Individual address attempts started by `connect` (several per dial with several addresses).
    dial_attempts,
    /// Incoming connections that completed the handshake and the network-id check.
    incoming_accepted,
    /// Incoming connections that failed during the handshake or the network-id check.
    incoming_failed,
    /// Incoming connection attempts refused because of the pending-handshake or connection cap.
    incoming_refused_busy,
    /// Incoming connection attempts answered with a QUIC Retry (address validation under load).
    incoming_retried,
    /// Accepted connections closed because nobody took them from a full accept queue.
    accept_queue_full,
    /// Peer keys checked by the TLS verifier (full handshakes; resumed ones skip it).
    peer_keys_verified,
    /// Handshakes refused by the allow or deny list (either direction).
    handshakes_denied,
    /// Dials where the far end proved a key other than the dialed one.
    handshakes_wrong_peer,
    /// Connections closed because the peer belongs to another network id.
    network_mismatch,
    /// Connections closed because the peer's network proof was malformed or missing.
    network_proof_malformed,
    /// Control packets handed to their protocol.
    control_received,
    /// Control packets of a kind nobody here handles (dropped).
    control_unknown,
    /// Control packets too short or of an unknown version, and empty datagrams (dropped).
    control_malformed,
    /// Control packets dropped because their protocol's queue was full.
    control_queue_full,
    /// STUN packets (first byte 0x00-0x03; dropped, keywire answers none yet).
    stun_ignored,
    /// QUIC packets from an unknown address that could not open a connection (dropped); with quinn's migration off, a known connection's packets from a new address land here.
    quic_from_unknown_source,
    /// Datagrams dropped because the path table was full of active paths.
    path_table_full,
    /// QUIC packets received through a gate's relay for one of our relayed paths.
    relayed_received,
    /// Relayed packets dropped because quinn had not yet taken the earlier ones.
    relayed_inbox_full,
    /// Datagrams quinn sent to a virtual address with no path (dropped).
    send_no_path,
    /// Path probes sent (requests and responses).
    probes_sent,
    /// Path probes received that checked out.
    probes_accepted,
    /// Path probes dropped: malformed, forged, replayed, unsolicited, rate-limited or for no connection of ours.
    probes_refused,
    /// Relayed connections moved to a direct path.
    path_upgrades,
    /// Connections moved back to their relay after the direct path died.
    path_fallbacks,
    /// Relayed connections moved to another gate after theirs died.
    gate_failovers,
    /// Punch signals (hellos, birthday go) sent through a relay.
    punch_signals_sent,
    /// Birthday probing attempts this node took part in (either side).
    birthday_attempts,
    /// Extra sockets opened for birthday probing (the hard side).
    birthday_sockets_opened,
    /// Birthday probes sent: the easy side's spray and the extra sockets' requests.
    birthday_probes_sent,
    /// Extra sockets that received the peer's probe and became a path (the hard side).
    birthday_hits,
    /// Stream links (TCP or WebSocket, for networks that block UDP) opened: dialed or accepted.
    links_opened,
    /// Datagrams queued to a stream link.
    link_datagrams_sent,
    /// Datagrams read from a stream link.
    link_datagrams_received,
    /// Datagrams dropped because their link's queue was full (a slow TCP reader; never waited for).
    link_queue_full,
    /// Datagrams too long for a link's framing (dropped).
    link_oversize,
}

impl Metrics {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
