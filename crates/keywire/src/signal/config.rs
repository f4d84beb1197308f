//! Broker pool and node settings.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use keywire_proto::signal::{AddressFamily, BackoffConfig, BrokerSpec, ReplayConfig, MAX_WEIGHT};
use serde::Deserialize;

use crate::signal::SignalError;

/// The brokers both ends rank. Peers must use the same pool (or pass hints) to meet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolConfig {
    brokers: Vec<BrokerSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    #[serde(default)]
    broker: Vec<BrokerEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokerEntry {
    host: String,
    #[serde(default = "default_port")]
    port: u16,
    family: Option<String>,
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_port() -> u16 {
    1883
}

fn default_weight() -> u32 {
    1
}

impl PoolConfig {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a broker of weight 1; the family comes from the host if it is an IP literal,
    /// otherwise IPv4.
    pub fn broker(self, host: &str, port: u16) -> Self {
        let family = family_of(host).unwrap_or(AddressFamily::V4);
        self.with(BrokerSpec::new(host, port, family))
    }

    /// Adds a fully specified broker.
    pub fn with(mut self, spec: BrokerSpec) -> Self {
        self.brokers.push(spec);
        self
    }

    /// An opt-in pool of well-known public test brokers (plain MQTT on port 1883, anonymous).
    ///
    /// Never used unless asked for. Their operators see the connecting IP addresses, the
    /// topics (a hash of network id and node key: on the public network anyone who knows a
    /// key can compute it, so a broker can tell when a known key is being signalled), the
    /// sizes and the timing of envelopes; never their contents, senders or payloads. They make
    /// no promise of availability and rate-limit or ban noisy clients. See
    /// `docs/mqtt-signalling.md`.
    pub fn public() -> Self {
        PUBLIC_BROKERS
            .iter()
            .fold(Self::new(), |pool, host| pool.broker(host, 1883))
    }

    /// The brokers.
    pub fn brokers(&self) -> &[BrokerSpec] {
        &self.brokers
    }

    /// Parses a pool file:
    ///
    /// ```toml
    /// [[broker]]
    /// host = "broker.example.org"
    /// port = 1883        # default 1883
    /// family = "v4"      # "v4" or "v6"; default: from an IP literal, else v4
    /// weight = 2         # 0..=64, default 1
    /// ```
    pub fn from_toml_str(text: &str) -> Result<Self, SignalError> {
        let file: PoolFile =
            toml::from_str(text).map_err(|e| SignalError::Config(format!("pool file: {e}")))?;
        let mut pool = Self::new();
        for entry in file.broker {
            let family = match entry.family.as_deref() {
                Some("v4") => AddressFamily::V4,
                Some("v6") => AddressFamily::V6,
                Some(other) => {
                    return Err(SignalError::Config(format!(
                        "broker {}: family {other:?} is not \"v4\" or \"v6\"",
                        entry.host
                    )))
                }
                None => family_of(&entry.host).unwrap_or(AddressFamily::V4),
            };
            if entry.weight > MAX_WEIGHT {
                return Err(SignalError::Config(format!(
                    "broker {}: weight {} above {MAX_WEIGHT}",
                    entry.host, entry.weight
                )));
            }
            pool = pool.with(BrokerSpec {
                host: entry.host,
                port: entry.port,
                family,
                weight: entry.weight,
            });
        }
        Ok(pool)
    }

    /// Reads a pool file (see [`Self::from_toml_str`]).
    pub fn from_toml_file(path: &Path) -> Result<Self, SignalError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SignalError::Config(format!("{}: {e}", path.display())))?;
        Self::from_toml_str(&text)
    }

    /// Parses a comma-separated list of `host:port` (IPv6 as `[addr]:port`; port defaults to 1883).
    pub fn from_list(list: &str) -> Result<Self, SignalError> {
        let mut pool = Self::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (host, port) = split_host_port(item)
                .ok_or_else(|| SignalError::Config(format!("broker {item:?}: not host:port")))?;
            pool = pool.broker(host, port);
        }
        Ok(pool)
    }
}

/// The public pool: operators that advertise a free public broker for testing (as listed on
/// their own sites in 2025). Unverified from the CI machines, which have no internet access.
const PUBLIC_BROKERS: &[&str] = &[
    "broker.emqx.io",
    "broker.hivemq.com",
    "test.mosquitto.org",
    "mqtt.eclipseprojects.io",
];

fn split_host_port(item: &str) -> Option<(&str, u16)> {
    if let Some(rest) = item.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 1883,
            None => return None,
        };
        return Some((host, port));
    }
    match item.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, port.parse().ok()?)),
        Some(_) => Some((item, 1883)), // a bare IPv6 literal
        None => Some((item, 1883)),
    }
}

fn family_of(host: &str) -> Option<AddressFamily> {
    match host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
        .ok()?
    {
        IpAddr::V4(_) => Some(AddressFamily::V4),
        IpAddr::V6(_) => Some(AddressFamily::V6),
    }
}

/// A publish rate cap: `rate` per second, `burst` saved up; a rate of 0 means no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCap {
    /// Tokens per second.
    pub rate: u32,
    /// Largest burst.
    pub burst: u32,
}

/// How a signalling node behaves. Defaults suit public brokers; tests shorten the timers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SignalConfig {
    /// Brokers used per address family: `k = min(this, brokers of the family)` (issue 8: 3).
    pub per_family: usize,
    /// How long `send` waits for an end-to-end acknowledgement.
    pub send_timeout: Duration,
    /// Interval at which an unacknowledged envelope is published again (same bytes; the
    /// receiver deduplicates and re-acknowledges).
    pub republish_interval: Duration,
    /// A subscribed broker down this long is replaced by the next in rank (sidewire: 60 s).
    pub replace_after: Duration,
    /// Outbound-only connections unused this long are closed (sidewire: 600 s).
    pub idle_timeout: Duration,
    /// Reconnect back-off per broker.
    pub backoff: BackoffConfig,
    /// TCP + CONNECT timeout, whole seconds (rumqttc's unit).
    pub connect_timeout_secs: u64,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Cap on this node's sends (all destinations): `send` waits for a token.
    pub sender_rate: RateCap,
    /// Cap on publishes per broker connection: publishes beyond it are skipped and counted.
    pub broker_rate: RateCap,
    /// Replay-guard limits.
    pub replay: ReplayConfig,
    /// Incoming publishes waiting to be opened; when full, new ones are dropped (and counted).
    pub inbound_queue: usize,
    /// Delivered messages waiting for `recv`; when full, new ones are dropped unacknowledged.
    pub receive_queue: usize,
    /// Sends awaiting an acknowledgement at once; beyond it `send` fails with `Busy`.
    pub max_pending: usize,
    /// Broker connections at once; beyond it new outbound connections are refused.
    pub max_links: usize,
    /// Destinations with cached hint brokers; when full, the entry expiring first is evicted.
    pub dest_cache: usize,
    /// How long hints and the last acknowledging broker stay cached per destination.
    pub hint_expiry: Duration,
    /// Period of the maintenance tick (subscription replacement, idle closer).
    pub tick: Duration,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            per_family: 3,
            send_timeout: Duration::from_secs(5),
            republish_interval: Duration::from_secs(1),
            replace_after: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            backoff: BackoffConfig::default(),
            connect_timeout_secs: 5,
            keep_alive: Duration::from_secs(30),
            // Public brokers (e.g. the EMQX and HiveMQ public ones) tolerate tens of messages
            // per second per client; stay well below.
            sender_rate: RateCap {
                rate: 20,
                burst: 40,
            },
            broker_rate: RateCap {
                rate: 50,
                burst: 100,
            },
            replay: ReplayConfig::default(),
            inbound_queue: 1024,
            receive_queue: 1024,
            max_pending: 1024,
            max_links: 64,
            dest_cache: 1024,
            hint_expiry: Duration::from_secs(3600),
            tick: Duration::from_millis(250),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_file_and_list() {
        let pool = PoolConfig::from_toml_str(
            r#"
            [[broker]]
            host = "127.0.0.1"
            port = 1884
            weight = 2
            [[broker]]
            host = "::1"
            [[broker]]
            host = "broker.example.org"
            family = "v6"
            "#,
        )
        .unwrap();
        let b = pool.brokers();
        assert_eq!(b.len(), 3);
        assert_eq!(
            (b[0].port, b[0].weight, b[0].family),
            (1884, 2, AddressFamily::V4)
        );
        assert_eq!((b[1].port, b[1].family), (1883, AddressFamily::V6));
        assert_eq!(b[2].family, AddressFamily::V6);
        assert!(PoolConfig::from_toml_str("[[broker]]\nhost='a'\nweight=65").is_err());
        assert!(PoolConfig::from_toml_str("[[broker]]\nhost='a'\nfamily='v5'").is_err());
        assert!(PoolConfig::from_toml_str("[[broker]]\nhost='a'\ncolour='red'").is_err());

        let list = PoolConfig::from_list("127.0.0.1:1, [::1]:2, example.org, ::1").unwrap();
        let ports: Vec<u16> = list.brokers().iter().map(|b| b.port).collect();
        assert_eq!(ports, [1, 2, 1883, 1883]);
        assert_eq!(list.brokers()[1].family, AddressFamily::V6);
        assert!(PoolConfig::from_list("host:notaport").is_err());
    }
}
