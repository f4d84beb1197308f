//! Helpers shared by the CLI process tests.
#![allow(dead_code)]

use std::process::Child;
use std::time::{Duration, Instant};

/// Waits for `child` to exit, failing the test if it runs past `limit`.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
