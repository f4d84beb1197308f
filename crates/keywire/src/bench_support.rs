//! The baseline keywire's benchmarks compare against: plain quinn on a plain UDP socket, with
//! exactly keywire's TLS configuration (raw public keys, same verifiers), transport settings and
//! socket buffer sizes. Only the one-port socket, the virtual addresses, the path-aware
//! congestion controller and the network-id proofs are missing — which is what is measured.

use std::net::SocketAddr;
use std::sync::Arc;

use keywire_proto::NodeId;

use crate::config::EndpointConfig;
use crate::error::BindError;
use crate::metrics::Metrics;
use crate::transport::TransportSettings;
use crate::{tls, udp};

/// A plain quinn endpoint configured like a keywire endpoint from `config`: it accepts
/// `config.alpns`, and dials with [`plain_client_config`].
pub fn plain_quinn_endpoint(config: &EndpointConfig) -> Result<quinn::Endpoint, BindError> {
    config.validate().map_err(BindError::InvalidConfig)?;
    let policy = Arc::new(config.policy.clone());
    let metrics = Arc::new(Metrics::default());
    let transport = TransportSettings {
        idle_timeout: config.idle_timeout,
        keep_alive: config.keep_alive,
    };
    let server_tls = tls::server_config(&config.secret_key, policy, metrics, config.alpns.clone())?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .expect("the ring provider has QUIC's initial suite");
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(
        transport.build(None).map_err(BindError::InvalidConfig)?,
    ));
    let socket = udp::bind(config.bind_addr).map_err(|source| BindError::Socket {
        addr: config.bind_addr,
        source,
    })?;
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config.grease_quic_bit(false);
    quinn::Endpoint::new(
        endpoint_config,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| BindError::Socket {
        addr: config.bind_addr,
        source,
    })
}

/// The client configuration a keywire endpoint from `config` would dial `alpn` with.
pub fn plain_client_config(
    config: &EndpointConfig,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, BindError> {
    let policy = Arc::new(config.policy.clone());
    let mut client_tls =
        tls::client_config(&config.secret_key, policy, Arc::new(Metrics::default()))?;
    client_tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
        .expect("the ring provider has QUIC's initial suite");
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let transport = TransportSettings {
        idle_timeout: config.idle_timeout,
        keep_alive: config.keep_alive,
    };
    client.transport_config(Arc::new(
        transport.build(None).map_err(BindError::InvalidConfig)?,
    ));
    Ok(client)
}

/// The TLS server name plain quinn must dial `node` with (keywire derives it from the key).
pub fn server_name(node: &NodeId) -> String {
    tls::server_name_for(node).to_str().into_owned()
}

/// Connects plain quinn to `node` at `addr`; the key is checked by the same verifier as keywire's.
pub async fn plain_connect(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    addr: SocketAddr,
    node: &NodeId,
) -> Result<quinn::Connection, Box<dyn std::error::Error + Send + Sync>> {
    Ok(endpoint
        .connect_with(client, addr, &server_name(node))?
        .await?)
}

/// A port number free for both TCP and UDP on `ip` a moment ago, for a gate in a test or
/// benchmark that must accept TCP links on its UDP port's number (an OS-picked UDP port may be
/// taken for TCP; see `GateConfig::stream_links`). Gives up after 64 tries.
pub fn free_tcp_and_udp_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    for _ in 0..64 {
        let tcp = std::net::TcpListener::bind((ip, 0))?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no port free for both TCP and UDP on {ip} in 64 tries"),
    ))
}
