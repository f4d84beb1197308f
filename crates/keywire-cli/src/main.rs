//! `keywire`: reach any peer by its public key.
//!
//! Thin by design: argument parsing and output here, everything else in the `keywire` library.

mod bench;
mod bench_signal;
mod bench_signal_sidewire;
mod demo;
mod dht;
mod discover;
mod gate;
mod node;
mod output;
mod pipe;
mod sidewire;
mod sidewire_peer;
mod signal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Reach any peer by its public key, over an encrypted, multiplexed QUIC channel.
#[derive(Parser, Debug)]
#[command(name = "keywire", version, about, propagate_version = true)]
struct Cli {
    /// Secret key file (created on first use; default: `$DATA_DIR/keywire/secret.key`).
    #[arg(long, global = true, env = "KEYWIRE_KEY", value_name = "PATH")]
    key: Option<PathBuf>,
    /// Network id name: nodes only connect to nodes of the same network.
    #[arg(long, global = true, env = "KEYWIRE_NETWORK", value_name = "NAME")]
    network: Option<String>,
    /// Machine-readable output: one JSON object per line (on stderr where stdout carries data).
    #[arg(long, global = true)]
    json: bool,
    /// How to reach gates: `auto` (UDP, then TCP after 2 s without an answer), `udp` or `tcp`.
    #[arg(
        long,
        global = true,
        env = "KEYWIRE_GATE_LINK",
        value_name = "MODE",
        default_value = "auto"
    )]
    gate_link: node::GateLinkArg,
    /// Reach gates over TCP as WebSocket (an HTTP upgrade) rather than raw framing.
    #[arg(long, global = true)]
    websocket: bool,
    /// HTTP proxy (`host:port`) to reach gates through with CONNECT [default: from HTTPS_PROXY].
    #[arg(long, global = true, value_name = "HOST:PORT")]
    proxy: Option<String>,
    /// Log verbosity: -v for info, -vv for debug (or set RUST_LOG).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print this node's id (its public key), creating the key if needed.
    Id(node::IdArgs),
    /// Wait for one connection and pipe stdin/stdout over it, like netcat.
    ///
    /// Prints a ticket on stderr; stdout carries only the bytes received.
    Listen(pipe::ListenArgs),
    /// Connect to a node by ticket and pipe stdin/stdout over the connection.
    Connect(pipe::ConnectArgs),
    /// Start two nodes on this machine, connect them by key and exchange data; needs nothing
    /// installed and no network.
    Demo(demo::DemoArgs),
    /// Benchmarks: keywire against its baseline in the same run, one JSON line per result.
    Bench(bench::BenchArgs),
    /// Run a gate: observe clients' addresses, introduce them, relay for them.
    Gate(gate::GateArgs),
    /// Signalling by key over a pool of MQTT brokers.
    #[command(subcommand)]
    Signal(signal::SignalCommand),
    /// The DHT: look up a node's signed address record, or show this node's DHT state.
    Dht(dht::DhtArgs),
    /// Show what a ticket contains.
    Ticket {
        /// The ticket (kwt1...).
        ticket: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return output::fail(
                cli.json,
                &anyhow::anyhow!("cannot start the async runtime: {e}"),
            )
        }
    };
    let result = runtime.block_on(run(&cli));
    // Pipes may leave a blocking stdin read behind; don't wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => output::fail(cli.json, &e),
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let opts = node::NodeOptions {
        key: cli.key.clone(),
        network: cli.network.clone(),
        json: cli.json,
        gate_link: cli.gate_link.config(cli.websocket, cli.proxy.clone()),
    };
    match &cli.command {
        Command::Id(args) => node::print_id(&opts, args),
        Command::Listen(args) => pipe::listen(&opts, args).await,
        Command::Connect(args) => pipe::connect(&opts, args).await,
        Command::Demo(args) => demo::run(&opts, args).await,
        Command::Ticket { ticket } => node::print_ticket(&opts, ticket),
        Command::Bench(args) => bench::run(args).await,
        Command::Gate(args) => gate::run(&opts, args).await,
        Command::Signal(command) => signal::run(&opts, command).await,
        Command::Dht(args) => dht::run(&opts, args).await,
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
