//! A congestion controller that starts afresh when its connection's path changes.
//!
//! After a switch from, say, a relayed path to a direct one, the old path's window, RTT-driven
//! growth and loss history say nothing about the new path. The wrapper rebuilds the inner
//! controller (quinn's Cubic) on the first callback after a switch, and ignores acknowledgements
//! and losses of packets sent before the switch: a burst of "losses" of packets that went down a
//! dead path must not collapse the new path's window or count as persistent congestion.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};

use super::paths::PathSwitch;

/// Builds [`PathAwareController`]s bound to one path's switch signal.
#[derive(Debug)]
pub(crate) struct PathAwareFactory {
    inner: Arc<CubicConfig>,
    signal: Arc<PathSwitch>,
}

impl PathAwareFactory {
    pub(crate) fn new(signal: Arc<PathSwitch>) -> Self {
        Self {
            inner: Arc::new(CubicConfig::default()),
            signal,
        }
    }
}

impl ControllerFactory for PathAwareFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(PathAwareController {
            inner: self.inner.clone().build(now, current_mtu),
            seen_generation: self.signal.generation(),
            switched_at: self.signal.switched_at(),
            mtu: current_mtu,
            factory: self,
        })
    }
}

pub(crate) struct PathAwareController {
    inner: Box<dyn Controller>,
    factory: Arc<PathAwareFactory>,
    seen_generation: u64,
    switched_at: Option<Instant>,
    mtu: u16,
}

impl PathAwareController {
    /// Rebuilds the inner controller if the path switched since the last callback.
    fn follow_switch(&mut self, now: Instant) {
        let generation = self.factory.signal.generation();
        if generation != self.seen_generation {
            self.seen_generation = generation;
            self.switched_at = self.factory.signal.switched_at().or(Some(now));
            self.inner = self.factory.inner.clone().build(now, self.mtu);
        }
    }

    fn before_switch(&self, sent: Instant) -> bool {
        self.switched_at.is_some_and(|switched| sent < switched)
    }
}

impl Controller for PathAwareController {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.follow_switch(now);
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.follow_switch(now);
        if !self.before_switch(sent) {
            self.inner.on_ack(now, sent, bytes, app_limited, rtt);
        }
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_acked: Option<u64>,
    ) {
        self.follow_switch(now);
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.follow_switch(now);
        if !self.before_switch(sent) {
            self.inner
                .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = new_mtu;
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            inner: self.inner.clone_box(),
            factory: self.factory.clone(),
            seen_generation: self.seen_generation,
            switched_at: self.switched_at,
            mtu: self.mtu,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::paths::PathTable;
    use std::net::SocketAddr;
    use std::time::Duration;

    #[test]
    fn resets_on_switch_and_ignores_losses_from_before() {
        let table = PathTable::new(4, Duration::from_secs(60));
        let t0 = Instant::now();
        let v = table.for_dial("192.0.2.1:1".parse().unwrap(), t0).unwrap();
        let factory = Arc::new(PathAwareFactory::new(table.switch_signal(&v).unwrap()));
        let mut cc = factory.build(t0, 1200);
        let initial = cc.window();
        // A loss halves Cubic's window (roughly): the controller is live.
        cc.on_congestion_event(t0 + Duration::from_millis(10), t0, false, 1200);
        let reduced = cc.window();
        assert!(reduced < initial, "{reduced} < {initial}");

        let switch_at = t0 + Duration::from_millis(20);
        let direct: SocketAddr = "198.51.100.7:9".parse().unwrap();
        assert!(table.switch(v, crate::socket::paths::Route::Direct(direct), switch_at));
        // The first callback after the switch starts afresh.
        cc.on_sent(switch_at + Duration::from_millis(1), 1200, 1);
        assert_eq!(cc.window(), initial, "window reset on path switch");
        // Losses of packets sent before the switch are ignored...
        cc.on_congestion_event(
            switch_at + Duration::from_millis(5),
            t0 + Duration::from_millis(15),
            true,
            50_000,
        );
        assert_eq!(cc.window(), initial);
        // ...losses after it count.
        cc.on_congestion_event(
            switch_at + Duration::from_millis(9),
            switch_at + Duration::from_millis(2),
            false,
            1200,
        );
        assert!(cc.window() < initial);
    }
}
