//! Runs tests/sidewire/peer.py (sidewire 0.1.9's own Router) as a child process.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;

use keywire::signal::sidewire::SidewirePublicKey;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The repository's tests/sidewire directory.
pub fn sidewire_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/sidewire")
}

/// The venv's python, or a panic that says how to make it.
pub fn venv_python() -> PathBuf {
    let python = sidewire_dir().join(".venv/bin/python");
    assert!(
        python.exists(),
        "the sidewire interop test needs sidewire 0.1.9 in {}: run tests/sidewire/setup-venv.sh \
         (.ci/install-deps.sh runs it)",
        python.display()
    );
    python
}

pub struct SidewirePeer {
    pub key: SidewirePublicKey,
    pub subscribed: Vec<String>,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl SidewirePeer {
    /// Starts the peer and waits for its `ready` event.
    pub async fn spawn(brokers: &str, peer: &SidewirePublicKey, count: usize, mode: &str) -> Self {
        let mut child = Command::new(venv_python())
            .arg(sidewire_dir().join("peer.py"))
            .args(["--brokers", brokers, "--peer", &peer.to_string()])
            .args(["--count", &count.to_string(), "--mode", mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the sidewire peer");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut peer = Self {
            key: peer.clone(),
            subscribed: Vec::new(),
            child,
            lines,
        };
        let ready = peer.event("ready").await;
        peer.key = ready["key"].as_str().unwrap().parse().expect("peer key");
        peer.subscribed = ready["subscribed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_owned())
            .collect();
        peer
    }

    /// Tells the peer to start.
    pub async fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for the `done` event.
    pub async fn done(&mut self) -> serde_json::Value {
        self.event("done").await
    }

    async fn event(&mut self, name: &str) -> serde_json::Value {
        loop {
            let line = self
                .lines
                .next_line()
                .await
                .expect("read the sidewire peer")
                .unwrap_or_else(|| panic!("the sidewire peer exited before '{name}'"));
            let Some(json) = line.strip_prefix("SWPEER ") else {
                continue;
            };
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            if value["event"] == "error" {
                panic!("the sidewire peer failed: {}", value["error"]);
            }
            if value["event"] == name {
                return value;
            }
        }
    }
}
