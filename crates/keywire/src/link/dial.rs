//! Opening a stream link to a gate: TCP to the gate's host and port (its UDP port number), or
//! through an HTTP CONNECT proxy; then the raw preamble or a WebSocket upgrade.

use std::net::SocketAddr;
use std::time::Duration;

use keywire_proto::link::http::{self, HttpError};
use keywire_proto::link::{framing, websocket};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{read_head, Framing};

/// The path a WebSocket link asks for; a reverse proxy in front of a gate can route on it.
pub const WEBSOCKET_PATH: &str = "/keywire/link";

/// How an endpoint reaches gates: over UDP, over TCP when UDP gets no answer, or only over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GateLinkMode {
    /// UDP first; with no answer within [`GateLinkConfig::fallback_after`], also a stream link
    /// to the same host and port (the first to complete the gate's handshake wins).
    UdpThenTcp,
    /// UDP only.
    UdpOnly,
    /// A stream link only (for a network known to block UDP, and for tests).
    TcpOnly,
}

/// How an endpoint opens stream links to gates (see `docs/relay.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GateLinkConfig {
    /// When to use a stream link. Default [`GateLinkMode::UdpThenTcp`].
    pub mode: GateLinkMode,
    /// How long UDP may stay unanswered before a stream link is tried too. Default 2 s: a
    /// gate's handshake takes one or two round trips, far less on any working path.
    pub fallback_after: Duration,
    /// Speak WebSocket (an HTTP/1.1 upgrade) instead of the raw framing, for networks whose
    /// proxies pass only HTTP, or a gate behind a reverse proxy. Default off.
    pub websocket: bool,
    /// An HTTP proxy (`host:port`) to ask for a tunnel with CONNECT, as `HTTPS_PROXY` names
    /// one. Default none.
    pub http_proxy: Option<String>,
    /// How long opening a link (TCP, proxy and upgrade) may take. Default 10 s.
    pub open_timeout: Duration,
    /// While a gate is reached over TCP, how often to check (one address observation on the
    /// gate's second port, over UDP) whether UDP works now; when it starts to, relayed
    /// connections search for a direct UDP path again. Default 10 s (three small datagrams
    /// per check).
    pub udp_recheck: Duration,
}

impl Default for GateLinkConfig {
    fn default() -> Self {
        Self {
            mode: GateLinkMode::UdpThenTcp,
            fallback_after: Duration::from_secs(2),
            websocket: false,
            http_proxy: None,
            open_timeout: Duration::from_secs(10),
            udp_recheck: Duration::from_secs(10),
        }
    }
}

impl GateLinkConfig {
    /// Sets the mode.
    pub fn mode(mut self, mode: GateLinkMode) -> Self {
        self.mode = mode;
        self
    }

    /// Turns WebSocket framing on or off.
    pub fn websocket(mut self, on: bool) -> Self {
        self.websocket = on;
        self
    }

    /// Sets how often UDP is checked again while a gate is reached over TCP.
    pub fn udp_recheck(mut self, every: Duration) -> Self {
        self.udp_recheck = every;
        self
    }

    /// Goes through an HTTP CONNECT proxy at `host:port`.
    pub fn http_proxy(mut self, proxy: impl Into<String>) -> Self {
        self.http_proxy = Some(proxy.into());
        self
    }

    /// The proxy named by `HTTPS_PROXY` (or `https_proxy`), as `http://host:port`,
    /// `host:port`, with an optional trailing `/`; `Ok(None)` if unset, and an error naming
    /// the value if it is set but not of that form (other schemes, credentials, paths), which
    /// keywire would misuse — so that the caller can say it goes without.
    pub fn proxy_from_env() -> Result<Option<String>, String> {
        let Ok(value) = std::env::var("HTTPS_PROXY").or_else(|_| std::env::var("https_proxy"))
        else {
            return Ok(None);
        };
        match proxy_authority(&value) {
            Some(authority) => Ok(Some(authority)),
            None => Err(format!(
                "HTTPS_PROXY={value:?} is not http://host:port (no credentials, no path): not used"
            )),
        }
    }
}

/// The `host:port` of a proxy URL as `HTTPS_PROXY` holds it (`http://host:port/` or
/// `host:port`); `None` for anything else (other schemes, credentials, paths, no port): a
/// proxy keywire would misuse is worse than none.
fn proxy_authority(value: &str) -> Option<String> {
    let rest = value.strip_prefix("http://").unwrap_or(value);
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let port = authority.rsplit_once(':')?.1;
    let plain = !authority.contains(['/', '@']) && port.parse::<u16>().is_ok();
    plain.then(|| authority.to_string())
}

/// Why a stream link could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// TCP failed (refused, unreachable, reset).
    #[error("TCP: {0}")]
    Io(#[from] std::io::Error),
    /// The proxy or the gate answered with something unacceptable.
    #[error("HTTP: {0}")]
    Http(#[from] HttpError),
    /// The HTTP proxy could not be reached, or refused the tunnel to the gate.
    #[error("through the HTTP proxy {proxy}: {reason}")]
    Proxy {
        /// The proxy (`host:port`).
        proxy: String,
        /// What went wrong there (e.g. `HTTP: HTTP status 407`: it wants credentials).
        reason: Box<LinkError>,
    },
    /// The stream started with neither the link preamble nor an HTTP request.
    #[error("not a keywire link")]
    NotALink,
    /// The stream closed during the handshake.
    #[error("closed during the handshake")]
    Closed,
    /// No link within [`GateLinkConfig::open_timeout`].
    #[error("no link within {0:?}")]
    TimedOut(Duration),
    /// The gate has no address to open a link to.
    #[error("the gate has no direct address to open a TCP link to")]
    NoAddress,
    /// Every address of the gate failed, each for the reason given.
    #[error("{}", describe_attempts(.0))]
    Attempts(Vec<(SocketAddr, LinkError)>),
}

fn describe_attempts(attempts: &[(SocketAddr, LinkError)]) -> String {
    let parts: Vec<String> = attempts.iter().map(|(a, e)| format!("{a}: {e}")).collect();
    parts.join("; ")
}

/// Opens a link to `gate` as `config` says; returns the stream, ready for datagrams.
pub(crate) async fn dial(
    gate: SocketAddr,
    config: &GateLinkConfig,
) -> Result<(TcpStream, Framing), LinkError> {
    tokio::time::timeout(config.open_timeout, dial_inner(gate, config))
        .await
        .map_err(|_| LinkError::TimedOut(config.open_timeout))?
}

async fn dial_inner(
    gate: SocketAddr,
    config: &GateLinkConfig,
) -> Result<(TcpStream, Framing), LinkError> {
    let authority = gate.to_string();
    let mut stream = match &config.http_proxy {
        Some(proxy) => {
            let tunnel = async {
                let mut stream = TcpStream::connect(proxy.as_str()).await?;
                stream
                    .write_all(http::connect_request(&authority).as_bytes())
                    .await?;
                read_head(&mut stream, &[], http::check_connect_response).await?;
                Ok::<_, LinkError>(stream)
            };
            tunnel.await.map_err(|e| LinkError::Proxy {
                proxy: proxy.clone(),
                reason: Box::new(e),
            })?
        }
        None => TcpStream::connect(gate).await?,
    };
    if config.websocket {
        let key = websocket::base64(&rand::random::<[u8; 16]>());
        let request = http::upgrade_request(&authority, WEBSOCKET_PATH, &key);
        stream.write_all(request.as_bytes()).await?;
        let accept = keywire_proto::link::websocket::accept_value(&key);
        read_head(&mut stream, &[], |head| {
            http::check_upgrade_response(head, &accept)
        })
        .await?;
        Ok((stream, Framing::WebSocket { client: true }))
    } else {
        stream.write_all(&framing::PREAMBLE).await?;
        Ok((stream, Framing::Raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refusing_proxy_is_named_with_its_answer_and_every_address_is_reported() {
        use tokio::io::AsyncReadExt;
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = proxy.accept().await.unwrap();
            let mut request = [0u8; 512];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                .await;
        });
        let gate: SocketAddr = "192.0.2.1:4433".parse().unwrap();
        let config = GateLinkConfig::default().http_proxy(proxy_addr.to_string());
        let err = dial(gate, &config).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LinkError::Proxy { .. }), "{err:?}");
        assert!(
            text.contains(&proxy_addr.to_string()) && text.contains("407"),
            "{text}"
        );

        let two = LinkError::Attempts(vec![
            (gate, LinkError::Closed),
            ("[2001:db8::1]:4433".parse().unwrap(), LinkError::NotALink),
        ]);
        assert_eq!(
            two.to_string(),
            "192.0.2.1:4433: closed during the handshake; [2001:db8::1]:4433: not a keywire link"
        );
    }

    #[test]
    fn proxy_urls() {
        let ok = |v: &str| proxy_authority(v).unwrap();
        assert_eq!(ok("http://proxy.example:3128"), "proxy.example:3128");
        assert_eq!(ok("http://proxy.example:3128/"), "proxy.example:3128");
        assert_eq!(ok("10.0.0.1:8080"), "10.0.0.1:8080");
        assert_eq!(ok("http://[2001:db8::1]:3128"), "[2001:db8::1]:3128");
        for refused in [
            "",
            "https://proxy.example:3128",
            "socks5://proxy.example:1080",
            "http://user:secret@proxy.example:3128",
            "http://proxy.example",
            "http://proxy.example:3128/path",
        ] {
            assert_eq!(proxy_authority(refused), None, "{refused:?}");
        }
    }
}
