//! `cargo run --release -p keywire-sim --example dht -- NODES LOOKUPS [WARMUP_MIN] [WINDOW_MIN]`
use std::time::Duration;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let mut s = keywire_sim::dht::DhtScenario::churn10(
        *args.first().unwrap_or(&1000) as usize,
        *args.get(1).unwrap_or(&1000) as usize,
    );
    if let Some(w) = args.get(2) {
        s.warmup = Duration::from_secs(w * 60);
    }
    if let Some(w) = args.get(3) {
        s.lookup_window = Duration::from_secs(w * 60);
    }
    let t = std::time::Instant::now();
    let report = keywire_sim::dht::run(&s);
    println!("{report}\n{:.1} s", t.elapsed().as_secs_f64());
}
