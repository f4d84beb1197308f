use std::collections::HashSet;

use super::*;

fn keys() -> ProbeKeys {
    ProbeKeys::from_exported([5; 32])
}

const HARD_ADDR: &str = "203.0.113.10:40000";
const EASY_ADDR: &str = "198.51.100.20:5000";

fn pair() -> (Punch, Punch, Instant) {
    let now = Instant::now();
    let mut hard = Punch::new(keys(), Role::Dialer, PunchConfig::default());
    let mut easy = Punch::new(keys(), Role::Acceptor, PunchConfig::default());
    hard.set_peer_candidates(&[EASY_ADDR.parse().unwrap()], &[]);
    easy.set_peer_candidates(&[HARD_ADDR.parse().unwrap()], &[]);
    hard.set_local(
        Mapping::EndpointDependent,
        Some(HARD_ADDR.parse().unwrap()),
        now,
    );
    easy.set_local(
        Mapping::EndpointIndependent,
        Some(EASY_ADDR.parse().unwrap()),
        now,
    );
    (hard, easy, now)
}

/// Delivers every signal `from` queued to `to`; returns the other actions of `from`.
fn relay(from: &mut Punch, to: &mut Punch, now: Instant) -> Vec<Action> {
    let mut others = Vec::new();
    while let Some(action) = from.poll_action() {
        match action {
            Action::Signal(bytes) => to.handle(&bytes, now).expect("valid signal"),
            other => others.push(other),
        }
    }
    others
}

/// Runs both ends until `until`, delivering signals at once; returns each end's actions (see
/// [`run_timed`], which also says who asked and when).
fn run(hard: &mut Punch, easy: &mut Punch, now: Instant, until: Instant) -> Vec<Action> {
    run_timed(hard, easy, now, until)
        .into_iter()
        .map(|(_, _, action)| action)
        .collect()
}

#[test]
fn the_hard_side_opens_sockets_then_the_easy_side_sprays_its_ip() {
    let (mut hard, mut easy, now) = pair();
    let mut actions = run(&mut hard, &mut easy, now, now + Duration::from_millis(999));
    assert!(
        actions.is_empty(),
        "nothing before birthday_after: {actions:?}"
    );
    actions = run(&mut hard, &mut easy, now, now + Duration::from_millis(1000));
    assert_eq!(
        actions,
        vec![Action::OpenSockets {
            attempt: 1,
            target: EASY_ADDR.parse().unwrap(),
            sockets: 256,
            resend: Duration::from_secs(2),
        }]
    );
    let opened = now + Duration::from_millis(1050);
    hard.sockets_open(1, opened);
    let actions = run(&mut hard, &mut easy, opened, opened);
    assert_eq!(
        actions,
        vec![Action::Spray {
            attempt: 1,
            ip: "203.0.113.10".parse().unwrap()
        }],
        "the first go starts the spray; its repeats change nothing"
    );
    assert_eq!(easy.peer_mapping(), Some(Mapping::EndpointDependent));
}

#[test]
fn attempts_are_bounded_and_end_in_time() {
    let (mut hard, mut easy, now) = pair();
    let actions = run(&mut hard, &mut easy, now, now + Duration::from_secs(120));
    let opened = actions
        .iter()
        .filter(|a| matches!(a, Action::OpenSockets { .. }))
        .count();
    let closed = actions
        .iter()
        .filter(|a| matches!(a, Action::CloseSockets { .. }))
        .count();
    assert_eq!((opened, closed), (2, 2), "{actions:?}");
    assert_eq!(hard.attempts(), 2);
    assert_eq!(hard.poll_timeout(), None, "nothing left to do");
}

#[test]
fn going_direct_ends_the_attempt_on_both_sides() {
    let (mut hard, mut easy, now) = pair();
    run(&mut hard, &mut easy, now, now + Duration::from_secs(1));
    let later = now + Duration::from_millis(1100);
    hard.sockets_open(1, later);
    run(&mut hard, &mut easy, later, later);
    let direct = later + Duration::from_millis(500);
    hard.set_direct(true, direct);
    easy.set_direct(true, direct);
    assert_eq!(
        hard.poll_action(),
        Some(Action::CloseSockets { attempt: 1 })
    );
    assert_eq!(easy.poll_action(), Some(Action::StopSpray { attempt: 1 }));
    let actions = run(
        &mut hard,
        &mut easy,
        direct,
        direct + Duration::from_secs(60),
    );
    assert!(actions.is_empty(), "no attempt while direct: {actions:?}");
}

#[test]
fn no_birthday_when_both_or_neither_map_endpoint_dependently_or_one_has_no_nat() {
    use Mapping::*;
    for (a, b) in [
        (EndpointDependent, EndpointDependent),
        (EndpointIndependent, EndpointIndependent),
        (EndpointDependent, None),
        (EndpointDependent, Unknown),
    ] {
        let now = Instant::now();
        let mut one = Punch::new(keys(), Role::Dialer, PunchConfig::default());
        let mut two = Punch::new(keys(), Role::Acceptor, PunchConfig::default());
        one.set_peer_candidates(&[EASY_ADDR.parse().unwrap()], &[]);
        two.set_peer_candidates(&[HARD_ADDR.parse().unwrap()], &[]);
        one.set_local(a, Some(HARD_ADDR.parse().unwrap()), now);
        two.set_local(b, Some(EASY_ADDR.parse().unwrap()), now);
        let mut actions = run(&mut one, &mut two, now, now + Duration::from_secs(60));
        // Timed retries of plain probing are not birthday probing.
        actions.retain(|a| !matches!(a, Action::HoldBack | Action::Retry));
        assert!(actions.is_empty(), "{a:?} x {b:?}: {actions:?}");
    }
}

#[test]
fn replayed_and_misdirected_signals_are_refused() {
    let (mut hard, mut easy, now) = pair();
    let Some(Action::Signal(hello)) = hard.poll_action() else {
        panic!("a hello first")
    };
    easy.handle(&hello, now).unwrap();
    assert_eq!(easy.handle(&hello, now), Err(ProbeError::Replayed));
    // A go sent to the hard side (which never sprays) is refused.
    let go = keys().signal(Role::Acceptor, 50, &Signal::BirthdayGo { attempt: 1 });
    while easy.poll_action().is_some() {}
    hard.handle(
        &keys().signal(
            Role::Acceptor,
            49,
            &Signal::Hello {
                mapping: Mapping::EndpointIndependent,
                reflexive: Some(EASY_ADDR.parse().unwrap()),
                heard: true,
            },
        ),
        now,
    )
    .unwrap();
    assert!(hard.handle(&go, now).is_err());
    // More attempts than allowed are refused by the easy side.
    let too_many = keys().signal(Role::Dialer, 99, &Signal::BirthdayGo { attempt: 3 });
    assert!(easy.handle(&too_many, now).is_err());
}

#[test]
fn hellos_stop_once_heard_and_are_bounded_when_never_heard() {
    let now = Instant::now();
    let mut lonely = Punch::new(keys(), Role::Dialer, PunchConfig::default());
    lonely.set_local(Mapping::EndpointIndependent, None, now);
    let mut sent = 0;
    let mut t = now;
    while let Some(at) = lonely.poll_timeout() {
        t = at.max(t);
        lonely.handle_timeout(t);
        while let Some(action) = lonely.poll_action() {
            assert!(matches!(action, Action::Signal(_)));
            sent += 1;
        }
        assert!(t < now + Duration::from_secs(60), "hellos never stop");
    }
    assert_eq!(sent, 10);

    // Both start at once: each sends a hello, each answers the other's; then quiet.
    let (mut hard, mut easy, now) = pair();
    hard.config.birthday_attempts = 0;
    let actions = run(&mut hard, &mut easy, now, now + Duration::from_secs(30));
    assert!(actions.is_empty());
    assert_eq!((hard.hellos_sent, easy.hellos_sent), (2, 2));
}

#[test]
fn a_spray_probes_distinct_ports_at_the_rate_and_stops_at_the_cap() {
    let config = PunchConfig::default();
    let start = Instant::now();
    let ip: IpAddr = "203.0.113.10".parse().unwrap();
    let mut spray = Spray::new(ip, &config, start, [1; 32]);
    let mut ports = HashSet::new();
    let mut now = start;
    let mut by_second = [0u32; 20];
    while let Some(at) = spray.next_at() {
        assert!(at >= now, "next_at goes back");
        now = at;
        let due = spray.poll_due(now);
        assert!(!due.is_empty(), "next_at promised a probe at {now:?}");
        for addr in due {
            assert_eq!(addr.ip(), ip);
            assert!(addr.port() >= SPRAY_FIRST_PORT);
            assert!(ports.insert(addr.port()), "port {} twice", addr.port());
            by_second[(now - start).as_secs() as usize] += 1;
        }
    }
    assert_eq!(spray.sent(), 2000);
    assert_eq!(ports.len(), 2000);
    assert!(by_second.iter().all(|&n| n <= 200), "{by_second:?}");
    assert!(spray.poll_due(now + Duration::from_secs(60)).is_empty());
}

#[test]
fn a_deferred_attempt_does_not_count_and_comes_back() {
    let (mut hard, mut easy, now) = pair();
    let actions = run(&mut hard, &mut easy, now, now + Duration::from_secs(1));
    assert!(matches!(
        actions[..],
        [Action::OpenSockets { attempt: 1, .. }]
    ));
    hard.defer(1, now + Duration::from_secs(1));
    assert_eq!(hard.attempts(), 0);
    let later = now + Duration::from_secs(2);
    let actions = run(&mut hard, &mut easy, later, later);
    assert!(
        matches!(actions[..], [Action::OpenSockets { attempt: 1, .. }]),
        "{actions:?}"
    );
}

#[test]
fn a_reflexive_address_outside_the_handshake_or_not_public_is_no_target() {
    for (claimed, candidates) in [
        // Not among the peer's handshake candidates: a third party.
        ("192.0.2.99:5000", vec![EASY_ADDR]),
        // Among them, but private, loopback or ours.
        ("10.0.0.7:5000", vec!["10.0.0.7:5000"]),
        ("127.0.0.1:5000", vec!["127.0.0.1:5000"]),
        (HARD_ADDR, vec![HARD_ADDR]),
    ] {
        let now = Instant::now();
        let mut hard = Punch::new(keys(), Role::Dialer, PunchConfig::default());
        let candidates: Vec<SocketAddr> = candidates.iter().map(|c| c.parse().unwrap()).collect();
        hard.set_peer_candidates(&candidates, &[HARD_ADDR.parse().unwrap()]);
        hard.set_local(
            Mapping::EndpointDependent,
            Some(HARD_ADDR.parse().unwrap()),
            now,
        );
        let hello = Signal::Hello {
            mapping: Mapping::EndpointIndependent,
            reflexive: Some(claimed.parse().unwrap()),
            heard: true,
        };
        hard.handle(&keys().signal(Role::Acceptor, 1, &hello), now)
            .unwrap();
        hard.handle_timeout(now + Duration::from_secs(30));
        while let Some(action) = hard.poll_action() {
            assert!(matches!(action, Action::Signal(_)), "{claimed}: {action:?}");
        }
    }
}

#[test]
fn a_stalled_spray_resumes_at_its_rate_not_in_one_burst() {
    let config = PunchConfig::default();
    let start = Instant::now();
    let mut spray = Spray::new("203.0.113.10".parse().unwrap(), &config, start, [2; 32]);
    assert_eq!(spray.poll_due(start).len(), 1);
    // The driver was blocked for 8 s: no catch-up burst.
    let later = start + Duration::from_secs(8);
    assert_eq!(spray.poll_due(later).len() as u32, SPRAY_BURST);
    assert!(spray.poll_due(later).is_empty());
    let second = later + Duration::from_secs(1);
    let sent = spray.poll_due(second).len() as u32;
    assert!(
        sent <= config.probes_per_second + 1,
        "{sent} in the second after"
    );
}

/// Runs both ends until `until`, delivering signals at once; notes when each end asked for
/// what.
fn run_timed(
    dialer: &mut Punch,
    acceptor: &mut Punch,
    mut now: Instant,
    until: Instant,
) -> Vec<(&'static str, Duration, Action)> {
    let start = now;
    let mut seen = Vec::new();
    loop {
        for _ in 0..4 {
            for action in relay(dialer, acceptor, now) {
                seen.push(("dialer", now - start, action));
            }
            for action in relay(acceptor, dialer, now) {
                seen.push(("acceptor", now - start, action));
            }
        }
        let next = [dialer.poll_timeout(), acceptor.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(at) if at <= until => {
                now = at.max(now);
                dialer.handle_timeout(now);
                acceptor.handle_timeout(now);
            }
            _ => return seen,
        }
    }
}

#[test]
fn plain_probing_gets_two_timed_retries_the_dialer_half_a_relayed_rtt_after_its_sync() {
    let now = Instant::now();
    let mut dialer = Punch::new(keys(), Role::Dialer, PunchConfig::default());
    let mut acceptor = Punch::new(keys(), Role::Acceptor, PunchConfig::default());
    dialer.set_relay_rtt(Duration::from_millis(80));
    dialer.set_local(
        Mapping::EndpointIndependent,
        Some(HARD_ADDR.parse().unwrap()),
        now,
    );
    acceptor.set_local(
        Mapping::EndpointIndependent,
        Some(EASY_ADDR.parse().unwrap()),
        now,
    );
    let seen = run_timed(
        &mut dialer,
        &mut acceptor,
        now,
        now + Duration::from_secs(60),
    );
    let at = |who: &str, what: Action| -> Vec<u128> {
        seen.iter()
            .filter(|(w, _, a)| *w == who && *a == what)
            .map(|(_, t, _)| t.as_millis())
            .collect()
    };
    assert_eq!(at("dialer", Action::HoldBack), [0]);
    assert_eq!(at("acceptor", Action::HoldBack), [0]);
    // The sync goes out at 1 s and 5 s; the acceptor (signals delivered at once here) probes
    // on receipt, the dialer 40 ms later, when its sync would have crossed the relay.
    assert_eq!(at("acceptor", Action::Retry), [1000, 5000]);
    assert_eq!(at("dialer", Action::Retry), [1040, 5040]);
}

#[test]
fn no_timed_retry_once_direct_or_between_two_endpoint_dependent_nats() {
    let now = Instant::now();
    let mut dialer = Punch::new(keys(), Role::Dialer, PunchConfig::default());
    let mut acceptor = Punch::new(keys(), Role::Acceptor, PunchConfig::default());
    dialer.set_local(Mapping::EndpointIndependent, None, now);
    acceptor.set_local(Mapping::EndpointIndependent, None, now);
    run_timed(
        &mut dialer,
        &mut acceptor,
        now,
        now + Duration::from_millis(500),
    );
    dialer.set_direct(true, now);
    acceptor.set_direct(true, now);
    let seen = run_timed(
        &mut dialer,
        &mut acceptor,
        now,
        now + Duration::from_secs(60),
    );
    assert!(seen.is_empty(), "{seen:?}");

    let mut dialer = Punch::new(keys(), Role::Dialer, PunchConfig::default());
    let mut acceptor = Punch::new(keys(), Role::Acceptor, PunchConfig::default());
    dialer.set_local(Mapping::EndpointDependent, None, now);
    acceptor.set_local(Mapping::EndpointDependent, None, now);
    let seen = run_timed(
        &mut dialer,
        &mut acceptor,
        now,
        now + Duration::from_secs(60),
    );
    assert!(seen.is_empty(), "{seen:?}");
}
