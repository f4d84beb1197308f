//! Options of `listen` and `connect` for finding nodes by key, and being found: the DHT, the
//! MQTT pool, an observer, the address book.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use keywire::address_book::AddressBook;
use keywire::dht::{Dht, DhtConfig};
use keywire::discovery::{DiscoveryMetrics, KeyConnection};
use keywire::signal::{PoolConfig, SignalConfig, SignalNode, SystemClock};
use keywire::{Discovery, Endpoint};

use crate::node::NodeOptions;

#[derive(clap::Args, Debug, Clone)]
pub struct DiscoveryArgs {
    /// Join the DHT through this node (repeatable): find nodes by key there, and (listen) be
    /// found there.
    #[arg(long = "dht", value_name = "ADDR")]
    dht: Vec<SocketAddr>,
    /// MQTT brokers to find nodes by key through (and be found), comma-separated host:port.
    #[arg(long, value_name = "LIST")]
    brokers: Option<String>,
    /// A pool file of MQTT brokers (TOML, as `keywire signal --pool`).
    #[arg(long = "broker-pool", value_name = "PATH")]
    broker_pool: Option<PathBuf>,
    /// A gate's observation address (`keywire gate` prints it) to learn this node's public
    /// address from, without relaying through that gate.
    #[arg(long, value_name = "ADDR")]
    observer: Option<SocketAddr>,
    /// The address book (SQLite): where nodes were reached before (default:
    /// `$DATA_DIR/keywire/address-book.sqlite`).
    #[arg(long, value_name = "PATH")]
    book: Option<PathBuf>,
    /// Use no address book.
    #[arg(long, conflicts_with = "book")]
    no_book: bool,
}

/// What was attached to the endpoint (it runs until the endpoint closes; the DHT's routing
/// table is not saved by these commands).
pub struct Attached {
    mqtt: Option<Arc<SignalNode>>,
    /// The channels configured, by name (`dht`, `mqtt`).
    pub channels: Vec<&'static str>,
}

impl DiscoveryArgs {
    fn pool(&self) -> anyhow::Result<Option<PoolConfig>> {
        let pool = crate::signal::pool_of(self.brokers.as_deref(), self.broker_pool.as_deref())?;
        Ok((!pool.brokers().is_empty()).then_some(pool))
    }

    /// The address book: the one asked for (an error if it cannot be opened), else the default
    /// one if it can be opened (a command that did not ask for it must not fail without it).
    fn book(&self) -> anyhow::Result<Option<AddressBook>> {
        if self.no_book {
            return Ok(None);
        }
        if let Some(path) = &self.book {
            let book = AddressBook::open(path)
                .with_context(|| format!("cannot open the address book {}", path.display()))?;
            return Ok(Some(book));
        }
        let Some(dir) = dirs::data_dir() else {
            return Ok(None);
        };
        match AddressBook::open(&dir.join("keywire").join("address-book.sqlite")) {
            Ok(book) => Ok(Some(book)),
            Err(e) => {
                crate::output::err_line(&format!("keywire: no address book: {e}"));
                Ok(None)
            }
        }
    }

    /// Whether no address book is used.
    pub fn no_book(&self) -> bool {
        self.no_book
    }

    /// Whether a bare node id can be dialed with these options.
    pub fn can_find(&self) -> bool {
        !self.dht.is_empty() || self.brokers.is_some() || self.broker_pool.is_some()
    }

    /// Starts the configured channels and attaches them to `endpoint`.
    pub fn attach(
        &self,
        opts: &NodeOptions,
        endpoint: &Endpoint,
        advertise: bool,
    ) -> anyhow::Result<Attached> {
        let mut discovery = Discovery::new().advertise(advertise);
        let mut channels = Vec::new();
        let dht = (!self.dht.is_empty()).then(|| {
            // A client: `listen` and `connect` come and go, and a node behind a filtering NAT
            // can pass the DHT's reachability check falsely (the proof may come from a node it
            // already sent to) and then slow everyone's lookups with requests that time out.
            // Public DHT nodes are `keywire dht serve` and gates.
            let mut config = DhtConfig {
                bootstrap: self.dht.clone(),
                ..DhtConfig::default()
            };
            config.kad.mode = keywire::dht::ModeSetting::Client;
            Arc::new(Dht::spawn(endpoint, config))
        });
        if let Some(dht) = &dht {
            discovery = discovery.dht(dht.clone());
            channels.push("dht");
        }
        let mqtt = match self.pool()? {
            Some(pool) => {
                let (key, _) = opts.secret_key()?;
                let node = SignalNode::start(
                    key,
                    opts.network(),
                    pool,
                    SignalConfig::default(),
                    Arc::new(SystemClock),
                )
                .context("cannot start MQTT signalling")?;
                Some(Arc::new(node))
            }
            None => None,
        };
        if let Some(mqtt) = &mqtt {
            discovery = discovery.mqtt(mqtt.clone());
            channels.push("mqtt");
        }
        if let Some(observer) = self.observer {
            discovery = discovery.observer(observer);
        }
        if let Some(book) = self.book()? {
            discovery = discovery.address_book(Arc::new(book));
        }
        endpoint.set_discovery(discovery)?;
        Ok(Attached { mqtt, channels })
    }
}

/// The `connected` event's additions for a dial by key.
pub fn resolve_json(found: &KeyConnection) -> serde_json::Value {
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    let t = &found.timings;
    serde_json::json!({
        "introduced_by": found.introduced_by.as_str(),
        "resolve": {
            "book_ms": ms(t.book),
            "dht_ms": ms(t.dht_record),
            "dht_nudge_ms": ms(t.dht_nudge),
            "mqtt_ms": ms(t.mqtt_answer),
        },
    })
}

/// The `done` event's additions on a node that advertised itself: introductions accepted and
/// refused (by discovery: wrong destination, stale, replayed, unasked; by the MQTT layer:
/// garbage, bad signatures, envelopes for others, stale, oversized, and replayed envelopes —
/// the last also counts the ordinary second copy from another broker).
pub fn introductions_json(
    metrics: Option<DiscoveryMetrics>,
    attached: &Attached,
) -> serde_json::Value {
    let Some(m) = metrics else {
        return serde_json::json!({});
    };
    let (mqtt_refused, mqtt_replays) = attached.mqtt.as_ref().map_or((0, 0), |node| {
        let s = node.metrics();
        (
            s.rejected_garbage
                + s.rejected_bad_signature
                + s.rejected_wrong_destination
                + s.rejected_stale
                + s.rejected_oversized,
            s.rejected_replay,
        )
    });
    serde_json::json!({
        "introductions": { "dht": m.intros_accepted_dht, "mqtt": m.intros_accepted_mqtt },
        "introductions_rejected": m.intros_rejected,
        "mqtt_envelopes_refused": mqtt_refused,
        "mqtt_envelopes_repeated": mqtt_replays,
        "nudges_sent": m.nudges_sent,
    })
}
