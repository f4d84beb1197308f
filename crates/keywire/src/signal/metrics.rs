//! Counters of a [`crate::signal::SignalNode`], read through [`crate::signal::SignalNode::metrics`].

use std::sync::atomic::{AtomicU64, Ordering};

crate::metrics::counter_set! {
    /// Live counters, shared by the node's tasks.
    live Counters;
    /// A point-in-time copy of a signalling node's counters.
    snapshot SignalMetrics;
    /// Calls to `send` that sealed an envelope.
    sends,
    /// Sends acknowledged end to end within their timeout.
    sends_acked,
    /// Sends that timed out without an acknowledgement.
    sends_unacked,
    /// MQTT publishes handed to a broker connection (data, acks, retries).
    publishes,
    /// Publishes skipped because the broker's rate cap was exhausted.
    publishes_rate_limited,
    /// Publishes skipped because the connection's request queue was full.
    publishes_queue_full,
    /// Data and control envelopes delivered to the application.
    delivered,
    /// Acknowledgements that completed a pending send.
    acks_matched,
    /// Valid acknowledgements that matched nothing pending (late copies after the first won).
    acks_unmatched,
    /// Identical copies of an envelope acknowledged moments ago, dropped before opening.
    duplicates,
    /// Refused: larger than the envelope limit.
    rejected_oversized,
    /// Refused: failed decryption or malformed (garbage).
    rejected_garbage,
    /// Refused: sealed to this node but signed for another destination.
    rejected_wrong_destination,
    /// Refused: the signature does not verify.
    rejected_bad_signature,
    /// Refused: timestamp outside the window or before this node started.
    rejected_stale,
    /// Refused: already accepted (later fan-out copies, retries and replays; data is acknowledged again).
    rejected_replay,
    /// Refused: the seen-id cache was full.
    rejected_cache_full,
    /// Incoming publishes dropped because the inbound queue was full.
    inbound_dropped_full,
    /// Envelopes dropped (not acknowledged) because the application's receive queue was full.
    receive_dropped_full,
    /// Broker connections that completed CONNECT and SUBSCRIBE.
    broker_connects,
    /// Broker connection attempts that failed, or established connections that dropped.
    broker_failures,
    /// Own-topic subscriptions added after start, replacing a broker down too long.
    subscriptions_replaced,
    /// Outbound-only connections closed by the idle closer.
    idle_closed,
}

pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
