//! How the CLI reports: plain lines for people, one JSON object per line for programs.

use std::io::Write;
use std::process::ExitCode;

/// Prints an error as one line (or one JSON object) on stderr and returns the failure code.
pub fn fail(json: bool, error: &anyhow::Error) -> ExitCode {
    // `{:#}` joins the error chain on one line: "connect: wrong peer at ...: ...".
    let message = format!("{error:#}");
    if json {
        err_line(&serde_json::json!({ "event": "error", "error": message }).to_string());
    } else {
        err_line(&format!("keywire: error: {message}"));
    }
    ExitCode::FAILURE
}

/// Writes a JSON object as one line to stderr.
pub fn event(value: serde_json::Value) {
    err_line(&value.to_string());
}

/// Writes one line to stderr. Unlike `eprintln!`, a closed stderr is ignored: a listener whose
/// log reader went away must keep serving its connection.
pub fn err_line(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// Writes one line to stdout. A closed stdout (`keywire demo | head`) is not an error worth a
/// panic: the reader has what it wanted.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}
