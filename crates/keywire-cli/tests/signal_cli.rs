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

#[test]
fn listen_prints_json_and_send_exits_zero_only_when_acknowledged() {
    let dir = std::env::temp_dir().join(format!("kw-signal-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_broker, port) = start_broker(&dir);
    let brokers = format!("127.0.0.1:{port}");
    let out = keywire(&dir, "b.key").arg("id").output().unwrap();
    let b_id = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let mut listener = keywire(&dir, "b.key")
        .args([
            "--json",
            "signal",
            "listen",
            "--count",
            "1",
            "--brokers",
            &brokers,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for "listening" on stderr before sending.
    let mut err = BufReader::new(listener.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("\"listening\""), "{line}");
    let listener = Guard(listener);
    drop(err);

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
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    let mut listener = listener;
    let mut stdout = String::new();
    std::io::Read::read_to_string(listener.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(listener.0.wait().unwrap().success());
    let msg: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
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
