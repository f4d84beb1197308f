//! The `keywire` binary as users run it: real processes, real sockets on loopback.

mod common;

use common::wait_with_timeout;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn keywire() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keywire"));
    // Keep the user's environment from choosing keys or networks for the tests.
    cmd.env_remove("KEYWIRE_KEY")
        .env_remove("KEYWIRE_NETWORK")
        .env_remove("RUST_LOG");
    cmd
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keywire-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run keywire")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Kills a child process on drop, so a failed assertion leaves nothing running.
struct Reaper(Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn id_prints_only_the_id_and_keeps_it() {
    let dir = temp_dir("id");
    let key = dir.join("keys").join("secret.key");
    let first = run(keywire().arg("--key").arg(&key).arg("id"));
    assert!(first.status.success(), "{}", stderr_of(&first));
    let text = String::from_utf8(first.stdout).unwrap();
    assert_eq!(
        text.lines().count(),
        1,
        "stdout must carry only the id: {text:?}"
    );
    let id: keywire_proto::NodeId = text.trim().parse().expect("a valid node id");
    let second = run(keywire().env("KEYWIRE_KEY", &key).arg("id"));
    assert_eq!(
        String::from_utf8(second.stdout).unwrap().trim(),
        id.to_string()
    );
    let json = run(keywire().arg("--key").arg(&key).args(["--json", "id"]));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["node_id"], id.to_string());
    std::fs::remove_dir_all(dir).unwrap();
}

#[cfg(unix)]
#[test]
fn an_open_key_file_is_refused_in_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("open-key");
    let key = dir.join("secret.key");
    assert!(run(keywire().arg("--key").arg(&key).arg("id"))
        .status
        .success());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = std::fs::read(&key).unwrap();
    let out = run(keywire().arg("--key").arg(&key).arg("id"));
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "one clear line: {err:?}");
    assert!(
        err.starts_with("keywire: error: ") && err.contains("chmod 600"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "the key file must not be replaced"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_tickets_give_one_clear_line() {
    for (ticket, expected) in [
        ("kwt1qqqq", "invalid ticket"),
        ("hello", "expected text starting with \"kwt1\""),
        ("kw1qqqq", "not a valid node id"),
        (
            // A node id is dialed by key, which needs some way to find the node.
            "kw1cz4a0ckg02fuhyufzx2cjhn4mn8fx3jaqun75nv68spfqggn3sgqq6r386",
            "a bare node id needs a way to find it",
        ),
    ] {
        let out = run(keywire().args(["connect", "--no-book", ticket]));
        assert_eq!(out.status.code(), Some(1));
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(err.contains(expected), "{ticket}: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn help_everywhere() {
    for args in [
        &["--help"][..],
        &["id", "--help"],
        &["listen", "--help"],
        &["connect", "--help"],
        &["demo", "--help"],
        &["ticket", "--help"],
    ] {
        let out = run(keywire().args(args));
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn demo_runs_with_nothing_installed() {
    let out = run(keywire().args(["demo", "--bytes", "200000"]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("checksums match both ways"), "{text}");
    assert!(text.contains("wrong peer"), "{text}");
    assert!(text.contains("dialed alice by her key alone"), "{text}");
}

/// Writes `len` bytes of a repeatable, non-trivial pattern to a file.
fn pattern_file(path: &Path, len: usize, seed: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = seed;
    let mut block = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for b in block.iter_mut() {
            // xorshift: cheap, and unlike zeros it catches reordering and truncation.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        let n = left.min(block.len());
        file.write_all(&block[..n]).unwrap();
        left -= n;
    }
}

#[test]
fn fifty_mib_through_listen_and_connect_processes() {
    let dir = temp_dir("pipe");
    let (to_listener, to_connector) = (dir.join("a.bin"), dir.join("b.bin"));
    pattern_file(&to_listener, 50 << 20, 1);
    pattern_file(&to_connector, 3 << 20, 2);

    let mut listener = Reaper(Some(
        keywire()
            .arg("--key")
            .arg(dir.join("listener.key"))
            .args(["--network", "cli-test", "listen", "--bind", "127.0.0.1:0"])
            .stdin(std::fs::File::open(&to_connector).unwrap())
            .stdout(std::fs::File::create(dir.join("listener.out")).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let mut stderr = BufReader::new(listener.0.as_mut().unwrap().stderr.take().unwrap());
    let mut ticket = String::new();
    stderr.read_line(&mut ticket).unwrap();
    let ticket = ticket.trim().to_string();
    assert!(
        ticket.starts_with("kwt1"),
        "first stderr line must be the ticket: {ticket:?}"
    );
    // Drain the rest of stderr so the listener never blocks on it.
    let listener_log = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });

    let mut connector = Reaper(Some(
        keywire()
            .arg("--key")
            .arg(dir.join("connector.key"))
            .args(["--network", "cli-test", "--json", "connect", &ticket])
            .stdin(std::fs::File::open(&to_listener).unwrap())
            .stdout(std::fs::File::create(dir.join("connector.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("connector.err")).unwrap())
            .spawn()
            .unwrap(),
    ));
    let connector_status =
        wait_with_timeout(connector.0.as_mut().unwrap(), Duration::from_secs(120));
    connector.0 = None;
    let listener_status = wait_with_timeout(listener.0.as_mut().unwrap(), Duration::from_secs(30));
    listener.0 = None;
    let connector_err = std::fs::read_to_string(dir.join("connector.err")).unwrap();
    assert!(
        connector_status.success(),
        "connect failed: {connector_err}"
    );
    assert!(
        listener_status.success(),
        "listen failed: {}",
        listener_log.join().unwrap()
    );
    assert!(
        std::fs::read(dir.join("listener.out")).unwrap() == std::fs::read(&to_listener).unwrap(),
        "listener's stdout differs from connector's stdin"
    );
    assert!(
        std::fs::read(dir.join("connector.out")).unwrap() == std::fs::read(&to_connector).unwrap(),
        "connector's stdout differs from listener's stdin"
    );
    let done: Vec<serde_json::Value> = connector_err
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let done = done
        .iter()
        .find(|v| v["event"] == "done")
        .expect("a done event");
    assert_eq!(done["bytes_sent"], 50 << 20);
    assert_eq!(done["bytes_received"], 3 << 20);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn different_networks_fail_with_a_clear_error() {
    let dir = temp_dir("netid");
    let mut listener = Reaper(Some(
        keywire()
            .arg("--key")
            .arg(dir.join("l.key"))
            .args(["--network", "one", "listen", "--bind", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let mut ticket = String::new();
    BufReader::new(listener.0.as_mut().unwrap().stderr.take().unwrap())
        .read_line(&mut ticket)
        .unwrap();
    let out = run(keywire().arg("--key").arg(dir.join("c.key")).args([
        "--network",
        "two",
        "connect",
        ticket.trim(),
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("another network id"),
        "{}",
        stderr_of(&out)
    );
    drop(listener);
    std::fs::remove_dir_all(dir).unwrap();
}
