//! `keywire bench relay`, TCP part: relayed throughput when the caller reaches the gate over
//! TCP (a network that blocks UDP), as a ratio of the same stream relayed over UDP, same run.
//!
//! One gate and one callee (UDP) for the whole run; two callers, one registered over UDP and
//! one over a TCP link (`GateLinkMode::TcpOnly`). Each round sends one stream UDP-relayed,
//! TCP-relayed, TCP-relayed, UDP-relayed (ABBA) on fresh connections; the round's ratio is total
//! UDP time / total TCP time (TCP throughput as a fraction of UDP's). Relayed connections stay
//! relayed (`upgrade_to_direct(false)`, checked after each run).

use bytes::Bytes;
use keywire::gate::GateClient;
use keywire::{Endpoint, GateLinkConfig, GateLinkMode, NodeAddr, Path, RelayLink};

use super::relay::{bounded, gate, size_label, ALPN, CHUNK};
use super::stats::{iqr, median};
use super::throughput::{receive_keywire, send_and_wait};
use super::{config, emit};

pub(super) async fn throughput(size: u64, rounds: usize) -> anyhow::Result<()> {
    let (gate_node, _gate) = gate().await?;
    let gate_addr = NodeAddr::new(gate_node.node_id(), [gate_node.local_addr()?]);
    let server = Endpoint::bind(config(ALPN).upgrade_to_direct(false))?;
    let udp_caller = Endpoint::bind(config(ALPN).upgrade_to_direct(false))?;
    let tcp_link = GateLinkConfig::default().mode(GateLinkMode::TcpOnly);
    let tcp_caller = Endpoint::bind(config(ALPN).upgrade_to_direct(false).gate_link(tcp_link))?;
    let register = |endpoint: &Endpoint, what: &'static str| {
        let (endpoint, gate_addr) = (endpoint.clone(), gate_addr.clone());
        bounded(what, async move {
            Ok(GateClient::register(&endpoint, &gate_addr).await?)
        })
    };
    let server_gate = register(&server, "callee registers").await?;
    server.use_gate(&server_gate);
    let udp_gate = register(&udp_caller, "UDP caller registers").await?;
    let tcp_gate = register(&tcp_caller, "TCP caller registers").await?;
    anyhow::ensure!(
        tcp_gate.over_stream_link(),
        "the TCP caller registered over UDP"
    );
    let payload = Bytes::from(vec![0x5a; CHUNK]);

    let (mut ratios, mut udp_mib_s, mut tcp_mib_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut tcp_lost = Vec::new();
    for _ in 0..rounds {
        let (mut udp, mut tcp) = (0.0, 0.0);
        for tcp_turn in [false, true, true, false] {
            let (caller, via) = if tcp_turn {
                (&tcp_caller, &tcp_gate)
            } else {
                (&udp_caller, &udp_gate)
            };
            let receiver = tokio::spawn(receive_keywire(server.clone()));
            let conn = bounded("relayed connect", async {
                Ok(caller.connect_via(server.node_id(), ALPN, via).await?)
            })
            .await?;
            let seconds =
                bounded("transfer", send_and_wait(&conn, &payload, size, receiver)).await?;
            let expected = if tcp_turn {
                RelayLink::Tcp
            } else {
                RelayLink::Udp
            };
            anyhow::ensure!(
                matches!(conn.path(), Path::Relayed { link, .. } if link == expected),
                "path was {} for a {expected:?}-relayed run",
                conn.path()
            );
            if tcp_turn {
                tcp += seconds;
                tcp_lost.push(conn.stats().path.lost_packets as f64);
            } else {
                udp += seconds;
            }
            conn.close(0u32.into(), b"");
        }
        let mib = 2.0 * size as f64 / (1u64 << 20) as f64;
        udp_mib_s.push(mib / udp);
        tcp_mib_s.push(mib / tcp);
        ratios.push(udp / tcp);
    }
    let scenario = format!("loopback_{}", size_label(size));
    emit(
        &format!("relay.tcp_throughput_ratio.{scenario}"),
        median(&ratios),
        "ratio",
        None,
        serde_json::json!({ "iqr": iqr(&ratios), "rounds": rounds,
            "what": "TCP-relayed throughput / UDP-relayed throughput (caller to gate over TCP vs UDP), one stream, ABBA rounds",
            "gate_link_queue_full": gate_node.metrics().link_queue_full,
            "caller_link_queue_full": tcp_caller.metrics().link_queue_full,
            "tcp_lost_packets_per_run": median(&tcp_lost) }),
    );
    emit(
        &format!("relay.tcp_mib_per_s.{scenario}"),
        median(&tcp_mib_s),
        "MiB/s",
        Some(median(&udp_mib_s)),
        serde_json::json!({ "baseline_name": "UDP-relayed keywire, same gate and callee" }),
    );
    drop((udp_gate, tcp_gate, server_gate));
    for endpoint in [udp_caller, tcp_caller, server, gate_node] {
        endpoint.close().await;
    }
    Ok(())
}
