//! Opening, checking and dispatching incoming envelopes; sending acknowledgements.

use std::sync::Arc;

use keywire_proto::signal::{
    seal, AckBody, Envelope, MessageType, OpenError, RejectReason, SignalTopic,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::signal::copies::CopyFilter;
use crate::signal::link::{lock, Inbound};
use crate::signal::metrics::inc;
use crate::signal::node::{Inner, Received};

/// Fingerprints of recently acknowledged envelopes kept (about 40 bytes each).
const COPY_FILTER_CAP: usize = 4096;

pub(crate) async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<Inbound>) {
    let mut copies = CopyFilter::new(COPY_FILTER_CAP);
    while let Some(inbound) = rx.recv().await {
        let fp = CopyFilter::fingerprint(&inbound.bytes);
        let now = Instant::now();
        if copies.is_recent_copy(&fp, now) {
            inc(&inner.counters.duplicates);
            continue;
        }
        if handle(&inner, inbound) {
            copies.acked(fp, now);
        }
    }
}

/// Returns whether an acknowledgement was sent.
fn handle(inner: &Inner, inbound: Inbound) -> bool {
    let c = &inner.counters;
    let envelope = match inner.opener.open(&inbound.bytes) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(broker = %inbound.broker, error = %e, "envelope refused");
            match e {
                OpenError::Oversized(_) => inc(&c.rejected_oversized),
                OpenError::WrongDestination => inc(&c.rejected_wrong_destination),
                OpenError::BadSignature => inc(&c.rejected_bad_signature),
                _ => inc(&c.rejected_garbage),
            }
            return false;
        }
    };
    match envelope.kind {
        MessageType::Ack => {
            handle_ack(inner, &envelope, &inbound);
            false
        }
        MessageType::Data | MessageType::Control => handle_data(inner, envelope, inbound),
    }
}

fn handle_data(inner: &Inner, envelope: Envelope, inbound: Inbound) -> bool {
    let c = &inner.counters;
    // Reserve room first: an envelope recorded as seen but never delivered would be lost, since
    // its copies and retries would then be refused as replays.
    let Ok(permit) = inner.deliver.try_reserve() else {
        inc(&c.receive_dropped_full);
        return false;
    };
    let verdict = lock(&inner.replay).check(&envelope, inner.clock.now());
    match verdict {
        Ok(()) => {
            permit.send(Received {
                from: envelope.source,
                kind: envelope.kind,
                payload: envelope.payload.clone(),
                timestamp: envelope.timestamp,
                broker: inbound.broker.clone(),
            });
            inc(&c.delivered);
            send_ack(inner, &envelope, &inbound)
        }
        Err(RejectReason::Replay) => {
            // A fan-out copy through another broker, a retry, or a replay: acknowledge again on
            // this broker (the sender may be listening only here), deliver nothing.
            inc(&c.rejected_replay);
            send_ack(inner, &envelope, &inbound)
        }
        Err(RejectReason::Stale) => {
            inc(&c.rejected_stale);
            false
        }
        Err(_) => {
            inc(&c.rejected_cache_full);
            false
        }
    }
}

fn handle_ack(inner: &Inner, envelope: &Envelope, inbound: &Inbound) {
    let c = &inner.counters;
    let Some(body) = AckBody::decode(&envelope.payload) else {
        inc(&c.rejected_garbage);
        return;
    };
    // Acks are checked for freshness too (a replayed ack must not complete a later send).
    match lock(&inner.replay).check(envelope, inner.clock.now()) {
        Ok(()) => {}
        Err(RejectReason::Stale) => return inc(&c.rejected_stale),
        Err(RejectReason::Replay) => return inc(&c.rejected_replay),
        Err(_) => return inc(&c.rejected_cache_full),
    }
    if body.queue != inner.queue {
        return inc(&c.acks_unmatched);
    }
    let mut pending = lock(&inner.pending);
    match pending.get(&body.sequence) {
        Some((dest, _)) if *dest == envelope.source => {
            if let Some((_, tx)) = pending.remove(&body.sequence) {
                // The broker travels back so that the sender can cache it for this peer.
                let _ = tx.send(inbound.broker.clone());
            }
            inc(&c.acks_matched);
        }
        _ => inc(&c.acks_unmatched),
    }
}

fn send_ack(inner: &Inner, data: &Envelope, inbound: &Inbound) -> bool {
    let ack = Envelope {
        kind: MessageType::Ack,
        source: inner.me,
        destination: data.source,
        queue: inner.queue,
        sequence: inner.next_sequence(),
        timestamp: inner.clock.now(),
        payload: AckBody {
            queue: data.queue,
            sequence: data.sequence,
        }
        .encode(),
    };
    let Ok(sealed) = seal(&inner.key, &ack, &mut rand::rngs::OsRng) else {
        return false;
    };
    let Some(link) = inner.pool.existing(&inbound.broker) else {
        return false;
    };
    let topic = SignalTopic::new(&inner.network, &data.source).mqtt_topic();
    inner
        .publish_counters()
        .count(link.publish(&topic, &sealed))
}
