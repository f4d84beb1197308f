//! `keywire bench relay` as a process: a tiny run prints every figure as JSON, in bounded time.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn a_tiny_relay_bench_prints_every_figure() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keywire"))
        .args(["bench", "relay", "--quick", "--size", "1048576"])
        .args(["--rounds", "1", "--trials", "1", "--rtt-ms", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("bench relay still running after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "exit {status}: {err}");

    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = lines.iter().map(|l| l["bench"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "relay.throughput_ratio.loopback_1mib",
            "relay.mib_per_s.loopback_1mib",
            "relay.tcp_throughput_ratio.loopback_1mib",
            "relay.tcp_mib_per_s.loopback_1mib",
            "relay.first_byte_rtt.cold_rtt10ms",
            "relay.first_byte_rtt.registered_rtt10ms",
            "relay.to_direct_relayed_rtt.rtt10ms",
            "relay.switch_recovery_rtt.rtt10ms",
        ]
    );
    let (recovery, others) = lines.split_last().unwrap();
    for line in others {
        let value = line["value"].as_f64().unwrap();
        assert!(value.is_finite() && value > 0.0, "{line}");
    }
    // Recovery may take zero windows (goodput never dipped), never a negative or missing count.
    let windows = recovery["value"].as_f64().unwrap();
    assert!(windows.is_finite() && windows >= 0.0, "{recovery}");
    assert!(
        recovery["steady_mib_per_s"].as_f64().unwrap() > 0.0,
        "{recovery}"
    );
    assert!(["PASS", "MISS"].contains(&recovery["verdict"].as_str().unwrap()));
    // Set-up through a 10 ms RTT proxy takes at least one round trip (a figure under 1 would
    // mean the proxy was bypassed).
    assert!(lines[4]["value"].as_f64().unwrap() >= 1.0, "{}", lines[4]);
    // The TCP-relayed figure names its UDP-relayed baseline.
    assert!(lines[3]["baseline"].as_f64().unwrap() > 0.0, "{}", lines[3]);
    assert!(["PASS", "MISS"].contains(&lines[0]["verdict"].as_str().unwrap()));
}
