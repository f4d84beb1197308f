//! QUIC transport settings shared by every connection of an endpoint.

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};

use crate::socket::congestion::PathAwareFactory;
use crate::socket::paths::PathSwitch;

/// Largest UDP payload quinn's MTU discovery may settle on: 1500-byte Ethernet MTU minus IPv6
/// (40) and UDP (8) headers is 1452, minus 16 bytes kept free for a relay header (so a packet
/// sized for a direct path still fits when relayed through a gate).
pub const MAX_UDP_PAYLOAD: u16 = 1452 - RELAY_HEADER_ROOM;
/// Room kept for the relay header (gates and relays, see docs/socket.md).
pub const RELAY_HEADER_ROOM: u16 = 16;
// The relay frame's header must fit in the room kept for it.
const _: () = assert!(keywire_proto::gate::frame::RELAY_HEADER_LEN as u16 <= RELAY_HEADER_ROOM);

#[derive(Debug, Clone)]
pub(crate) struct TransportSettings {
    pub(crate) idle_timeout: Duration,
    pub(crate) keep_alive: Duration,
}

impl TransportSettings {
    /// The transport configuration for one connection; `path` binds its congestion controller
    /// to that path's switch signal.
    pub(crate) fn build(&self, path: Option<Arc<PathSwitch>>) -> Result<TransportConfig, String> {
        let mut transport = TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                IdleTimeout::try_from(self.idle_timeout).map_err(|_| "idle_timeout too large")?,
            ))
            .keep_alive_interval(Some(self.keep_alive))
            .max_concurrent_bidi_streams(VarInt::from_u32(256))
            .max_concurrent_uni_streams(VarInt::from_u32(256));
        let mut mtu = MtuDiscoveryConfig::default();
        mtu.upper_bound(MAX_UDP_PAYLOAD);
        transport.mtu_discovery_config(Some(mtu));
        if let Some(signal) = path {
            transport.congestion_controller_factory(Arc::new(PathAwareFactory::new(signal)));
        }
        Ok(transport)
    }
}
