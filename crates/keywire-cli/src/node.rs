//! Building a node from the global options.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::output;
use anyhow::Context;
use keywire::key_file;
use keywire::signal::sidewire::SidewireSecretKey;
use keywire::{
    Endpoint, EndpointConfig, GateLinkConfig, GateLinkMode, NetworkId, SecretKey, Ticket,
};

/// Options every command shares.
pub struct NodeOptions {
    pub key: Option<PathBuf>,
    pub network: Option<String>,
    pub json: bool,
    pub gate_link: GateLinkConfig,
}

/// `--gate-link`: how to reach gates.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum GateLinkArg {
    /// UDP, then TCP too when UDP gets no answer within 2 s.
    Auto,
    /// UDP only.
    Udp,
    /// TCP only (a network known to block UDP).
    Tcp,
}

impl GateLinkArg {
    /// The library's setting, with WebSocket framing if asked and the proxy given (else the
    /// one `HTTPS_PROXY` names).
    pub fn config(self, websocket: bool, proxy: Option<String>) -> GateLinkConfig {
        let mode = match self {
            Self::Auto => GateLinkMode::UdpThenTcp,
            Self::Udp => GateLinkMode::UdpOnly,
            Self::Tcp => GateLinkMode::TcpOnly,
        };
        let config = GateLinkConfig::default().mode(mode).websocket(websocket);
        let proxy = proxy.or_else(|| {
            GateLinkConfig::proxy_from_env().unwrap_or_else(|why| {
                output::err_line(&format!("keywire: {why}"));
                None
            })
        });
        match proxy {
            Some(proxy) => config.http_proxy(proxy),
            None => config,
        }
    }
}

impl NodeOptions {
    pub fn key_path(&self) -> anyhow::Result<PathBuf> {
        match &self.key {
            Some(path) => Ok(path.clone()),
            None => Ok(key_file::default_key_path()?),
        }
    }

    pub fn secret_key(&self) -> anyhow::Result<(SecretKey, PathBuf)> {
        let path = self.key_path()?;
        let key = key_file::load_or_create(&path)?;
        Ok((key, path))
    }

    /// The sidewire compatibility key (secp256k1), created on first use next to the node's key
    /// file (`secret.key` → `secret.key.sidewire`, mode 0600).
    pub fn sidewire_key(&self) -> anyhow::Result<(SidewireSecretKey, PathBuf)> {
        let path = key_file::sidewire_key_path(&self.key_path()?);
        let key = key_file::load_or_create_key(&path)?;
        Ok((key, path))
    }

    pub fn network(&self) -> NetworkId {
        match &self.network {
            Some(name) => NetworkId::from_name(name),
            None => NetworkId::public(),
        }
    }

    /// Binds an endpoint with this node's key.
    pub fn endpoint(&self, bind: SocketAddr, alpn: &[u8]) -> anyhow::Result<Endpoint> {
        self.endpoint_announcing(bind, alpn, &[])
    }

    /// Binds an endpoint that also announces `announce` to its peers.
    pub fn endpoint_announcing(
        &self,
        bind: SocketAddr,
        alpn: &[u8],
        announce: &[SocketAddr],
    ) -> anyhow::Result<Endpoint> {
        let (key, _) = self.secret_key()?;
        let mut config = EndpointConfig::new(key)
            .bind_addr(bind)
            .network(self.network())
            .gate_link(self.gate_link.clone())
            .alpn(alpn.to_vec());
        for addr in announce {
            config = config.announce(*addr);
        }
        Endpoint::bind(config).context("cannot start the endpoint")
    }
}

/// Another network's wire format to speak instead of keywire's own.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compat {
    /// sidewire 0.1.9 (MQTT signalling; peers addressed by a secp256k1 key in hex).
    Sidewire,
}

#[derive(clap::Args, Debug)]
pub struct IdArgs {
    /// Print the identity used in a compatibility mode instead (created on first use).
    #[arg(long, value_enum)]
    compat: Option<Compat>,
}

pub fn print_id(opts: &NodeOptions, args: &IdArgs) -> anyhow::Result<()> {
    if args.compat == Some(Compat::Sidewire) {
        let (key, path) = opts.sidewire_key()?;
        let id = key.public_key().to_string();
        if opts.json {
            output::line(&serde_json::json!({ "sidewire_key": id, "key_file": path }).to_string());
        } else {
            output::line(&id);
        }
        return Ok(());
    }
    let (key, path) = opts.secret_key()?;
    if opts.json {
        output::line(
            &serde_json::json!({ "node_id": key.node_id().to_string(), "key_file": path })
                .to_string(),
        );
    } else {
        output::line(&key.node_id().to_string());
    }
    Ok(())
}

pub fn print_ticket(opts: &NodeOptions, text: &str) -> anyhow::Result<()> {
    let ticket: Ticket = text.parse()?;
    let addrs: Vec<String> = ticket
        .node
        .direct_addrs
        .iter()
        .map(|a| a.to_string())
        .collect();
    if opts.json {
        output::line(&serde_json::json!({ "node_id": ticket.node.node_id.to_string(), "direct_addrs": addrs }).to_string());
    } else {
        output::line(&format!("node id: {}", ticket.node.node_id));
        for addr in addrs {
            output::line(&format!("address: {addr}"));
        }
    }
    Ok(())
}
