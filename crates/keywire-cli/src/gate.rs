//! `keywire gate`: run a gate (address observation, introductions, relaying) until interrupted.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use keywire::gate::{Gate, GateConfig};
use keywire::{NodeId, Ticket};

use crate::node::NodeOptions;
use crate::output;

#[derive(clap::Args, Debug)]
pub struct GateArgs {
    /// Address to serve on (UDP); the observation port is the next port number.
    #[arg(long, default_value = "[::]:4433")]
    bind: SocketAddr,
    /// Most clients served at once.
    #[arg(long, default_value_t = 1024)]
    max_clients: usize,
    /// Relay budget per client, bytes per second.
    #[arg(long, default_value_t = 4 << 20)]
    relay_rate: u32,
    /// Serve only these node ids (repeatable); default: anyone.
    #[arg(long = "allow", value_name = "NODE_ID")]
    allow: Vec<NodeId>,
    /// Do not accept TCP and WebSocket links (for clients whose networks block UDP) on the
    /// UDP port's number.
    #[arg(long)]
    no_tcp: bool,
    /// Also accept TCP and WebSocket links here (repeatable; e.g. `[::]:443`).
    #[arg(long = "tcp-also", value_name = "ADDR")]
    tcp_also: Vec<SocketAddr>,
    /// Print counters this often (seconds; 0: only at exit).
    #[arg(long, default_value_t = 60)]
    report_every: u64,
}

pub async fn run(opts: &NodeOptions, args: &GateArgs) -> anyhow::Result<()> {
    let endpoint = opts.endpoint(args.bind, keywire::proto::gate::GATE_ALPN)?;
    let mut config = GateConfig::default();
    config.max_clients = args.max_clients;
    config.relay_bytes_per_second = args.relay_rate;
    config.stream_links = !args.no_tcp;
    config.extra_link_addrs = args.tcp_also.clone();
    if !args.allow.is_empty() {
        config.allow = Some(args.allow.iter().copied().collect());
    }
    let gate = Gate::spawn(&endpoint, config)
        .await
        .context("cannot start the gate")?;
    let ticket = Ticket::new(endpoint.node_addr()?).context("cannot make a ticket for the gate")?;
    if opts.json {
        output::line(
            &serde_json::json!({
                "event": "gate", "node_id": endpoint.node_id().to_string(), "ticket": ticket.to_string(),
                "addr": endpoint.local_addr()?.to_string(), "observation_addr": gate.observation_addr().to_string(),
                "tcp_addrs": gate.link_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            })
            .to_string(),
        );
    } else {
        output::line(&format!(
            "keywire gate {} on {}",
            endpoint.node_id(),
            endpoint.local_addr()?
        ));
        output::line(&format!("observation port {}", gate.observation_addr()));
        for addr in gate.link_addrs() {
            output::line(&format!("TCP and WebSocket links on {addr}"));
        }
        output::line(&format!("ticket: {ticket}"));
    }
    let mut report = tokio::time::interval(Duration::from_secs(args.report_every.max(1)));
    report.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = report.tick(), if args.report_every > 0 => print_metrics(opts, &gate),
        }
    }
    print_metrics(opts, &gate);
    endpoint.close().await;
    Ok(())
}

fn print_metrics(opts: &NodeOptions, gate: &Gate) {
    let pairs = gate.metrics().pairs();
    if opts.json {
        let metrics: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), (*value).into()))
            .collect();
        output::line(&serde_json::json!({ "event": "metrics", "clients": gate.clients(), "metrics": metrics }).to_string());
    } else {
        let text: Vec<String> = pairs
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        output::line(&format!("clients {}; {}", gate.clients(), text.join(", ")));
    }
}
