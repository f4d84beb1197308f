//! Runs tests/sidewire/peer.py — a peer built on sidewire 0.1.9's own Router — as a child
//! process, for `keywire bench signal` and the interop test (which includes this file).

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context};
use keywire::signal::sidewire::SidewirePublicKey;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The repository's tests/sidewire directory (from where this was built).
pub fn sidewire_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/sidewire")
}

/// The Python with sidewire 0.1.9: `$KEYWIRE_SIDEWIRE_PYTHON`, else the venv that
/// tests/sidewire/setup-venv.sh makes; an error that says how to get it otherwise.
pub fn venv_python() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("KEYWIRE_SIDEWIRE_PYTHON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let python = sidewire_dir().join(".venv/bin/python");
    if !python.exists() {
        bail!(
            "sidewire 0.1.9 is not installed at {}: run tests/sidewire/setup-venv.sh \
             (.ci/install-deps.sh runs it) or set KEYWIRE_SIDEWIRE_PYTHON",
            python.display()
        );
    }
    Ok(python)
}

/// What a peer does after "go" (see peer.py).
#[derive(Debug, Clone, Copy)]
pub enum PeerMode {
    /// Send `count` messages to the peer (10 in flight) and answer each message from it.
    // Used by the interop test (crates/keywire/tests/sidewire_interop.rs includes this file).
    #[allow(dead_code)]
    Interop,
    /// Send `count` messages to the peer one at a time, timing each send to its ACK.
    Bench,
    /// Only acknowledge (and never answer) until its stdin closes.
    Listen,
}

pub struct SidewirePeer {
    /// The peer's own key.
    pub key: SidewirePublicKey,
    /// The brokers its Router subscribed at.
    pub subscribed: Vec<String>,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl SidewirePeer {
    /// Starts a peer on `brokers` (host:port, comma-separated) that will talk to `peer`, and
    /// waits for its `ready` event.
    pub async fn spawn(
        python: &std::path::Path,
        brokers: &str,
        peer: Option<&SidewirePublicKey>,
        count: usize,
        mode: PeerMode,
    ) -> anyhow::Result<Self> {
        let mode = match mode {
            PeerMode::Interop => "interop",
            PeerMode::Bench => "bench",
            PeerMode::Listen => "listen",
        };
        let mut command = Command::new(python);
        command.arg(sidewire_dir().join("peer.py")).args([
            "--brokers",
            brokers,
            "--count",
            &count.to_string(),
            "--mode",
            mode,
        ]);
        if let Some(peer) = peer {
            command.args(["--peer", &peer.to_string()]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the sidewire peer with {}", python.display()))?;
        let stdout = child.stdout.take().context("the peer's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = next_event(&mut lines, "ready").await?;
        let key = ready["key"]
            .as_str()
            .context("ready without key")?
            .parse()
            .context("the peer's key")?;
        let subscribed = ready["subscribed"]
            .as_array()
            .map(|hosts| {
                hosts
                    .iter()
                    .filter_map(|h| h.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            key,
            subscribed,
            child,
            lines,
        })
    }

    /// Tells the peer to start.
    pub async fn go(&mut self) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("the peer's stdin")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Waits for the `done` event.
    pub async fn done(&mut self) -> anyhow::Result<serde_json::Value> {
        next_event(&mut self.lines, "done").await
    }

    /// Closes the peer's stdin (a listening peer then exits) and waits for it to exit.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        self.child.wait().await?;
        Ok(())
    }
}

/// The next event called `name` from the peer's output; other lines are skipped.
async fn next_event(
    lines: &mut Lines<BufReader<ChildStdout>>,
    name: &str,
) -> anyhow::Result<serde_json::Value> {
    loop {
        let Some(line) = lines.next_line().await? else {
            bail!("the sidewire peer exited before '{name}'");
        };
        let Some(json) = line.strip_prefix("SWPEER ") else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_str(json)?;
        if value["event"] == "error" {
            bail!("the sidewire peer failed: {}", value["error"]);
        }
        if value["event"] == name {
            return Ok(value);
        }
    }
}
