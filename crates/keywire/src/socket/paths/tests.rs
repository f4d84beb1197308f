//! Path table tests: virtual addresses, relayed routes, bounds, switches and aliases.

use super::*;

fn real(port: u16) -> SocketAddr {
    SocketAddr::new([192, 0, 2, 1].into(), port)
}

#[test]
fn one_virtual_address_per_real_address() {
    let table = PathTable::new(8, Duration::from_secs(60));
    let now = Instant::now();
    let v = table.for_dial(real(1), now).unwrap();
    assert!(is_virtual(&v));
    assert!(!is_virtual(&real(1)));
    assert_eq!(table.for_dial(real(1), now), Ok(v));
    assert_eq!(table.for_source(real(1), false, now), Ok(v));
    assert_eq!(table.real_for(&v), Some(real(1)));
    let w = table.for_source(real(2), true, now).unwrap();
    assert_ne!(v, w);
}

#[test]
fn relay_frames_only_from_our_gates_with_our_session() {
    let table = PathTable::new(8, Duration::from_secs(60));
    let now = Instant::now();
    let gate = real(7);
    assert_eq!(
        table.for_relayed(gate, 5, 1, true, now),
        Err(Refusal::NotOurGate)
    );
    table.add_gate(gate, 5, Some(real(70)), Arc::default());
    assert_eq!(
        table.for_relayed(gate, 6, 1, true, now),
        Err(Refusal::NotOurGate)
    );
    assert_eq!(
        table.for_relayed(gate, 5, 1, false, now),
        Err(Refusal::NotInitial)
    );
    let v = table.for_relayed(gate, 5, 1, true, now).unwrap();
    assert_eq!(table.for_relayed(gate, 5, 1, false, now), Ok(v));
    assert_eq!(
        table.route_for(&v),
        Some((Route::Relayed { gate, channel: 1 }, Some(5)))
    );
    assert_eq!(table.real_for(&v), Some(gate));
    // Another channel through the same gate is another peer.
    assert_ne!(table.for_relayed(gate, 5, 2, true, now).unwrap(), v);
    table.remove_gate(&gate);
    assert_eq!(
        table.route_for(&v),
        None,
        "no session at the gate: nothing to send with"
    );
}

#[test]
fn only_initial_packets_open_paths() {
    let table = PathTable::new(8, Duration::from_secs(60));
    assert_eq!(
        table.for_source(real(3), false, Instant::now()),
        Err(Refusal::NotInitial)
    );
    assert_eq!(table.len(), 0);
}

#[test]
fn bounded_with_stale_eviction() {
    let table = PathTable::new(2, Duration::from_secs(60));
    let t0 = Instant::now();
    table.for_source(real(1), true, t0).unwrap();
    table
        .for_source(real(2), true, t0 + Duration::from_secs(30))
        .unwrap();
    // Full and nothing stale yet.
    assert_eq!(
        table.for_source(real(3), true, t0 + Duration::from_secs(40)),
        Err(Refusal::Full)
    );
    // Entry 1 is stale at t0 + 61 s: it goes, entry 3 comes.
    assert!(table
        .for_source(real(3), true, t0 + Duration::from_secs(61))
        .is_ok());
    assert_eq!(table.len(), 2);
    assert_eq!(
        table.for_source(real(1), false, t0 + Duration::from_secs(61)),
        Err(Refusal::NotInitial)
    );
}

#[test]
fn switching_moves_the_real_address_and_signals() {
    let table = PathTable::new(8, Duration::from_secs(60));
    let now = Instant::now();
    let v = table.for_dial(real(1), now).unwrap();
    let signal = table.switch_signal(&v).unwrap();
    assert_eq!(signal.generation(), 0);
    let mut watch = signal.subscribe();
    assert!(table.switch(v, Route::Direct(real(9)), now));
    assert_eq!(table.real_for(&v), Some(real(9)));
    assert_eq!(table.for_source(real(9), false, now), Ok(v));
    assert_eq!(
        table.for_source(real(1), false, now),
        Ok(v),
        "the old route still receives"
    );
    assert_eq!(table.aliases(&v), [Route::Direct(real(1))]);
    assert_eq!(signal.generation(), 1);
    assert_eq!(signal.switched_at(), Some(now));
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), Route::Direct(real(9)));
    // Switching back makes the alias the route again, and no duplicate alias remains.
    assert!(table.switch(v, Route::Direct(real(1)), now));
    assert_eq!(table.aliases(&v), [Route::Direct(real(9))]);
    // Receive-only aliases are bounded; the oldest goes.
    for port in 100..100 + MAX_ALIASES as u16 + 2 {
        assert!(table.accept_from(v, Route::Direct(real(port))));
    }
    assert_eq!(table.aliases(&v).len(), MAX_ALIASES);
    assert_eq!(
        table.for_source(real(100), false, now),
        Err(Refusal::NotInitial)
    );
    assert_eq!(
        table.for_source(real(101 + MAX_ALIASES as u16), false, now),
        Ok(v)
    );
    // A real address in use by another path (here as an alias) cannot be taken over.
    let w = table.for_dial(real(5), now).unwrap();
    assert!(!table.switch(w, Route::Direct(real(101 + MAX_ALIASES as u16)), now));
    assert!(!table.accept_from(w, Route::Direct(real(1))));
}
