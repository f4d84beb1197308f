"""The `nat-classify` scenario: does keywire tell each router kind's NAT mapping right?

For each room kind (one pair per kind; udp-blocked has no UDP, so no gate and no event), every
trial starts a fresh gate on the public host gate1 (fresh key, port P, network id; its
observation port is P+1) and a `keywire --json listen --bind <peer>:<port> --gate <ticket>` on
the room's (first) peer, waits up to 15 s for `listening` (which must list the gate), then up to
`nat_wait_s` (10 s) for the listener's `nat` event, and stops both by PID. The listener has no
dialer, so it lives as long as the runner wants: the event must come. What is asserted:

- the event came;
- `mapping` is routers.NAT_MAPPING[kind] ("none" for a public host or the IPv6 firewall,
  "endpoint-independent" for the masquerade/snat kinds, "endpoint-dependent" for symmetric);
- `observed` (the address the gate's main port saw at registration) is the room's public
  address: the outermost router's WAN address (the carrier's for cgnat), or the host's own;
- snat-range: `port_preserving` is false (its external ports 20000-29999 exclude every local
  ephemeral port).

`port_preserving` of the other kinds is shown, not asserted (masquerade keeps the port only while
it is free). On a failure the note carries the event and the room's routers' UDP conntrack
entries towards the gate's two ports (the two mappings the gate's ports saw).
"""

import os
import random
import statistics
import time
from dataclasses import dataclass, field

import routers
from gates import GateProc, NAT_SHORT, gate_host, nat_problems, split_addr
from netns import log, ns_run
from peers import KeywireProc, bind_addr


@dataclass
class ClassifyExpect:
    mapping: str

    def describe(self):
        return f"nat event, {NAT_SHORT.get(self.mapping, self.mapping)}, public address"


@dataclass
class ClassifyPair:
    """One room kind; `dialer` and `name` are the kind (what `lab.py run --pairs` matches)."""
    kind: str
    expect: ClassifyExpect = None

    @property
    def dialer(self):
        return self.kind

    @property
    def name(self):
        return self.kind


@dataclass
class ClassifyTrial:
    kind: str
    listening: bool = False
    nat: dict = None
    nat_ms: float = None  # `listening` received -> `nat` received
    as_expected: bool = False
    note: str = ""
    notes: list = field(default_factory=list)
    seconds: float = 0.0


def classify_pairs(kinds=None):
    kinds = kinds or [k for k in routers.KINDS if routers.NAT_MAPPING.get(k)]
    return [ClassifyPair(k, ClassifyExpect(routers.NAT_MAPPING[k])) for k in kinds]


def _conntrack(lab, room, gport):
    """The room's routers' UDP conntrack entries towards the gate's two ports (for notes)."""
    lines = []
    for r in room.routers:
        out = ns_run(r.ns, ["conntrack", "-L", "-p", "udp"], check=False) or ""
        hits = [ln.strip() for ln in out.splitlines()
                if f"dport={gport} " in ln or f"dport={gport + 1} " in ln]
        lines.append(f"{r.name}: " + (" | ".join(hits) if hits else "no entry"))
    return lines


def run_classify_trial(lab, binary, sc, pair, workdir, expect=None):
    """One trial of `pair`'s kind; `expect` (a mapping) overrides the kind's (self-checks)."""
    t = ClassifyTrial(pair.kind)
    t0 = time.monotonic()
    want = expect or pair.expect.mapping
    lab.flush_state()
    room = lab.add_room(pair.kind)
    host = room.peer
    family = room.family
    g_host = gate_host(lab, 0)
    g_ip = g_host.v6 if family == 6 else g_host.v4
    trial_dir = os.path.join(workdir, f"ctrial-{time.monotonic_ns()}")
    os.makedirs(trial_dir)
    network = f"natlab-{random.getrandbits(64):016x}"
    gport = random.randrange(9000, 9998, 2)
    port = random.randint(7000, 8999)
    gate = listener = None
    problems = []
    try:
        gate = GateProc(lab, binary, g_host, gport, os.path.join(trial_dir, "gate.key"), network,
                        os.path.join(trial_dir, "gate.err"), bind_ip=g_ip)
        gev = gate.wait_ready(15)
        if not gev:
            t.note = f"gate did not start: {gate.lines[-3:]}"
            return t
        listener = KeywireProc(lab, binary, host,
                               ["listen", "--bind", bind_addr(host.addr(family), port),
                                "--gate", gev["ticket"]],
                               os.path.join(trial_dir, "listener.key"), network, None, "listener")
        hit = listener.wait_match(lambda tr, e: e.get("event") == "listening", 15)
        if not hit:
            t.note = f"listener did not start: {listener.error_text()}"
            return t
        t.listening = True
        t_listen, lev = hit
        if len(lev.get("gates") or []) != 1:
            problems.append(f"listening event lists {len(lev.get('gates') or [])} gates, expected 1")
        nat = listener.wait_match(lambda tr, e: e.get("event") == "nat",
                                  sc.params.get("nat_wait_s", 10.0))
        if nat is None:
            problems.append(f"no nat event within {sc.params.get('nat_wait_s', 10.0):g} s of "
                            f"listening (listener {'running' if listener.proc.poll() is None else 'exited ' + str(listener.proc.returncode)}"
                            f"{': ' + listener.error_text()[:300] if listener.error_text() else ''})")
        else:
            t.nat_ms = (nat[0] - t_listen) * 1000.0
            t.nat = nat[1]
            problems += nat_problems(t.nat, room, expect=want)
            if pair.kind == "snat-range" and t.nat.get("port_preserving") is not False:
                problems.append(f"port_preserving {t.nat.get('port_preserving')}, expected false "
                                f"(snat to {routers.SNAT_PORTS})")
        if problems and room.routers:
            t.notes = [f"conntrack towards the gate ({g_ip}:{gport}/{gport + 1}): "
                       + "; ".join(_conntrack(lab, room, gport))]
        t.as_expected = not problems
        t.note = "; ".join(problems)
        return t
    finally:
        if listener and listener.proc.poll() is None:
            listener.stop()
        if gate:
            gate.stop()
        t.seconds = time.monotonic() - t0


def _cell(values):
    values = [v for v in values]
    if not values:
        return "-"
    if len(set(values)) == 1:
        return str(values[0])
    return ",".join(f"{v} {values.count(v)}" for v in sorted(set(values), key=str))


def summarize(pair, trials):
    got = [t.nat for t in trials if t.nat]
    lat = [t.nat_ms for t in trials if t.nat_ms is not None]
    return {
        "pair": pair.kind,
        "expect": pair.expect.describe(),
        "trials": len(trials),
        "events": f"{len(got)}/{len(trials)}",
        "mapping": _cell([e.get("mapping") for e in got]),
        "port_preserving": _cell([e.get("port_preserving") for e in got]),
        "observers": _cell([e.get("observers") for e in got]),
        "observed": _cell([(split_addr(e.get("observed")) or ("?",))[0] for e in got]),
        "nat_ms": max(lat) if lat else None,
        "nat_ms_median": statistics.median(lat) if lat else None,
        "completed": sum(t.listening for t in trials),
        "as_expected": sum(t.as_expected for t in trials),
        "pass": bool(trials) and all(t.as_expected for t in trials),
        "notes": ([t.note for t in trials if t.note and not t.as_expected][:2]
                  + [n for t in trials if not t.as_expected for n in t.notes][:1]),
    }


COLUMNS = [
    ("pair", "kind", "{}"),
    ("trials", "trials", "{}"),
    ("events", "nat events", "{}"),
    ("mapping", "mapping", "{}"),
    ("port_preserving", "port-preserving", "{}"),
    ("observers", "observers", "{}"),
    ("observed", "observed host", "{}"),
    ("nat_ms_median", "event ms (median)", "{:.0f}"),
    ("nat_ms", "event ms (max)", "{:.0f}"),
    ("expect", "expected", "{}"),
    ("pass", "verdict", "{}"),
]
LEFT = (0, 3, 4, 6, 9)


def table_columns(sc):
    return COLUMNS, LEFT


def figures(row):
    out = []
    if row.get("nat_ms") is not None:
        out.append(("nat_event", round(row["nat_ms"]), "ms after listening (max)"))
    return out


def run_scenario(lab, binary, sc, payload, reply, workdir, verbose=True):
    """Runs nat-classify's kinds; returns its table rows (payload and reply are unused)."""
    rows = []
    for pair in sc.pairs:
        trials = []
        for i in range(sc.trials):
            t = run_classify_trial(lab, binary, sc, pair, workdir)
            trials.append(t)
            if verbose:
                ev = t.nat or {}
                log(f"{sc.name} {pair.kind} #{i + 1}: "
                    f"{'as expected' if t.as_expected else 'NOT as expected'} in {t.seconds:.1f} s"
                    f" (mapping {ev.get('mapping', '-')}, observed {ev.get('observed', '-')}, "
                    f"observers {ev.get('observers', '-')}, port_preserving "
                    f"{ev.get('port_preserving', '-')}, "
                    f"{'-' if t.nat_ms is None else round(t.nat_ms)} ms after listening)"
                    + (f": {t.note}" if t.note else ""))
        rows.append(summarize(pair, trials))
    return rows
