"""Scenarios: which pairs run, what each must do, how much data, which delays.

Later issues add scenarios here (gates, dialer x listener matrices): a scenario is a function
returning `Scenario` objects, registered in SCENARIOS.
"""

from dataclasses import dataclass, field

import dialkey
import gates
import matrix
import natclass
import punchfaults
import routers
from gates import GateExpect
from punchfaults import FaultPair
from runner import Expect, Pair

MIB = 1 << 20
# A ticket without a gate: stream links (TCP) go only to gates, so a UDP-blocked peer cannot dial
# it (gate-udp-blocked is the scenario with a gate).
UDP_BLOCKED_ERROR = "could not reach"


@dataclass
class Scenario:
    name: str
    description: str
    pairs: list
    payload_bytes: int = 20 * MIB
    reply_bytes: int = 64 << 10
    delay_ms: float = 20.0
    trials: int = 2
    impair: dict = field(default_factory=dict)
    run: object = None  # None: the pair runner (runner.run_pairs); else e.g. gates.run_scenario
    params: dict = field(default_factory=dict)


def dial_public(trials=2, delay_ms=20.0):
    """A peer behind each router kind dials a public peer by ticket and streams 20 MiB."""
    pairs = []
    for kind in routers.KINDS:
        if kind == "udp-blocked":
            pairs.append(Pair(kind, "public", Expect("fail", UDP_BLOCKED_ERROR)))
        else:
            pairs.append(Pair(kind, "public"))
    return Scenario("dial-public", dial_public.__doc__, pairs, trials=trials, delay_ms=delay_ms)


def rtt(delay_ms=20.0, trials=2):
    """Two public peers; keywire's reported RTT must match the delay line (2 x one-way delay)."""
    lab_rtt = 2 * delay_ms
    window = (0.95 * lab_rtt, lab_rtt + max(10.0, 0.3 * lab_rtt))
    return Scenario(f"rtt-{delay_ms:g}ms", rtt.__doc__,
                    [Pair("public", "public", Expect("transfer", rtt_ms_range=window))],
                    payload_bytes=256 << 10, delay_ms=delay_ms, trials=trials)


def lossy(trials=2, delay_ms=20.0):
    """A peer behind a port-restricted NAT streams 4 MiB to a public peer over a path with 1%
    loss, 1% duplication and 1% reordering (1% loss caps any congestion-controlled flow near
    MSS/RTT x 1.22/sqrt(p), about 0.4 MiB/s at 40 ms: hence the smaller payload)."""
    return Scenario("lossy", lossy.__doc__, [Pair("port-restricted", "public")], trials=trials,
                    payload_bytes=4 * MIB, delay_ms=delay_ms,
                    impair={"loss": 0.01, "dup": 0.01, "reorder": 0.01})


def same_lan(trials=2, delay_ms=20.0):
    """Two peers behind the same router (hairpin on and off): the listener's ticket carries its
    LAN address, so the dial goes straight over the LAN (no NAT, no delay line)."""
    return Scenario("same-lan", same_lan.__doc__,
                    [Pair("hairpin", "hairpin"), Pair("no-hairpin", "no-hairpin")],
                    trials=trials, delay_ms=delay_ms)


# -- gates (tests/natlab/gates.py): a `keywire gate` on the public host gate1 ---------------

def gate_both_nat(trials=2, delay_ms=20.0, payload_bytes=20 * MIB):
    """Both peers behind port-restricted NATs, one gate: connect by ticket through the gate,
    stream the payload (20 MiB; CI: 4 MiB); must end direct (hole punching between two port-preserving EIM NATs)."""
    return Scenario("gate-both-nat", gate_both_nat.__doc__,
                    [Pair("port-restricted", "port-restricted", GateExpect())],
                    payload_bytes=payload_bytes, trials=trials, delay_ms=delay_ms,
                    run=gates.run_scenario)


def gate_nat_public(trials=2, delay_ms=20.0, payload_bytes=20 * MIB):
    """Listener behind a port-restricted NAT with a gate, dialer public: the direct dial is
    filtered, so the connection starts relayed and must switch to direct. Also the reverse
    (dialer behind the NAT, public listener with a gate): must end direct."""
    return Scenario("gate-nat-public", gate_nat_public.__doc__,
                    [Pair("public", "port-restricted", GateExpect(start="relayed")),
                     Pair("port-restricted", "public", GateExpect())],
                    payload_bytes=payload_bytes, trials=trials, delay_ms=delay_ms,
                    run=gates.run_scenario)


def gate_path_cut(trials=2, delay_ms=20.0, payload_bytes=12 * MIB, rate=2 * MIB):
    """Both peers behind port-restricted NATs; the payload is fed at 2 MiB/s so it is in flight
    when, 1 s after going direct, UDP between the peers' public addresses is dropped in the
    internet (the gate stays reachable): a path event back to relayed within 3 s of the cut, and
    every byte arrives."""
    return Scenario("gate-path-cut", gate_path_cut.__doc__,
                    [Pair("port-restricted", "port-restricted", GateExpect(mode="cut"))],
                    payload_bytes=payload_bytes, trials=trials, delay_ms=delay_ms,
                    run=gates.run_scenario, params={"stdin_rate": rate, "act_after_s": 1.0})


def gate_killed_while_direct(trials=2, delay_ms=20.0, payload_bytes=8 * MIB, rate=2 * MIB):
    """Both peers behind port-restricted NATs; 1 s after the path went direct the gate is
    killed (SIGKILL) with the payload (fed at 2 MiB/s) in flight: every byte must arrive."""
    return Scenario("gate-killed-while-direct", gate_killed_while_direct.__doc__,
                    [Pair("port-restricted", "port-restricted", GateExpect(mode="kill"))],
                    payload_bytes=payload_bytes, trials=trials, delay_ms=delay_ms,
                    run=gates.run_scenario, params={"stdin_rate": rate, "act_after_s": 1.0})


def gate_failover(trials=2, delay_ms=20.0, payload_bytes=8 * MIB, rate=2 * MIB):
    """Two gates (gate1, gate2) in the listener's ticket; both peers behind symmetric NATs
    (endpoint-dependent mapping on both sides: no direct path, the connection stays relayed).
    The payload is fed at 2 MiB/s; 1 s after `connected` the gate the connection uses is killed
    (SIGKILL): a path event naming the other gate within 5 s of the kill, every byte arrives."""
    return Scenario("gate-failover", gate_failover.__doc__,
                    [Pair("symmetric", "symmetric", GateExpect(start="relayed", direct=False,
                                                               mode="failover"))],
                    payload_bytes=payload_bytes, trials=trials, delay_ms=delay_ms,
                    run=gates.run_scenario, params={"stdin_rate": rate, "act_after_s": 1.0})


def gate_udp_blocked(trials=2, delay_ms=20.0, payload_bytes=20 * MIB):
    """A peer in a room whose router drops all outbound UDP (TCP passes) and a peer behind a
    port-restricted NAT, then a public one; each pair both ways round (who dials, who listens
    with the gate). The blocked peer gets no UDP answer from the gate, falls back to TCP to the
    gate's host and port after 2 s, and the connection is relayed between its TCP link and the
    other peer's UDP: it starts and stays relayed ("relayed (tcp)" on the blocked side, no
    direct path can exist), and the payload (20 MiB; CI: 4 MiB) arrives byte-identical."""
    blocked = GateExpect(start="relayed (tcp)", direct=False, listener_start="relayed")
    to_blocked = GateExpect(start="relayed", direct=False, listener_start="relayed (tcp)")
    return Scenario("gate-udp-blocked", gate_udp_blocked.__doc__,
                    [Pair("udp-blocked", "port-restricted", blocked),
                     Pair("port-restricted", "udp-blocked", to_blocked),
                     Pair("udp-blocked", "public", blocked),
                     Pair("public", "udp-blocked", to_blocked)],
                    payload_bytes=payload_bytes, trials=trials, delay_ms=delay_ms,
                    run=gates.run_scenario)


def gate_udp_unblocked(trials=2, delay_ms=20.0, payload_bytes=32 * MIB, rate=2 * MIB):
    """A peer in a udp-blocked room and a public peer, both ways round; the payload is fed at
    2 MiB/s, and 1 s after `connected` (relayed over TCP) the blocked router's UDP drop goes.
    The blocked peer's next UDP check of its gate (every 10 s) answers, its relayed connection
    searches again, and the connection must go direct within 15 s of the unblock; every byte
    arrives. (Against a peer behind a NAT this cannot work yet: the formerly blocked peer never
    told it a reflexive UDP address, so neither side can open the hole.)"""
    return Scenario("gate-udp-unblocked", gate_udp_unblocked.__doc__,
                    [Pair("udp-blocked", "public", GateExpect(start="relayed (tcp)",
                                                              mode="unblock")),
                     Pair("public", "udp-blocked", GateExpect(start="relayed", mode="unblock",
                                                              listener_start="relayed (tcp)"))],
                    payload_bytes=payload_bytes, trials=trials, delay_ms=delay_ms,
                    run=gates.run_scenario, params={"stdin_rate": rate, "act_after_s": 1.0})


def nat_classify(trials=2, delay_ms=20.0):
    """For each router kind but udp-blocked: a gate on gate1 and a `listen --gate` behind the
    router; the listener's `nat` event must come within 10 s of `listening`, report the kind's
    mapping (public, ipv6-fw: none; symmetric: endpoint-dependent; the others:
    endpoint-independent) and the room's public address."""
    return Scenario("nat-classify", nat_classify.__doc__, natclass.classify_pairs(),
                    payload_bytes=0, reply_bytes=0, trials=trials, delay_ms=delay_ms,
                    run=natclass.run_scenario, params={"nat_wait_s": 10.0})


def holepunch_matrix(trials=2, delay_ms=20.0, payload_bytes=256 << 10, direct_window_s=15.0):
    """Every ordered pair of room kinds (public, full-cone, port-restricted, snat-range,
    symmetric, cgnat, udp-blocked, ipv6-fw; plus two peers behind one router) with one gate, each
    with its expected final path: D direct, B direct by birthday probing (within 15 s), R relayed
    (never direct). 256 KiB each, held until the path is direct or 15 s passed (matrix.py)."""
    return Scenario("holepunch-matrix", holepunch_matrix.__doc__, matrix.matrix_pairs(),
                    payload_bytes=payload_bytes, trials=trials, delay_ms=delay_ms,
                    run=matrix.run_scenario, params={"direct_window_s": direct_window_s})


# -- hole punching under faults (tests/natlab/punchfaults.py) ---------------------------------

PR, SYM = "port-restricted", "symmetric"


def _faults(name, doc, pairs, trials, delay_ms, payload_bytes=256 << 10, **kw):
    return Scenario(name, doc, pairs, payload_bytes=payload_bytes, trials=trials,
                    delay_ms=delay_ms, run=punchfaults.run_scenario, **kw)


def punch_late(trials=2, delay_ms=20.0, late=(0.0, 1.0, 5.0)):
    """One gate; the listener's punching starts late: its router drops its UDP to the dialer's
    public IP until 0, 1 or 5 s after the dialer's `connected`. port-restricted ->
    port-restricted (D) and port-restricted -> symmetric (B, the symmetric side late): must go
    direct within 15 s of the lift, 256 KiB held until direct."""
    pairs = [FaultPair(PR, lst, "late", late_s=s, label=f"{s:g} s late")
             for lst in (PR, SYM) for s in late]
    return _faults("punch-late", punch_late.__doc__, pairs, trials, delay_ms)


def punch_loss(trials=2, delay_ms=20.0):
    """One gate, 5% random loss on every packet through the lab internet (the delay line's
    `loss`) for the whole trial; port-restricted -> port-restricted and port-restricted ->
    symmetric must end direct, 256 KiB held until direct."""
    return _faults("punch-loss", punch_loss.__doc__,
                   [FaultPair(PR, PR, "loss"), FaultPair(PR, SYM, "loss")], trials, delay_ms,
                   impair={"loss": 0.05})


def punch_silence(trials=2, delay_ms=20.0):
    """One gate, port-restricted -> port-restricted; once direct the dialer sends 64 KiB, then
    nothing for 3 x the UDP conntrack timeout (15 s), then the rest of 256 KiB: no fallback to
    the relay on either side (keepalives hold the NAT mappings), ends direct."""
    return _faults("punch-silence", punch_silence.__doc__, [FaultPair(PR, PR, "silence")],
                   trials, delay_ms)


def punch_flush(trials=2, delay_ms=20.0, payload_bytes=10 * MIB, rate=MIB):
    """One gate; once direct the dialer feeds 10 MiB at 1 MiB/s, and 1 s later conntrack is
    flushed on both peers' routers: every byte must arrive; whether the path stayed direct or
    fell back (and came back) is reported. port-restricted -> port-restricted, and
    port-restricted -> symmetric (direct by birthday, then the symmetric NAT re-maps)."""
    return _faults("punch-flush", punch_flush.__doc__,
                   [FaultPair(PR, PR, "flush"), FaultPair(PR, SYM, "flush")], trials, delay_ms,
                   payload_bytes=payload_bytes, params={"stdin_rate": rate, "act_after_s": 1.0})


def punch_via(trials=2, delay_ms=20.0):
    """"Connect via a peer": the introducer is a public `keywire listen --introduce`; the
    listener (port-restricted) registers with its ticket, the dialer (port-restricted) dials the
    listener's ticket: must start relayed through the introducer and end direct."""
    return _faults("punch-via", punch_via.__doc__, [FaultPair(PR, PR, "via")], trials, delay_ms)


def punch_faults_ci():
    """The short versions for `lab.py ci`: one trial of each pair (the late starts: 1 and 5 s)."""
    late = punch_late(trials=1)
    late.pairs = [p for p in late.pairs if p.late_s > 0]
    return [late, punch_loss(trials=1), punch_silence(trials=1), punch_flush(trials=1),
            punch_via(trials=1)]


# -- dial a bare key (tests/natlab/dialkey.py): DHT, MQTT, the address book, forged signalling --

def _dialkey(name, doc, pairs, trials, delay_ms, max_ttfb_rtt=40.0):
    return Scenario(name, doc, pairs, payload_bytes=256 << 10, trials=trials, delay_ms=delay_ms,
                    run=dialkey.run_scenario, params={"max_ttfb_rtt": max_ttfb_rtt})


def dialkey_dht(trials=2, delay_ms=20.0):
    """`connect <node id>` over the DHT: three public `dht serve` nodes, no gate, both peers
    behind port-restricted routers; must end direct, introduced by dht-record or dht-intro,
    first byte within 40 RTTs of spawning the dialer (target 8, reported)."""
    return _dialkey("dialkey-dht", dialkey_dht.__doc__,
                    [dialkey.DialkeyPair(PR, PR, "dht")], trials, delay_ms)


def dialkey_mqtt(trials=2, delay_ms=20.0):
    """`connect <node id>` over two mosquitto brokers, a `keywire gate` only as the observer, no
    relay, both peers behind port-restricted routers (and, as a baseline, a public listener);
    must end direct, introduced by mqtt-intro, first byte within 40 RTTs of spawning the dialer
    (target 8, reported)."""
    return _dialkey("dialkey-mqtt", dialkey_mqtt.__doc__,
                    [dialkey.DialkeyPair(PR, PR, "mqtt"),
                     dialkey.DialkeyPair(PR, "public", "mqtt")],
                    trials, delay_ms)


def dialkey_book(trials=2, delay_ms=20.0):
    """A dialkey-dht dial to a public listener, then the DHT stopped, NAT state flushed, the
    listener restarted on the same key and port: the dialer's second dial (same --book, no
    --dht) must go straight to it, introduced by address-book."""
    return _dialkey("dialkey-book", dialkey_book.__doc__,
                    [dialkey.DialkeyPair(PR, "public", "book")], trials, delay_ms)


def dialkey_forged(trials=2, delay_ms=20.0):
    """dialkey-mqtt plus an attacker on a public host who captures the dialer's introduction on
    the listener's MQTT topic, replays it 3 times after the dialer connected and publishes 3
    garbage payloads: right peer, bytes intact, listener refuses the 3 garbage, counts the 3
    replays and accepts exactly one introduction. Also with a public listener (the forgery
    checks run even where the NAT'd pair cannot connect)."""
    return _dialkey("dialkey-forged", dialkey_forged.__doc__,
                    [dialkey.DialkeyPair(PR, PR, "forged"),
                     dialkey.DialkeyPair(PR, "public", "forged")], trials, delay_ms)


def dialkey_scenarios(trials):
    return [dialkey_dht(trials), dialkey_mqtt(trials), dialkey_book(trials),
            dialkey_forged(trials)]


SCENARIOS = {
    "dial-public": dial_public,
    "rtt": rtt,
    "lossy": lossy,
    "same-lan": same_lan,
    "gate-both-nat": gate_both_nat,
    "gate-nat-public": gate_nat_public,
    "gate-path-cut": gate_path_cut,
    "gate-killed-while-direct": gate_killed_while_direct,
    "gate-failover": gate_failover,
    "gate-udp-blocked": gate_udp_blocked,
    "gate-udp-unblocked": gate_udp_unblocked,
    "nat-classify": nat_classify,
    "holepunch-matrix": holepunch_matrix,
    "punch-late": punch_late,
    "punch-loss": punch_loss,
    "punch-silence": punch_silence,
    "punch-flush": punch_flush,
    "punch-via": punch_via,
    "dialkey-dht": dialkey_dht,
    "dialkey-mqtt": dialkey_mqtt,
    "dialkey-book": dialkey_book,
    "dialkey-forged": dialkey_forged,
}


def ci_scenarios():
    """The short lab CI runs."""
    return ([dial_public(trials=2), rtt(20.0, trials=2), same_lan(trials=2),
            gate_both_nat(trials=1, payload_bytes=4 * MIB),
            gate_nat_public(trials=1, payload_bytes=4 * MIB),
            gate_path_cut(trials=1, payload_bytes=8 * MIB), gate_failover(trials=1),
            gate_udp_blocked(trials=1, payload_bytes=4 * MIB), gate_udp_unblocked(trials=1),
            nat_classify(trials=1), holepunch_matrix(trials=2)] + punch_faults_ci()
            + dialkey_scenarios(trials=1))


def bench_scenarios():
    """The long version (`keywire bench natlab`)."""
    return ([dial_public(trials=10)] + [rtt(d, trials=5) for d in (5.0, 20.0, 50.0)]
            + [lossy(trials=5), same_lan(trials=5)]
            + [gate_both_nat(trials=5), gate_nat_public(trials=5), gate_path_cut(trials=5),
               gate_killed_while_direct(trials=5), gate_failover(trials=5),
               gate_udp_blocked(trials=5), gate_udp_unblocked(trials=5),
               nat_classify(trials=5), holepunch_matrix(trials=20)]
            + [punch_late(trials=5), punch_loss(trials=5), punch_silence(trials=5),
               punch_flush(trials=5), punch_via(trials=5)]
            + dialkey_scenarios(trials=5))
