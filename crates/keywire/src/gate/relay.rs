//! The relay loop: frames in on the `Relay` control channel, out to the other client of their
//! channel. It runs on its own task, draining its bounded queue, never on quinn's endpoint task.
//!
//! A frame is forwarded only if its session exists, it came from the address that session
//! registered from (a QUIC-validated address), its channel includes that session, and the
//! sender's byte budget allows. Everything else is dropped and counted. The gate sends only to
//! registered, validated addresses, so it cannot be used to amplify towards a spoofed one.

use std::sync::Arc;
use std::time::Instant;

use keywire_proto::gate::frame::{RelayFrame, RELAY_HEADER_LEN};

use super::server::{Counters, State};
use crate::ControlChannel;

/// Frames taken off the queue in one go; they leave as GSO batches, one per run of frames to
/// the same client with the same length (bulk QUIC traffic is mostly full-size packets).
const BURST: usize = 64;
/// Most bytes in one GSO batch (the kernel's limit for one UDP send).
const MAX_BATCH_BYTES: usize = 65_000;

pub(crate) async fn run(state: Arc<State>, mut channel: ControlChannel) {
    let mut batch = Batch::default();
    let max_segments = channel.socket.max_batch_segments().max(1);
    while let Some(first) = channel.recv().await {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(datagram) = next.take() {
            taken += 1;
            if let Some((to, packet_len)) = forward(&state, &datagram, &mut batch.scratch) {
                let fits = batch.to == Some(to)
                    && packet_len <= batch.segment
                    && batch.count < max_segments
                    && batch.bytes.len() + packet_len <= MAX_BATCH_BYTES;
                if !fits {
                    batch.flush(&state, &channel).await;
                    batch.to = Some(to);
                    batch.segment = packet_len;
                }
                batch.bytes.extend_from_slice(&batch.scratch);
                batch.count += 1;
                batch.payload_bytes += (packet_len - RELAY_HEADER_LEN) as u64;
                // A shorter packet can only end a GSO batch.
                if packet_len < batch.segment {
                    batch.flush(&state, &channel).await;
                }
            }
            if taken < BURST {
                next = channel.try_recv();
            }
        }
        batch.flush(&state, &channel).await;
    }
}

/// Frames to one client waiting to leave as one GSO send.
#[derive(Default)]
struct Batch {
    to: Option<std::net::SocketAddr>,
    segment: usize,
    count: usize,
    payload_bytes: u64,
    bytes: Vec<u8>,
    scratch: Vec<u8>,
}

impl Batch {
    async fn flush(&mut self, state: &State, channel: &ControlChannel) {
        if let Some(to) = self.to.take() {
            if !self.bytes.is_empty()
                && channel
                    .socket
                    .send_control_batch(to, &self.bytes, self.segment)
                    .await
                    .is_ok()
            {
                state
                    .counters
                    .frames_relayed
                    .fetch_add(self.count as u64, std::sync::atomic::Ordering::Relaxed);
                state
                    .counters
                    .bytes_relayed
                    .fetch_add(self.payload_bytes, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.bytes.clear();
        self.count = 0;
        self.payload_bytes = 0;
        self.segment = 0;
    }
}

/// Checks one incoming frame and writes the packet to send into `out`; returns where it goes
/// and the packet's length.
fn forward(
    state: &State,
    datagram: &crate::ControlDatagram,
    out: &mut Vec<u8>,
) -> Option<(std::net::SocketAddr, usize)> {
    let Ok(frame) = RelayFrame::decode_payload(&datagram.payload) else {
        Counters::inc(&state.counters.frames_malformed);
        return None;
    };
    let (to, session) = route(state, &frame, datagram.from)?;
    out.clear();
    RelayFrame {
        session,
        channel: frame.channel,
        payload: frame.payload,
    }
    .encode(out);
    Some((to, out.len()))
}

/// Where a frame goes: the other client's address and session, if every check passes.
fn route(
    state: &State,
    frame: &RelayFrame<'_>,
    from: std::net::SocketAddr,
) -> Option<(std::net::SocketAddr, u64)> {
    let counters = &state.counters;
    let mut sessions = state.sessions();
    let registered = sessions
        .by_id
        .get(&frame.session)
        .is_some_and(|s| s.addr == from);
    if !registered {
        Counters::inc(&counters.frames_unregistered);
        return None;
    }
    let pair = sessions.channels.get(&frame.channel).copied();
    let Some(other) = pair.and_then(|p| match (p.a == frame.session, p.b == frame.session) {
        (true, _) => Some(p.b),
        (_, true) => Some(p.a),
        _ => None,
    }) else {
        Counters::inc(&counters.frames_unknown_channel);
        return None;
    };
    let cost = frame.payload.len() + RELAY_HEADER_LEN;
    let allowed = sessions
        .by_id
        .get_mut(&frame.session)
        .is_some_and(|s| s.bucket.take(cost, Instant::now()));
    if !allowed {
        Counters::inc(&counters.frames_rate_limited);
        return None;
    }
    sessions.by_id.get(&other).map(|s| (s.addr, other))
}
