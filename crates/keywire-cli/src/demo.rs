//! `keywire demo`: two nodes on this machine, connected by key, data both ways, a report.
//!
//! Uses fresh keys (never the user's key file) and its own network id, binds only to loopback,
//! and needs nothing else installed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use keywire::gate::{Gate, GateConfig};
use keywire::{
    ConnectError, Endpoint, EndpointConfig, NetworkId, NodeAddr, Path, SecretKey, Ticket,
};

use crate::node::NodeOptions;
use crate::output;

const DEMO_ALPN: &[u8] = b"keywire/demo/1";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Bytes to send in each direction.
    #[arg(long, default_value_t = 8 << 20)]
    bytes: u64,
}

fn node(bind: SocketAddr) -> anyhow::Result<Endpoint> {
    let key = SecretKey::generate(&mut rand::rngs::OsRng);
    let config = EndpointConfig::new(key)
        .bind_addr(bind)
        .network(NetworkId::from_name("keywire demo"))
        .alpn(DEMO_ALPN.to_vec());
    Endpoint::bind(config).context("cannot start a demo node on loopback")
}

struct Reporter {
    json: bool,
}

impl Reporter {
    fn step(&self, event: &str, text: String, fields: serde_json::Value) {
        if self.json {
            let mut object = serde_json::json!({ "event": event });
            if let (Some(o), Some(f)) = (object.as_object_mut(), fields.as_object()) {
                o.extend(f.clone());
            }
            output::line(&object.to_string());
        } else {
            output::line(&text);
        }
    }
}

pub async fn run(opts: &NodeOptions, args: &DemoArgs) -> anyhow::Result<()> {
    let say = Reporter { json: opts.json };
    let alice = node("127.0.0.1:0".parse()?)?;
    let bob = node("127.0.0.1:0".parse()?)?;
    let ticket = Ticket::new(NodeAddr::new(alice.node_id(), [alice.local_addr()?]))?;
    say.step(
        "nodes",
        format!(
            "keywire demo: two nodes on loopback, each with a fresh ed25519 key\n  alice {} at {}\n  bob   {} at {}\n  alice's ticket: {ticket}",
            alice.node_id(), alice.local_addr()?, bob.node_id(), bob.local_addr()?
        ),
        serde_json::json!({
            "alice": alice.node_id().to_string(), "alice_addr": alice.local_addr()?.to_string(),
            "bob": bob.node_id().to_string(), "bob_addr": bob.local_addr()?.to_string(),
            "ticket": ticket.to_string(),
        }),
    );

    // Alice sends her own bytes back for everything Bob sends.
    let bytes = args.bytes;
    let alice_side = tokio::spawn({
        let alice = alice.clone();
        async move {
            let conn = alice.accept().await.context("alice's endpoint closed")?;
            let (mut send, mut recv) = conn.accept_bi().await?;
            let receive = read_hashed(&mut recv);
            let reply = async {
                let digest = write_pattern(&mut send, bytes, 0xa1).await?;
                send.finish()?;
                send.stopped().await?;
                anyhow::Ok(digest)
            };
            let (received, sent_digest) = tokio::try_join!(receive, reply)?;
            anyhow::Ok((conn.remote_node_id(), received, sent_digest))
        }
    });

    let started = Instant::now();
    let conn = bob
        .connect(&ticket.node, DEMO_ALPN)
        .await
        .context("bob could not reach alice")?;
    let connect_time = started.elapsed();
    let rtt = conn.rtt();
    say.step(
        "connected",
        format!(
            "bob dialed alice's key: TLS 1.3 proved it (raw public keys), network ids matched\n  path: direct, {} -> {}\n  set-up: {:.2} ms (QUIC handshake 1 round trip + network-id proof 1 round trip); RTT {:.3} ms",
            bob.local_addr()?, conn.remote_address(), ms(connect_time), ms(rtt)
        ),
        serde_json::json!({
            "path": "direct", "remote_addr": conn.remote_address().to_string(),
            "connect_ms": ms(connect_time), "rtt_ms": ms(rtt), "setup_round_trips_by_design": 2,
        }),
    );

    let transfer_started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let upload = async {
        let digest = write_pattern(&mut send, bytes, 0xb0).await?;
        send.finish()?;
        anyhow::Ok(digest)
    };
    let download = read_hashed(&mut recv);
    let (bob_sent, (bob_got, bob_got_digest)) = tokio::try_join!(upload, download)?;
    let (seen_key, (alice_got, alice_got_digest), alice_sent) =
        tokio::time::timeout(Duration::from_secs(60), alice_side)
            .await
            .context("alice timed out")???;
    let elapsed = transfer_started.elapsed();
    ensure!(
        seen_key == bob.node_id(),
        "alice saw a different key than bob's"
    );
    ensure!(
        alice_got == bytes && alice_got_digest == bob_sent,
        "alice's bytes differ from what bob sent"
    );
    ensure!(
        bob_got == bytes && bob_got_digest == alice_sent,
        "bob's bytes differ from what alice sent"
    );
    let stats = conn.stats();
    let mib = bytes as f64 / (1 << 20) as f64;
    say.step(
        "exchanged",
        format!(
            "exchanged {mib:.1} MiB each way in {:.1} ms, BLAKE3 checksums match both ways\n  bob sent {} UDP datagrams, received {}; {} packets lost",
            ms(elapsed), stats.udp_tx.datagrams, stats.udp_rx.datagrams, stats.path.lost_packets
        ),
        serde_json::json!({
            "bytes_each_way": bytes, "ms": ms(elapsed), "checksums_match": true,
            "udp_datagrams_sent": stats.udp_tx.datagrams, "udp_datagrams_received": stats.udp_rx.datagrams,
            "lost_packets": stats.path.lost_packets,
        }),
    );
    conn.close(0u32.into(), b"demo done");

    relayed_then_direct(&say, &alice, &bob).await?;
    by_key(&say, &alice, &bob).await?;

    // The other half of the promise: the wrong key at the right address is refused.
    let impostor = SecretKey::generate(&mut rand::rngs::OsRng).node_id();
    let refused = bob
        .connect(&NodeAddr::new(impostor, [alice.local_addr()?]), DEMO_ALPN)
        .await;
    ensure!(
        matches!(refused, Err(ConnectError::WrongPeer { .. })),
        "dialing a wrong key was not refused: {refused:?}"
    );
    say.step(
        "wrong_key_refused",
        "dialing another key at alice's address fails: wrong peer (alice cannot prove that key)"
            .into(),
        serde_json::json!({ "error": refused.err().map(|e| e.to_string()) }),
    );
    bob.close().await;
    alice.close().await;
    Ok(())
}

/// A third node runs a DHT; Alice advertises herself there, and Bob dials nothing but her key.
async fn by_key(say: &Reporter, alice: &Endpoint, bob: &Endpoint) -> anyhow::Result<()> {
    use keywire::dht::{Dht, DhtConfig, ModeSetting};
    use keywire::Discovery;
    use std::sync::Arc;

    let carol = node("127.0.0.1:0".parse()?)?;
    let mut config = DhtConfig::default();
    config.kad.mode = ModeSetting::Server;
    let carol_dht = Dht::spawn(&carol, config);
    let join = |endpoint: &Endpoint| -> anyhow::Result<Arc<Dht>> {
        let config = DhtConfig {
            bootstrap: vec![carol.local_addr()?],
            ..DhtConfig::default()
        };
        Ok(Arc::new(Dht::spawn(endpoint, config)))
    };
    alice.set_discovery(Discovery::new().dht(join(alice)?))?;
    // Bob looks for alice's record until it is stored (carol, the only server, holds it).
    let bob_dht = join(bob)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while bob_dht.lookup(alice.node_id()).await?.is_none() {
        ensure!(
            Instant::now() < deadline,
            "alice's DHT record did not appear within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted = tokio::spawn({
        let alice = alice.clone();
        async move { alice.accept().await }
    });
    bob.set_discovery(Discovery::new().dht(bob_dht).advertise(false))?;
    let started = Instant::now();
    let found = bob
        .connect_by_key(alice.node_id(), DEMO_ALPN)
        .await
        .context("bob could not dial alice by her key")?;
    let elapsed = started.elapsed();
    ensure!(found.connection.remote_node_id() == alice.node_id());
    accepted.await?.context("alice did not accept")?;
    say.step(
        "by_key",
        format!(
            "bob dialed alice by her key alone (no ticket, no address): found through {} (a DHT on loopback), connected in {:.1} ms",
            found.introduced_by,
            ms(elapsed)
        ),
        serde_json::json!({ "introduced_by": found.introduced_by.as_str(), "ms": ms(elapsed) }),
    );
    found.connection.close(0u32.into(), b"demo done");
    carol_dht.shutdown().await;
    carol.close().await;
    Ok(())
}

/// Alice joins a gate; Bob dials a ticket naming only the gate (as if Alice were behind a NAT):
/// the connection starts relayed, then the path probes find Alice's address and it goes direct.
async fn relayed_then_direct(
    say: &Reporter,
    alice: &Endpoint,
    bob: &Endpoint,
) -> anyhow::Result<()> {
    let gate_node = node("127.0.0.1:0".parse()?)?;
    let _gate = Gate::spawn(&gate_node, GateConfig::default())
        .await
        .context("cannot start the demo gate")?;
    let gate_addr = NodeAddr::new(gate_node.node_id(), [gate_node.local_addr()?]);
    alice
        .join_gate(&gate_addr)
        .await
        .context("alice could not join the gate")?;
    let behind_nat = Ticket::with_gates(NodeAddr::new(alice.node_id(), []), vec![gate_addr])?;
    let nat = alice
        .nat_report()
        .await
        .context("alice joined a gate, so she has a NAT report")?;
    say.step(
        "nat",
        format!(
            "alice asked the gate's two ports where they see her: NAT mapping {} ({} observers; loopback has no NAT)",
            nat.mapping.as_str(),
            nat.observers
        ),
        serde_json::json!({
            "mapping": nat.mapping.as_str(), "observers": nat.observers,
            "observed": nat.observed.map(|a| a.to_string()),
        }),
    );
    let echo = tokio::spawn({
        let alice = alice.clone();
        async move {
            let conn = alice.accept().await.context("alice's endpoint closed")?;
            let (mut send, mut recv) = conn.accept_bi().await?;
            tokio::io::copy(&mut recv, &mut send).await?;
            send.finish()?;
            // Keep the connection until Bob is done with it (he watches it go direct).
            conn.closed().await;
            anyhow::Ok(())
        }
    });
    let started = Instant::now();
    let conn = bob
        .connect_ticket(&behind_nat, DEMO_ALPN)
        .await
        .context("bob could not reach alice through the gate")?;
    let connect_time = started.elapsed();
    let first = conn.initial_path();
    let mut events = conn.path_events();
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"hello through the gate").await?;
    send.finish()?;
    let echoed = recv.read_to_end(64).await?;
    ensure!(
        echoed == b"hello through the gate",
        "the relayed echo came back wrong"
    );
    let upgraded = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .ok()
        .flatten();
    let to_direct = started.elapsed();
    ensure!(
        matches!(first, Path::Relayed { .. }),
        "the connection did not start relayed: {first}"
    );
    let Some(direct @ Path::Direct(_)) = upgraded else {
        anyhow::bail!("the relayed connection did not go direct within 5 s ({upgraded:?})");
    };
    say.step(
        "relayed_then_direct",
        format!(
            "alice joined a gate; bob dialed a ticket naming only the gate (as if alice were behind a NAT)\n  path: {first}, set-up {:.2} ms; an echo went through the gate\n  path probes found alice's address: now {direct}, {:.2} ms after the dial",
            ms(connect_time), ms(to_direct)
        ),
        serde_json::json!({
            "first_path": "relayed", "connect_ms": ms(connect_time),
            "path": "direct", "to_direct_ms": ms(to_direct), "remote_addr": conn.remote_address().to_string(),
        }),
    );
    conn.close(0u32.into(), b"demo done");
    tokio::time::timeout(Duration::from_secs(10), echo)
        .await
        .context("alice's echo timed out")???;
    Ok(())
}

/// Reads a stream to its end; returns the byte count and their BLAKE3 digest.
async fn read_hashed(recv: &mut keywire::quinn::RecvStream) -> anyhow::Result<(u64, blake3::Hash)> {
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
        hasher.update(&chunk.bytes);
        total += chunk.bytes.len() as u64;
    }
    Ok((total, hasher.finalize()))
}

/// Writes `len` bytes of a repeatable pattern and returns their BLAKE3 digest.
async fn write_pattern(
    send: &mut keywire::quinn::SendStream,
    len: u64,
    seed: u8,
) -> anyhow::Result<blake3::Hash> {
    let mut block = vec![0u8; 1 << 16];
    let mut hasher = blake3::Hasher::new();
    let mut left = len;
    let mut counter = 0u64;
    while left > 0 {
        for (i, b) in block.iter_mut().enumerate() {
            *b = seed ^ (i as u8).wrapping_add(counter as u8);
        }
        counter += 1;
        let n = left.min(block.len() as u64) as usize;
        hasher.update(&block[..n]);
        send.write_all(&block[..n]).await?;
        left -= n as u64;
    }
    Ok(hasher.finalize())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
