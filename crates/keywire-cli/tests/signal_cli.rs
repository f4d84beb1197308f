//! `keywire signal listen` / `send` against a real mosquitto broker: output, and exit codes.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto() -> PathBuf {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("`mosquitto` not found: install it (apt-get install mosquitto) to run this test")
}

fn start_broker(dir: &Path) -> (Guard, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n"
        ),
    )
    .unwrap();
    let child = Command::new(mosquitto())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    (guard, port)
}

fn keywire(dir: &Path, key: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keywire"));
    c.arg("--key")
        .arg(dir.join(key))
        .arg("--network")
        .arg("cli signal test");
    c
}

/// Starts `keywire --json signal listen --count 1 <extra>` and waits until it is listening;
/// returns the process and the "listening" line.
fn start_listener(dir: &Path, key: &str, brokers: &str, extra: &[&str]) -> (Guard, String) {
    let mut listener = keywire(dir, key)
        .args([
            "--json",
            "signal",
            "listen",
            "--count",
            "1",
            "--brokers",
            brokers,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(listener.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("\"listening\""), "{line}");
    (Guard(listener), line)
}

/// Asserts that `sent` succeeded, then returns the one message the listener printed.
fn received_by(mut listener: Guard, sent: &std::process::Output) -> serde_json::Value {
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let mut stdout = String::new();
    std::io::Read::read_to_string(listener.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(listener.0.wait().unwrap().success());
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn listen_prints_json_and_send_exits_zero_only_when_acknowledged() {
    let dir = std::env::temp_dir().join(format!("kw-signal-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_broker, port) = start_broker(&dir);
    let brokers = format!("127.0.0.1:{port}");
    let out = keywire(&dir, "b.key").arg("id").output().unwrap();
    let b_id = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let (listener, _) = start_listener(&dir, "b.key", &brokers, &[]);
    let sent = keywire(&dir, "a.key")
        .args([
            "signal",
            "send",
            "--brokers",
            &brokers,
            &b_id,
            "hello by key",
        ])
        .output()
        .unwrap();
    let msg = received_by(listener, &sent);
    assert_eq!(msg["payload"], "hello by key");
    assert_eq!(msg["kind"], "data");

    // Nobody listens any more: not acknowledged, exit code 1.
    let unacked = keywire(&dir, "a.key")
        .args([
            "signal",
            "send",
            "--timeout",
            "1",
            "--brokers",
            &brokers,
            &b_id,
            "nobody",
        ])
        .output()
        .unwrap();
    assert_eq!(unacked.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unacked.stderr).contains("not acknowledged"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compat_sidewire_id_listen_and_send() {
    let dir = std::env::temp_dir().join(format!("kw-sidewire-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_broker, port) = start_broker(&dir);
    let brokers = format!("127.0.0.1:{port}");
    let id = |key: &str| {
        let out = keywire(&dir, key)
            .args(["id", "--compat", "sidewire"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let b_key = id("b.key");
    assert_eq!(b_key.len(), 66, "{b_key}");
    assert!(
        b_key.starts_with("02") || b_key.starts_with("03"),
        "{b_key}"
    );
    assert_eq!(id("b.key"), b_key, "created once, then the same key");
    assert_ne!(id("a.key"), b_key, "each node key has its own sidewire key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.join("b.sidewire.key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    let (listener, line) = start_listener(&dir, "b.key", &brokers, &["--compat", "sidewire"]);
    assert!(line.contains(&b_key), "{line}");

    let send = |text: &str| {
        keywire(&dir, "a.key")
            .args(["signal", "send", "--compat", "sidewire", "--timeout", "3"])
            .args(["--brokers", &brokers, &b_key, text])
            .output()
            .unwrap()
    };
    let msg = received_by(listener, &send("hello sidewire"));
    assert_eq!(msg["payload"], "hello sidewire");
    assert_eq!(msg["from"].as_str().unwrap(), id("a.key"));

    // Refused before anything is published: non-ASCII text, a key that is not 66 hex digits.
    let bad = send("héllo");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ASCII"));
    let bad_key = keywire(&dir, "a.key")
        .args([
            "signal",
            "send",
            "--compat",
            "sidewire",
            "--brokers",
            &brokers,
            "abcd",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(bad_key.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_key.stderr).contains("66 hex digits"));
    let _ = std::fs::remove_dir_all(&dir);
}
