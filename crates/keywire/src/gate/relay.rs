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

pub(crate) async fn run(state: Arc<State>, mut channel: ControlChannel) {
    let mut out = Vec::with_capacity(2048);
    while let Some(datagram) = channel.recv().await {
        let Ok(frame) = RelayFrame::decode_payload(&datagram.payload) else {
            Counters::inc(&state.counters.frames_malformed);
            continue;
        };
        let Some((to, session)) = route(&state, &frame, datagram.from) else {
            continue;
        };
        out.clear();
        RelayFrame {
            session,
            channel: frame.channel,
            payload: frame.payload,
        }
        .encode(&mut out);
        // `send` adds the control header itself.
        if channel
            .send(to, &out[keywire_proto::datagram::CONTROL_HEADER_LEN..])
            .await
            .is_ok()
        {
            Counters::inc(&state.counters.frames_relayed);
            state.counters.bytes_relayed.fetch_add(
                frame.payload.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
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
