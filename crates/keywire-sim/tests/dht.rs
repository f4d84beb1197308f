//! The DHT at 1,000 nodes under the churn: same seed, same figures.

use keywire_sim::dht::{run, DhtScenario};

#[test]
fn thousand_nodes_with_churn_find_fresh_records() {
    let scenario = DhtScenario::churn10(1000, 1000);
    let started = std::time::Instant::now();
    let report = run(&scenario);
    eprintln!("{report} ({:.1} s)", started.elapsed().as_secs_f64());
    assert!(report.lookups >= 950, "{report}");
    assert!(report.success_rate() >= 0.99, "{report}");
    assert!(report.hops_median <= 4, "{report}");
    assert!(
        report.pubsub_delivered * 10 >= report.pubsub_expected * 9,
        "{report}"
    );
    assert!(report.servers * 10 >= report.nodes * 9, "{report}");
}

#[test]
fn same_seed_same_result() {
    let mut scenario = DhtScenario::churn10(200, 100);
    scenario.warmup = std::time::Duration::from_secs(1200);
    scenario.lookup_window = std::time::Duration::from_secs(300);
    let a = run(&scenario);
    let b = run(&scenario);
    assert_eq!(format!("{a}"), format!("{b}"));
}
