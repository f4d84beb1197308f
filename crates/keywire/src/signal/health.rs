//! What this node knows about each broker's health, shared by its connections and its sends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use keywire_proto::signal::{BackoffConfig, BrokerHealth, BrokerId};
use tokio::time::Instant;

use crate::signal::link::lock;

/// Per-broker back-off state. Bounded by the brokers this node ever connects to: the pool plus
/// hint brokers, which are capped per destination and by the destination cache.
pub(crate) struct HealthTable {
    config: BackoffConfig,
    brokers: Mutex<HashMap<BrokerId, BrokerHealth>>,
}

impl HealthTable {
    pub(crate) fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            brokers: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn success(&self, id: &BrokerId) {
        lock(&self.brokers)
            .entry(id.clone())
            .or_insert_with(|| BrokerHealth::new(self.config))
            .handle_success();
    }

    /// Records a failure; returns how long to wait before the next attempt.
    pub(crate) fn failure(&self, id: &BrokerId, now: Instant) -> Duration {
        let mut brokers = lock(&self.brokers);
        let health = brokers
            .entry(id.clone())
            .or_insert_with(|| BrokerHealth::new(self.config));
        health.handle_failure(now.into_std());
        health
            .poll_timeout()
            .map(|at| at.saturating_duration_since(now.into_std()))
            .unwrap_or(self.config.initial)
    }

    /// Senders skip a broker while it backs off.
    pub(crate) fn is_backing_off(&self, id: &BrokerId, now: Instant) -> bool {
        lock(&self.brokers)
            .get(id)
            .is_some_and(|h| h.is_backing_off(now.into_std()))
    }

    /// How long the broker has been down (without a success since), if it is.
    pub(crate) fn down_for(&self, id: &BrokerId, now: Instant) -> Option<Duration> {
        lock(&self.brokers)
            .get(id)
            .and_then(|h| h.down_for(now.into_std()))
    }
}
