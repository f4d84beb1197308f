//! Counters of a [`super::SidewireNode`].

crate::metrics::counter_set! {
    /// Live counters, shared by the node's tasks.
    live Counters;
    /// A point-in-time copy of a sidewire node's counters.
    snapshot SidewireMetrics;
    /// Calls to `send` that published a message.
    sends,
    /// Sends acknowledged by the destination within the timeout.
    sends_acked,
    /// Sends that timed out without an acknowledgement.
    sends_unacked,
    /// MQTT publishes handed to a broker connection (messages, retransmissions, ACKs).
    publishes,
    /// Publishes skipped because the broker's rate cap was exhausted.
    publishes_rate_limited,
    /// Publishes skipped because the connection's request queue was full.
    publishes_queue_full,
    /// Messages delivered to the application.
    delivered,
    /// Copies and retransmissions of messages already delivered (acknowledged again, not delivered).
    duplicates,
    /// ACKs sent for messages.
    acks_sent,
    /// Probes answered with an ACK.
    probes_answered,
    /// ACKs that completed a pending send.
    acks_matched,
    /// ACKs seen before (sidewire republishes its ACKs for up to a minute): ignored.
    acks_duplicate,
    /// Valid ACKs that matched no pending send (late, or for another sender's message).
    acks_unmatched,
    /// Refused: shorter than the header, longer than the limit, unknown type or bad source key.
    rejected_malformed,
    /// Refused: the signature does not verify.
    rejected_bad_signature,
    /// Refused: stamped more than 120 s ago, or before this node started.
    rejected_stale,
    /// Refused: stamped more than 120 s in the future (sidewire itself accepts these).
    rejected_future,
    /// Refused: the seen-message memory was full of unexpired ids.
    rejected_cache_full,
    /// Messages dropped (not acknowledged) because the application's receive queue was full.
    receive_dropped_full,
    /// Incoming publishes dropped because the inbound queue was full.
    inbound_dropped_full,
    /// Broker connections that completed CONNECT and SUBSCRIBE.
    broker_connects,
    /// Broker connection attempts that failed, or established connections that dropped.
    broker_failures,
}
