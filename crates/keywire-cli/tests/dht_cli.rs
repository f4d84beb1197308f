//! `keywire dht lookup` and `keywire dht status` against a small DHT running in this process.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use keywire::dht::{Dht, DhtConfig, ModeSetting};
use keywire::{Endpoint, EndpointConfig, SecretKey};

/// The JSON of a `keywire --json dht status` run that must have succeeded and joined.
fn joined_status(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["joined"], true);
    status
}

fn node(n: u8, bootstrap: Option<SocketAddr>) -> (Endpoint, Dht, SocketAddr) {
    let config = EndpointConfig::new(SecretKey::generate(&mut rand::rngs::OsRng))
        .bind_addr(format!("127.{n}.0.1:0").parse().unwrap());
    let endpoint = Endpoint::bind(config).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let mut dht_config = DhtConfig {
        bootstrap: bootstrap.into_iter().collect(),
        ..DhtConfig::default()
    };
    dht_config.kad.mode = ModeSetting::Server;
    let dht = Dht::spawn(&endpoint, dht_config);
    (endpoint, dht, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_and_status_print_json() {
    let mut nodes = Vec::new();
    let mut first = None;
    for n in 80..84u8 {
        let (endpoint, dht, addr) = node(n, first);
        dht.publish_record(vec![addr], vec![]).await.unwrap();
        first.get_or_insert(addr);
        nodes.push((endpoint, dht, addr));
    }
    for _ in 0..100 {
        let mut ready = true;
        for (_, dht, _) in &nodes {
            ready &= dht.status().await.unwrap().own_record_seq.is_some();
        }
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = std::env::temp_dir().join(format!("kw-dht-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = nodes[3].0.node_id().to_string();
    let (bootstrap, want) = (nodes[0].2, nodes[3].2);
    let dir2 = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_keywire"))
            .arg("--key")
            .arg(dir2.join("key"))
            .args(["--json", "dht", "lookup", &target, "--bind", "127.90.0.1:0"])
            .arg("--bootstrap")
            .arg(bootstrap.to_string())
            .arg("--table")
            .arg(dir2.join("table.bin"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["addrs"][0], want.to_string());
    assert!(dir.join("table.bin").exists(), "the routing table is saved");

    // Status from the saved table alone.
    let dir2 = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_keywire"))
            .arg("--key")
            .arg(dir2.join("key"))
            .args([
                "--json",
                "dht",
                "status",
                "--bind",
                "127.90.0.1:0",
                "--table",
            ])
            .arg(dir2.join("table.bin"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let status = joined_status(&out);
    assert!(status["contacts"].as_u64().unwrap() >= 3);
    let _ = std::fs::remove_dir_all(dir);
}

/// `keywire dht serve`: prints `dht-serving`, answers a `dht status` join, exits 0 on SIGTERM.
#[test]
fn serve_answers_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = std::env::temp_dir().join(format!("kw-dht-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_keywire"))
        .arg("--key")
        .arg(dir.join("server.key"))
        .args(["--json", "dht", "serve", "--bind", "127.91.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let serving: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(serving["event"], "dht-serving");
    assert!(serving["node_id"].as_str().unwrap().starts_with("kw1"));
    let addr = serving["addr"].as_str().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_keywire"))
        .arg("--key")
        .arg(dir.join("client.key"))
        .args(["--json", "dht", "status", "--bind", "127.91.0.2:0"])
        .args(["--bootstrap", &addr, "--table"])
        .arg(dir.join("table.bin"))
        .output()
        .unwrap();
    let status = joined_status(&out);
    assert!(status["contacts"].as_u64().unwrap() >= 1);
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(server.wait().unwrap().success(), "exits 0 on SIGTERM");
    let _ = std::fs::remove_dir_all(dir);
}
