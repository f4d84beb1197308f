//! Checking incoming sidewire packets, delivering messages, answering with ACKs.

use std::sync::Arc;

use keywire_proto::sidewire::{
    decode_packet, encode_packet, PacketError, SidewireFields, SidewireKind, SidewirePublicKey,
    Verdict, ACK_TEXT,
};
use tokio::sync::mpsc;

use super::node::{Inner, SidewireReceived};
use crate::signal::link::{lock, Inbound};
use crate::signal::metrics::inc;

pub(crate) async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<Inbound>) {
    while let Some(inbound) = rx.recv().await {
        handle(&inner, &inbound);
    }
}

fn handle(inner: &Inner, inbound: &Inbound) {
    let c = &inner.counters;
    let (source, fields) = match decode_packet(&inbound.bytes) {
        Ok(decoded) => decoded,
        Err(e) => {
            tracing::debug!(broker = %inbound.broker, error = %e, "sidewire packet refused");
            match e {
                PacketError::BadSignature => inc(&c.rejected_bad_signature),
                _ => inc(&c.rejected_malformed),
            }
            return;
        }
    };
    match fields.kind {
        SidewireKind::Message => handle_message(inner, source, fields, inbound),
        // Probes ask "are you subscribed on this broker?": answer each copy where it came.
        SidewireKind::Probe => {
            if check(inner, &source, &fields).is_some()
                && acknowledge(inner, &source, &fields, inbound)
            {
                inc(&c.probes_answered);
            }
        }
        SidewireKind::Ack => handle_ack(inner, source, fields, inbound),
    }
}

/// The replay verdict, with refusals counted; `None` when refused.
fn check(inner: &Inner, source: &SidewirePublicKey, fields: &SidewireFields) -> Option<Verdict> {
    let c = &inner.counters;
    let verdict = lock(&inner.seen).check(source, fields, inner.now_secs());
    match verdict {
        Verdict::Fresh | Verdict::Duplicate => return Some(verdict),
        Verdict::Stale => inc(&c.rejected_stale),
        Verdict::Future => inc(&c.rejected_future),
        Verdict::Full => inc(&c.rejected_cache_full),
    }
    None
}

fn handle_message(
    inner: &Inner,
    source: SidewirePublicKey,
    fields: SidewireFields,
    inbound: &Inbound,
) {
    let c = &inner.counters;
    // Reserve room first: a message recorded as seen but never delivered would be lost, since
    // its retransmissions would then count as duplicates.
    let Ok(permit) = inner.deliver.try_reserve() else {
        inc(&c.receive_dropped_full);
        return;
    };
    match check(inner, &source, &fields) {
        Some(Verdict::Fresh) => {
            permit.send(SidewireReceived {
                from: source.clone(),
                message: fields.message.clone(),
                queue_id: fields.queue_id,
                timestamp_secs: fields.timestamp_secs,
                broker: inbound.broker.clone(),
            });
            inc(&c.delivered);
        }
        // A copy through another broker or a retransmission: the sender may have lost the ACK,
        // so acknowledge again where it came in, deliver nothing.
        Some(_) => inc(&c.duplicates),
        None => return,
    }
    if acknowledge(inner, &source, &fields, inbound) {
        inc(&c.acks_sent);
    }
}

fn handle_ack(inner: &Inner, source: SidewirePublicKey, fields: SidewireFields, inbound: &Inbound) {
    let c = &inner.counters;
    match check(inner, &source, &fields) {
        Some(Verdict::Fresh) => {}
        // sidewire republishes each ACK with back-off for up to a minute, and acknowledges every
        // copy of a message: all but the first are noise.
        Some(_) => return inc(&c.acks_duplicate),
        None => return,
    }
    let mut pending = lock(&inner.pending);
    match pending.get(&fields.queue_id) {
        Some((dest, _)) if *dest == source && fields.sequence == 0 => {
            if let Some((_, tx)) = pending.remove(&fields.queue_id) {
                let _ = tx.send(inbound.broker.clone());
            }
            inc(&c.acks_matched);
        }
        _ => inc(&c.acks_unmatched),
    }
}

/// Publishes an ACK for `fields` to `source` on the broker the packet came in on (the sender is
/// connected, hence subscribed, there).
fn acknowledge(
    inner: &Inner,
    source: &SidewirePublicKey,
    fields: &SidewireFields,
    inbound: &Inbound,
) -> bool {
    let ack = encode_packet(
        &inner.key,
        &SidewireFields {
            queue_id: fields.queue_id,
            sequence: fields.sequence,
            timestamp_secs: inner.now_secs(),
            kind: SidewireKind::Ack,
            message: ACK_TEXT.to_vec(),
        },
    );
    let Some(link) = inner.link(&inbound.broker) else {
        return false;
    };
    inner.publish(link, &source.topic(), &ack)
}
