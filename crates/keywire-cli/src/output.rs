//! How the CLI reports: plain lines for people, one JSON object per line for programs.

use std::io::Write;
use std::process::ExitCode;

/// Prints an error as one line (or one JSON object) on stderr and returns the failure code.
pub fn fail(json: bool, error: &anyhow::Error) -> ExitCode {
    // `{:#}` joins the error chain on one line: "connect: wrong peer at ...: ...".
    let message = format!("{error:#}");
    if json {
        eprintln!(
            "{}",
            serde_json::json!({ "event": "error", "error": message })
        );
    } else {
        eprintln!("keywire: error: {message}");
    }
    ExitCode::FAILURE
}

/// Writes a JSON object as one line to stderr.
pub fn event(value: serde_json::Value) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{value}");
}

/// Writes one line to stdout. A closed stdout (`keywire demo | head`) is not an error worth a
/// panic: the reader has what it wanted.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}
