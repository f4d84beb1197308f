//! Prober tests: two probers talking, replays, time-outs, bounds.

use super::*;

const A: Role = Role::Dialer;
const B: Role = Role::Acceptor;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new([192, 0, 2, 1].into(), port)
}

fn pair(
    now: Instant,
    a_candidates: &[SocketAddr],
    b_candidates: &[SocketAddr],
) -> (Prober, Prober) {
    let keys = ProbeKeys::from_exported([9; 32]);
    let config = ProberConfig::default();
    (
        Prober::new(keys.clone(), A, config.clone(), a_candidates, now, [1; 32]),
        Prober::new(keys, B, config, b_candidates, now, [2; 32]),
    )
}

fn drain(p: &mut Prober) -> Vec<(SocketAddr, Vec<u8>)> {
    std::iter::from_fn(|| p.poll_transmit()).collect()
}

fn decisions(p: &mut Prober) -> Vec<Decision> {
    std::iter::from_fn(|| p.poll_decision()).collect()
}

#[test]
fn a_working_candidate_becomes_the_direct_path_on_both_sides() {
    let t0 = Instant::now();
    // A is at 1, B at 2; A also has a dead candidate 3 for B.
    let (mut a, mut b) = pair(t0, &[addr(3), addr(2)], &[addr(1)]);
    a.handle_timeout(t0);
    let sent = drain(&mut a);
    assert_eq!(
        sent.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        [addr(3), addr(2)]
    );
    // B receives A's request to 2 from 1; answers to 1 and checks 1 itself at once.
    b.handle(addr(1), &sent[1].1, t0).unwrap();
    assert_eq!(decisions(&mut b), [Decision::AcceptFrom(addr(1))]);
    let from_b = drain(&mut b);
    assert_eq!(from_b.len(), 2);
    assert!(from_b.iter().all(|(to, _)| *to == addr(1)));
    // A gets the response (from 2) and B's own request.
    a.handle(addr(2), &from_b[0].1, t0).unwrap();
    assert_eq!(a.direct(), Some(addr(2)));
    assert_eq!(a.observed(), Some(addr(1)));
    a.handle(addr(2), &from_b[1].1, t0).unwrap();
    assert_eq!(
        decisions(&mut a),
        [Decision::UseDirect(addr(2)), Decision::AcceptFrom(addr(2))]
    );
    let answer = drain(&mut a);
    assert_eq!(
        answer.len(),
        1,
        "direct already: answer only, no triggered check"
    );
    b.handle(addr(2 - 1), &answer[0].1, t0).unwrap();
    assert_eq!(b.direct(), Some(addr(1)));
    assert_eq!(decisions(&mut b), [Decision::UseDirect(addr(1))]);
}

#[test]
fn a_rebound_peer_is_followed_only_after_its_new_address_answers() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0, &[addr(2)], &[]);
    a.handle_timeout(t0);
    b.handle(addr(1), &drain(&mut a)[0].1, t0).unwrap();
    a.handle(addr(2), &drain(&mut b)[0].1, t0).unwrap();
    decisions(&mut a);
    assert_eq!(a.direct(), Some(addr(2)));
    // B's NAT rebinds: B's keep-alive request now arrives from 22.
    let keys = ProbeKeys::from_exported([9; 32]);
    a.handle(addr(22), &keys.request(B, [5; 16]), t0).unwrap();
    assert_eq!(a.direct(), Some(addr(2)), "a request alone moves nothing");
    let sent = drain(&mut a);
    assert_eq!(
        sent.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        [addr(22), addr(22)],
        "the answer, and a check of the new address"
    );
    // A forged response from 22 does nothing; B's real one (nonce echoed) moves A.
    assert!(a
        .handle(addr(22), &keys.response(B, [0; 16], addr(1)), t0)
        .is_err());
    b.handle(addr(1), &sent[1].1, t0).unwrap();
    let answer = drain(&mut b).remove(0).1;
    a.handle(addr(22), &answer, t0).unwrap();
    assert_eq!(a.direct(), Some(addr(22)));
    assert_eq!(
        decisions(&mut a),
        [
            Decision::AcceptFrom(addr(22)),
            Decision::UseDirect(addr(22))
        ]
    );
}

#[test]
fn replays_and_unsolicited_responses_validate_nothing() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0, &[addr(2)], &[]);
    a.handle_timeout(t0);
    let request = drain(&mut a).remove(0).1;
    b.handle(addr(1), &request, t0).unwrap();
    let response = drain(&mut b).remove(0).1;
    // The same request again, even from elsewhere: refused.
    assert_eq!(b.handle(addr(66), &request, t0), Err(ProbeError::Replayed));
    // The response replayed from another address than the request went to: nothing.
    assert_eq!(
        a.handle(addr(66), &response, t0),
        Err(ProbeError::Unsolicited)
    );
    assert_eq!(a.direct(), None);
    a.handle(addr(2), &response, t0).unwrap();
    assert_eq!(a.direct(), Some(addr(2)));
    // Each response counts once.
    assert_eq!(
        a.handle(addr(2), &response, t0),
        Err(ProbeError::Unsolicited)
    );
}

#[test]
fn a_dead_direct_path_falls_back_to_the_relay_in_time() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0, &[addr(2)], &[]);
    a.handle_timeout(t0);
    let request = drain(&mut a).remove(0).1;
    b.handle(addr(1), &request, t0).unwrap();
    a.handle(addr(2), &drain(&mut b)[0].1, t0).unwrap();
    assert_eq!(decisions(&mut a), [Decision::UseDirect(addr(2))]);
    // From now on nothing comes back. Step through time as a driver would.
    let mut now = t0;
    let mut keepalives = 0;
    while a.direct().is_some() {
        now = a.poll_timeout().expect("a direct path has timers");
        a.handle_timeout(now);
        keepalives += drain(&mut a).len();
        assert!(
            now - t0 < Duration::from_secs(3),
            "still direct at {:?}",
            now - t0
        );
    }
    assert_eq!(decisions(&mut a), [Decision::UseRelay]);
    assert!(now - t0 >= ProberConfig::default().dead_after);
    assert!(keepalives >= 3, "{keepalives} probes went out");
}

#[test]
fn searching_is_bounded_in_rounds_and_responses_in_rate() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0, &[addr(2)], &[]);
    let mut now = t0;
    let mut sent = 0;
    while let Some(at) = a.poll_timeout() {
        now = at;
        a.handle_timeout(now);
        sent += drain(&mut a).len();
    }
    let c = ProberConfig::default();
    // An address that never answers gets a handful of probes, not one per round.
    assert_eq!(sent as u32, c.max_unconfirmed_probes);
    assert!(now - t0 < Duration::from_secs(600));
    // A flood of distinct valid requests within one second gets a bounded number of answers.
    let keys = ProbeKeys::from_exported([9; 32]);
    let mut answered = 0;
    for i in 0..200u8 {
        let request = keys.request(A, [i; 16]);
        if b.handle(addr(1), &request, t0).is_ok() {
            answered += 1;
        }
    }
    assert_eq!(answered, c.max_responses_per_second);
    assert!(b.candidates().len() <= c.max_candidates);
}

#[test]
fn an_address_that_speaks_keeps_being_probed() {
    let t0 = Instant::now();
    let (mut a, _) = pair(t0, &[addr(2), addr(3)], &[]);
    let keys = ProbeKeys::from_exported([9; 32]);
    let mut now = t0;
    let mut to_3 = 0;
    for round in 0..20u8 {
        a.handle_timeout(now);
        to_3 += drain(&mut a)
            .iter()
            .filter(|(to, _)| *to == addr(3))
            .count();
        if round == 0 {
            // 3 speaks (a valid request from the peer); 2 never does.
            a.handle(addr(3), &keys.request(B, [round; 16]), now)
                .unwrap();
            drain(&mut a);
        }
        now = a.poll_timeout().unwrap();
    }
    assert!(
        to_3 >= 19,
        "a confirmed address is probed every round: {to_3}"
    );
}

#[test]
fn a_network_change_lets_silent_candidates_be_probed_again() {
    let t0 = Instant::now();
    let (mut a, _) = pair(t0, &[addr(2)], &[]);
    let mut now = t0;
    let mut before = 0;
    for _ in 0..30 {
        a.handle_timeout(now);
        before += drain(&mut a).len();
        now = a.poll_timeout().unwrap_or(now + Duration::from_secs(5));
    }
    let c = ProberConfig::default();
    assert_eq!(before as u32, c.max_unconfirmed_probes, "silent: given up");
    a.network_changed(now);
    let mut after = 0;
    for _ in 0..30 {
        a.handle_timeout(now);
        after += drain(&mut a).len();
        now = a.poll_timeout().unwrap_or(now + Duration::from_secs(5));
    }
    assert_eq!(
        after as u32, c.max_unconfirmed_probes,
        "probed again, and again bounded"
    );
}

#[test]
fn a_silent_address_gets_its_five_requests_spread_over_five_seconds() {
    let t0 = Instant::now();
    let (mut a, _) = pair(t0, &[addr(2)], &[]);
    let mut now = t0;
    let mut sent_at = Vec::new();
    while now < t0 + Duration::from_secs(120) {
        a.handle_timeout(now);
        for _ in drain(&mut a) {
            sent_at.push((now - t0).as_millis());
        }
        let Some(next) = a.poll_timeout() else { break };
        now = next;
    }
    // Rounds 0, 1, 2, 8 and 24 of 200 ms: the last keeps our NAT's hole open for a peer that
    // starts probing five seconds after us.
    assert_eq!(sent_at, [0, 200, 400, 1600, 4800]);
}

#[test]
fn held_back_requests_go_out_on_timed_retries_and_the_cap_holds() {
    let t0 = Instant::now();
    let (mut a, _) = pair(t0, &[addr(2)], &[]);
    a.hold_back();
    let mut now = t0;
    let mut scheduled = 0;
    while now < t0 + Duration::from_secs(30) {
        a.handle_timeout(now);
        scheduled += drain(&mut a).len();
        now = a.poll_timeout().unwrap_or(now + Duration::from_secs(5));
    }
    assert_eq!(scheduled, 3, "two requests kept for the retries");
    a.retry();
    assert_eq!(drain(&mut a).len(), 1);
    a.retry();
    assert_eq!(drain(&mut a).len(), 1);
    a.retry();
    assert!(drain(&mut a).is_empty(), "five in all to a silent address");
}
