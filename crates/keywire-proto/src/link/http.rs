//! The HTTP/1.1 exchanges a link may start with: the WebSocket upgrade (RFC 6455 §4) and the
//! CONNECT request to a proxy (RFC 9110 §9.3.6). Only the head is parsed: request or status
//! line and headers, up to [`MAX_HEAD`] bytes; whatever follows belongs to the link.
//!
//! The `Sec-WebSocket-Accept` value is [`super::websocket::accept_value`].

/// Longest request or response head accepted; a longer one is refused.
pub const MAX_HEAD: usize = 8192;

/// Why an HTTP head is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// No end of head within [`MAX_HEAD`] bytes.
    #[error("HTTP head longer than {MAX_HEAD} bytes")]
    TooLong,
    /// Not valid HTTP/1.1 (bad request or status line, a header without a colon, not UTF-8).
    #[error("malformed HTTP head")]
    Malformed,
    /// A request that is not a WebSocket upgrade (no `Upgrade: websocket`, no key, another
    /// version).
    #[error("not a WebSocket upgrade: {0}")]
    NotUpgrade(&'static str),
    /// A response with another status than the one required; the status code.
    #[error("HTTP status {0}")]
    Status(u16),
    /// A `Sec-WebSocket-Accept` that does not match the key sent.
    #[error("wrong Sec-WebSocket-Accept")]
    WrongAccept,
}

/// A parsed head: the first line and the headers, names lower-cased.
#[derive(Debug)]
struct Head<'a> {
    first_line: &'a str,
    headers: Vec<(String, &'a str)>,
    /// Bytes the head took, including the blank line.
    len: usize,
}

impl Head<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Whether a comma-separated header contains `token` (case-insensitive).
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Splits off the head of `buf`; `None` until its blank line has arrived.
fn parse_head(buf: &[u8]) -> Result<Option<Head<'_>>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_HEAD {
            Err(HttpError::TooLong)
        } else {
            Ok(None)
        };
    };
    if end + 4 > MAX_HEAD {
        return Err(HttpError::TooLong);
    }
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed)?;
    let mut lines = text.split("\r\n");
    let first_line = lines.next().ok_or(HttpError::Malformed)?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(HttpError::Malformed)?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim()));
    }
    Ok(Some(Head {
        first_line,
        headers,
        len: end + 4,
    }))
}

/// A client's WebSocket upgrade request, as the gate parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// `Sec-WebSocket-Key`, to compute the accept value from.
    pub key: String,
    /// Bytes the request took.
    pub consumed: usize,
}

/// Parses a WebSocket upgrade request (§4.2.1); `None` until the whole head has arrived.
pub fn parse_upgrade_request(buf: &[u8]) -> Result<Option<UpgradeRequest>, HttpError> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let mut parts = head.first_line.split(' ');
    let (Some("GET"), Some(_path), Some("HTTP/1.1"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed);
    };
    if !head.has_token("upgrade", "websocket") {
        return Err(HttpError::NotUpgrade("no Upgrade: websocket"));
    }
    if !head.has_token("connection", "upgrade") {
        return Err(HttpError::NotUpgrade("no Connection: Upgrade"));
    }
    if head.header("sec-websocket-version") != Some("13") {
        return Err(HttpError::NotUpgrade("Sec-WebSocket-Version is not 13"));
    }
    // The key is 16 random bytes in base64 (§4.1): 24 characters.
    let key = head
        .header("sec-websocket-key")
        .filter(|k| k.len() == 24)
        .ok_or(HttpError::NotUpgrade("no valid Sec-WebSocket-Key"))?;
    Ok(Some(UpgradeRequest {
        key: key.to_string(),
        consumed: head.len,
    }))
}

/// The gate's answer to an upgrade: `101 Switching Protocols` with the accept value.
pub fn upgrade_response(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

/// The answer to a request that is not an acceptable upgrade.
pub const BAD_REQUEST: &str =
    "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A client's upgrade request to `host` (as `Host:` names it) for `path`, with its `key`.
pub fn upgrade_request(host: &str, path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Checks the gate's answer to an upgrade: status 101 with the `accept` value expected for the
/// key sent. Returns the bytes the head took, or `None` until it has arrived.
pub fn check_upgrade_response(buf: &[u8], accept: &str) -> Result<Option<usize>, HttpError> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let status = status_code(head.first_line)?;
    if status != 101 {
        return Err(HttpError::Status(status));
    }
    if head.header("sec-websocket-accept") != Some(accept) {
        return Err(HttpError::WrongAccept);
    }
    Ok(Some(head.len))
}

/// A CONNECT request asking a proxy for a tunnel to `authority` (`host:port`).
pub fn connect_request(authority: &str) -> String {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
}

/// Checks a proxy's answer to CONNECT: any 2xx opens the tunnel (RFC 9110 §9.3.6). Returns the
/// bytes the head took, or `None` until it has arrived.
pub fn check_connect_response(buf: &[u8]) -> Result<Option<usize>, HttpError> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    match status_code(head.first_line)? {
        200..=299 => Ok(Some(head.len)),
        other => Err(HttpError::Status(other)),
    }
}

/// The code of a status line `HTTP/1.x NNN reason`.
fn status_code(line: &str) -> Result<u16, HttpError> {
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(HttpError::Malformed);
    };
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(HttpError::Malformed);
    }
    code.parse().map_err(|_| HttpError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The handshake of RFC 6455 §1.3.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    #[test]
    fn upgrade_round_trip() {
        let request = upgrade_request("gate.example:443", "/keywire", KEY);
        let mut bytes = request.clone().into_bytes();
        bytes.extend_from_slice(&[0x82, 0x81]);
        let parsed = parse_upgrade_request(&bytes).unwrap().unwrap();
        assert_eq!(parsed.key, KEY);
        assert_eq!(
            parsed.consumed,
            request.len(),
            "frames after the head are left"
        );
        assert_eq!(parse_upgrade_request(&bytes[..20]), Ok(None));

        let response = upgrade_response(ACCEPT);
        assert_eq!(
            check_upgrade_response(response.as_bytes(), ACCEPT),
            Ok(Some(response.len()))
        );
        assert_eq!(
            check_upgrade_response(response.as_bytes(), "other"),
            Err(HttpError::WrongAccept)
        );
    }

    #[test]
    fn a_literal_browser_style_request() {
        let request = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nupgrade: WebSocket\r\n\
            Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Origin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let parsed = parse_upgrade_request(request).unwrap().unwrap();
        assert_eq!(parsed.key, KEY);
    }

    #[test]
    fn refused_requests() {
        let plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            parse_upgrade_request(plain),
            Err(HttpError::NotUpgrade(_))
        ));
        assert_eq!(
            parse_upgrade_request(b"GET /\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse_upgrade_request(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        let long = vec![b'a'; MAX_HEAD];
        assert_eq!(parse_upgrade_request(&long), Err(HttpError::TooLong));
        let v12 = upgrade_request("h", "/", KEY).replace("Version: 13", "Version: 12");
        assert!(parse_upgrade_request(v12.as_bytes()).is_err());
    }

    #[test]
    fn connect_answers() {
        assert_eq!(
            connect_request("192.0.2.1:4433"),
            "CONNECT 192.0.2.1:4433 HTTP/1.1\r\nHost: 192.0.2.1:4433\r\n\r\n"
        );
        let ok = b"HTTP/1.1 200 Connection established\r\n\r\nrest";
        assert_eq!(check_connect_response(ok), Ok(Some(ok.len() - 4)));
        assert_eq!(
            check_connect_response(b"HTTP/1.0 200 OK\r\nProxy-agent: x\r\n\r\n"),
            Ok(Some(35))
        );
        assert_eq!(
            check_connect_response(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"),
            Err(HttpError::Status(407))
        );
        assert_eq!(check_connect_response(b"HTTP/1.1 200"), Ok(None));
        assert_eq!(
            check_connect_response(b"SSH-2.0-x\r\n\r\n"),
            Err(HttpError::Malformed)
        );
    }
}
