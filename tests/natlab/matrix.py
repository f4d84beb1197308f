"""The hole-punching matrix (`holepunch-matrix`): every ordered (dialer kind x listener kind) pair
with one gate, each with the final path it must reach.

Expectations (`expected`):
- D: direct (hole punching, or no punching needed); must end direct;
- B: direct by birthday probing (one side's NAT maps endpoint-dependently); must go direct
  within `direct_window_s` (15 s) of the dial in all but 1 of 20 trials and connect in all;
- R: relayed; must never go direct and must still transfer.

Rules (first match wins; each ordered pair appears once):
- a udp-blocked side -> R (relayed over TCP on the blocked side, as gate-udp-blocked checks);
- public or full-cone on either side -> D;
- ipv6-fw x ipv6-fw -> D (IPv6, stateful firewalls, no NAT);
- symmetric x symmetric -> R;
- symmetric x an EIM kind (port-restricted, snat-range, cgnat) -> B, both orders;
- EIM x EIM (port-restricted, snat-range, cgnat) -> D;
- two peers behind one router (hairpin, no-hairpin, port-restricted, symmetric) -> D over host
  candidates or hairpin, and never relayed (`connected` direct, no relayed path event).
ipv6-fw is IPv6-only and every NAT room IPv4-only, so ipv6-fw meets only public (dual-stack)
and itself; those pairs run over IPv6 with the gate on its IPv6 address.

Each trial (gates.py's recipe): a fresh gate on gate1, a listener with the gate in its ticket, a
dialer that dials the ticket. The listener sends a 64 KiB reply at once; the dialer's payload
(256 KiB) is held back until the dialer reports a direct path or `direct_window_s` passed (for
pairs with a udp-blocked side, where no UDP leaves, until `connected`): a small payload would
otherwise finish over the relay before the path could go direct, and a relayed pair is watched
for the whole window before it counts as never direct.

Recorded per trial, all from keywire's JSON events: the final path (`done.path`), time to first
byte (the dialer's `done.first_byte_ms`: dial start -> the listener's first reply byte; not delayed
by the held payload), time to direct (`done.to_direct_ms`), time from the introduction to direct
(estimated, below), and the probes both sides sent (`done.probes_sent`, plus
`done.birthday_probes_sent` once keywire reports it). Times also in lab RTTs.

The introduction is not visible in events; its time is estimated on the dialer's clock as the
relayed `connected` minus one relayed round trip (2 lab RTTs: the QUIC handshake dialer -> gate ->
listener -> gate -> dialer, with the network proof in 0.5-RTT data), since the gate sends the
Introduction to both peers at the moment the dialer's request arrives. A connection that starts
direct needed no introduction (shown as "-"). The 2-RTT target for D pairs is reported, not
asserted.
"""

import os
import random
import threading
import time
from dataclasses import dataclass, field

import routers
from gates import GateProc, gate_host, listener_room
from netns import log
from peers import KeywireProc, bind_addr
from runner import _median, exchange_problems, run_trials
from topology import Room

# Room kinds of the matrix (the order of its table).
KINDS = ["public", "full-cone", "port-restricted", "snat-range", "symmetric", "cgnat",
         "udp-blocked", "ipv6-fw"]
OPEN = ("public", "full-cone")
EIM = ("port-restricted", "snat-range", "cgnat")
# Two peers behind one router: rooms with two peers exist for these (hairpin, no-hairpin), or are
# built here (one router, two peers: cheap).
SAME_ROOM_KINDS = ["hairpin", "no-hairpin", "port-restricted", "symmetric"]
EXPECT_NAMES = {"D": "direct", "B": "direct (birthday)", "R": "relayed"}


def expectation(dialer, listener):
    """D, B or R for a pair of different rooms (module docstring); None: no common family."""
    pair = (dialer, listener)
    if (routers.KINDS[dialer][1] == 6) != (routers.KINDS[listener][1] == 6) \
            and "public" not in pair:
        return None  # an IPv6-only room and an IPv4-only one cannot meet
    if "udp-blocked" in pair:
        return "R"
    if dialer in OPEN or listener in OPEN:
        return "D"
    if pair == ("ipv6-fw", "ipv6-fw"):
        return "D"
    if pair == ("symmetric", "symmetric"):
        return "R"
    if "symmetric" in pair:
        return "B"
    return "D"


@dataclass
class MatrixPair:
    """One ordered pair; `same_room`: both peers behind one router. `dialer`/`name` are what
    `lab.py run --pairs` matches."""
    dialer: str
    listener: str
    expect: str
    same_room: bool = False

    @property
    def name(self):
        return f"{self.dialer} -> {self.listener}" + (" (same room)" if self.same_room else "")

    @property
    def family(self):
        return 6 if "ipv6-fw" in (self.dialer, self.listener) else 4

    @property
    def structural_relay(self):
        """No direct path can exist at all: no UDP leaves a udp-blocked room."""
        return "udp-blocked" in (self.dialer, self.listener)

    def describe(self):
        out = f"{self.expect}: {EXPECT_NAMES[self.expect]}"
        return out + (", never relayed" if self.same_room else "")


def matrix_pairs():
    """Every ordered pair once: different rooms first (KINDS order), then same-room pairs."""
    pairs, seen = [], set()
    for d in KINDS:
        for lst in KINDS:
            exp = expectation(d, lst)
            if exp and (d, lst) not in seen:
                seen.add((d, lst))
                pairs.append(MatrixPair(d, lst, exp))
    return pairs + [MatrixPair(k, k, "D", same_room=True) for k in SAME_ROOM_KINDS]


def same_room(lab, kind):
    """A room with two peers behind one router of `kind` (hairpin/no-hairpin: the lab's own)."""
    if kind in routers.ROOM_PEERS:
        return lab.add_room(kind)
    key = f"s-{kind}"
    if key not in lab.rooms:
        r = lab.add_router(f"r-{key}", routers.ROUTER_OF_ROOM[kind])
        lab.rooms[key] = Room(kind, [lab.add_peer(r, f"{key}-{c}") for c in "ab"], [r], 4)
    return lab.rooms[key]


def hosts_of(lab, pair):
    """(dialer host, listener host) of a pair; builds the rooms it needs."""
    if pair.same_room:
        room = same_room(lab, pair.dialer)
        return room.peers[0], room.peers[1]
    return lab.add_room(pair.dialer).peer, listener_room(lab, pair.listener).peer


@dataclass
class MatrixTrial:
    pair: MatrixPair
    connected: bool = False
    completed: bool = False
    as_expected: bool = False
    start: str = ""
    final: str = ""
    went_direct: bool = False
    went_relayed: bool = False
    connect_ms: float = None
    ttfb_ms: float = None
    to_direct_ms: float = None
    after_intro_ms: float = None
    probes: int = None
    birthday_probes: int = None
    seconds: float = 0.0
    note: str = ""
    notes: list = field(default_factory=list)


def _is_direct(ev):
    return ev.get("event") in ("connected", "path") and ev.get("path") == "direct"


def _sum_field(events, key):
    """Sum of `key` over the `done` events given (None if none has it)."""
    values = [ev.get(key) for ev in events if ev and ev.get(key) is not None]
    return sum(values) if values else None


def release_when_ready(dialer, pair, window_s, hold):
    """Holds the dialer's payload until it reports a direct path (or `window_s` after its spawn;
    udp-blocked pairs: until `connected`), then releases it."""
    try:
        if pair.structural_relay:
            dialer.wait_event("connected", window_s)
        else:
            dialer.wait_match(lambda tr, e: _is_direct(e), window_s)
    finally:
        hold.set()


def wait_done(procs, deadline, grace_s=0.3):
    """The exit codes of both pipe sides, counting a side that reported `done` as 0 once `grace_s`
    has passed: after `done` (every byte written out, the transfer confirmed) keywire only waits
    for its connections to close, and its registration with the gate is never closed, so it would
    sit out `Endpoint::wait_idle`'s 3 s in every trial; the matrix stops it instead."""
    done = [p.wait_event("done", max(1.0, deadline - time.monotonic())) for p in procs]
    grace_end = time.monotonic() + grace_s
    rcs = []
    for p, d in zip(procs, done):
        left = grace_end - time.monotonic() if d else deadline - time.monotonic()
        rc = p.wait(max(0.0, left))
        rcs.append(0 if rc is None and d else rc)
    return rcs


def read_events(t, dialer, listener, rtt_ms):
    """Fills the trial's figures from both sides' events."""
    _, conn = dialer.event("connected")
    _, done = dialer.event("done")
    _, l_done = listener.event("done")
    t.connected = conn is not None
    t.start = conn.get("path", "?") if conn else ""
    t.connect_ms = conn.get("connect_ms") if conn else None
    t.final = done.get("path", "?") if done else ""
    t.went_direct = any(_is_direct(e) for _, e in dialer.events)
    t.went_relayed = any(e.get("event") in ("connected", "path")
                         and str(e.get("path", "")).startswith("relayed") for _, e in dialer.events)
    if done:
        t.ttfb_ms = done.get("first_byte_ms")
        t.to_direct_ms = done.get("to_direct_ms")
    t.probes = _sum_field([done, l_done], "probes_sent")
    t.birthday_probes = _sum_field([done, l_done], "birthday_probes_sent")
    if t.to_direct_ms is not None and t.start.startswith("relayed") and t.connect_ms is not None:
        # Introduction ~ relayed connect - one relayed round trip (module docstring).
        t.after_intro_ms = t.to_direct_ms - (t.connect_ms - 2 * rtt_ms)


def verdict(t, pair, dialer, listener, window_s):
    """The trial's problems against its expectation ([]: as expected)."""
    problems = []
    if pair.expect in ("D", "B"):
        if not t.went_direct:
            problems.append(f"never went direct (start {t.start or '-'}, final {t.final or '-'})")
        elif t.to_direct_ms is None or t.to_direct_ms > window_s * 1000:
            problems.append(f"direct at {t.to_direct_ms} ms, later than {window_s:g} s")
        elif t.final != "direct":
            problems.append(f"final path {t.final or '-'}, expected direct")
        if pair.same_room and (t.start != "direct" or t.went_relayed):
            problems.append(f"relayed in the same room (start {t.start or '-'})")
    else:
        if t.went_direct or t.final == "direct" or t.to_direct_ms is not None \
                or any(_is_direct(e) for _, e in listener.events):
            problems.append("went direct: expected relayed only")
        for side, proc, kind in (("dialer", dialer, pair.dialer),
                                 ("listener", listener, pair.listener)):
            _, c = proc.event("connected")
            if kind == "udp-blocked" and c and c.get("path") != "relayed (tcp)":
                problems.append(f"{side} (udp-blocked) connected {c.get('path')}, "
                                "expected relayed (tcp)")
    return problems


# The event fields that tell a path story (tickets and node ids would drown it).
BRIEF_KEYS = ("event", "path", "connect_ms", "ms", "addr", "candidates", "mapping", "observed",
              "to_direct_ms", "probes_sent", "birthday_probes_sent")


def brief_events(proc):
    """A side's events, cut to BRIEF_KEYS, times rounded (for the notes of a failed trial)."""
    out = []
    for _, ev in proc.events:
        if ev.get("event") == "listening":
            out.append({"event": "listening", "direct_addrs": ev.get("direct_addrs")})
            continue
        out.append({k: round(v) if isinstance(v, float) else v
                    for k, v in ev.items() if k in BRIEF_KEYS and v is not None})
    return out


def run_matrix_trial(lab, binary, sc, pair, payload, reply, workdir, timeout_s=90.0):
    t = MatrixTrial(pair)
    t0 = time.monotonic()
    window_s = sc.params.get("direct_window_s", 15.0)
    lab.flush_state()
    d_host, l_host = hosts_of(lab, pair)
    g_host = gate_host(lab, 0)
    trial_dir = os.path.join(workdir, f"mtrial-{time.monotonic_ns()}")
    os.makedirs(trial_dir)
    network = f"natlab-{random.getrandbits(64):016x}"
    gport = random.randrange(9000, 9998, 2)
    port = random.randint(7000, 8999)
    gate = listener = dialer = None
    hold = threading.Event()
    try:
        gate = GateProc(lab, binary, g_host, gport, os.path.join(trial_dir, "gate.key"), network,
                        os.path.join(trial_dir, "gate.err"), bind_ip=g_host.addr(pair.family))
        gev = gate.wait_ready(15)
        if not gev:
            t.note = f"gate did not start: {gate.lines[-3:]}"
            return t
        listener = KeywireProc(lab, binary, l_host,
                               ["listen", "--bind", bind_addr(l_host.addr(pair.family), port),
                                "--gate", gev["ticket"]],
                               os.path.join(trial_dir, "listener.key"), network, reply[0], "listener")
        ev = listener.wait_event("listening", 15)
        if not ev:
            t.note = f"listener did not start: {listener.error_text()}"
            return t
        dialer = KeywireProc(lab, binary, d_host, ["connect", ev["ticket"]],
                             os.path.join(trial_dir, "dialer.key"), network, payload[0], "dialer",
                             stdin_hold=hold)
        release_when_ready(dialer, pair, window_s, hold)
        d_rc, l_rc = wait_done([dialer, listener], t0 + timeout_s)
        read_events(t, dialer, listener, lab.rtt_ms)
        problems = exchange_problems(dialer, listener, d_rc, l_rc, payload, reply)
        t.completed = not problems
        problems += verdict(t, pair, dialer, listener, window_s)
        t.as_expected = not problems
        t.note = "; ".join(problems)
        if problems:
            t.notes = [f"dialer events: {brief_events(dialer)}",
                       f"listener events: {brief_events(listener)}"]
        return t
    finally:
        hold.set()
        for p in (dialer, listener):
            if p and p.proc.poll() is None:
                p.stop()
        if gate:
            gate.stop()
        t.seconds = time.monotonic() - t0


def pair_passes(pair, trials):
    """D and R: every trial as expected. B: every trial connected and transferred, and at most 1
    in 20 (rounded down: none of 2) not direct within the window."""
    if not trials:
        return False
    if pair.expect != "B":
        return all(t.as_expected for t in trials)
    misses = sum(not t.as_expected for t in trials)
    return all(t.completed for t in trials) and misses <= len(trials) // 20


def _rtt(ms, rtt_ms):
    return None if ms is None else ms / rtt_ms


def summarize(pair, trials, rtt_ms):
    after = [t.after_intro_ms for t in trials if t.went_direct]
    return {
        "pair": pair.name,
        "expected": pair.expect,
        "expect": pair.describe(),
        "trials": len(trials),
        "connected": sum(t.connected for t in trials),
        "completed": sum(t.completed for t in trials),
        "as_expected": sum(t.as_expected for t in trials),
        "successes": f"{sum(t.as_expected for t in trials)}/{len(trials)}",
        "final": ",".join(sorted({t.final for t in trials if t.final})) or "-",
        "ttfb_rtt": _rtt(_median([t.ttfb_ms for t in trials]), rtt_ms),
        "to_direct_rtt": _rtt(_median([t.to_direct_ms for t in trials]), rtt_ms),
        "after_intro_rtt": _rtt(_median(after), rtt_ms),
        "within_2rtt": (f"{sum(1 for a in after if a is None or a <= 2 * rtt_ms)}/{len(after)}"
                        if pair.expect == "D" and after else None),
        "probes": _median([t.probes for t in trials]),
        "birthday_probes": _median([t.birthday_probes for t in trials]),
        "pass": pair_passes(pair, trials),
        "notes": ([t.note for t in trials if t.note and not t.as_expected][:2]
                  + [n for t in trials if not t.as_expected for n in t.notes][:2]),
    }


COLUMNS = [
    ("pair", "pair", "{}"),
    ("expected", "expected", "{}"),
    ("trials", "trials", "{}"),
    ("successes", "successes", "{}"),
    ("final", "final", "{}"),
    ("ttfb_rtt", "ttfb RTTs", "{:.1f}"),
    ("to_direct_rtt", "to-direct RTTs", "{:.1f}"),
    ("after_intro_rtt", "intro->direct RTTs", "{:.1f}"),
    ("within_2rtt", "<=2 RTTs", "{}"),
    ("probes", "probes", "{:g}"),
    ("birthday_probes", "birthday probes", "{:g}"),
    ("pass", "verdict", "{}"),
]
LEFT = (0, 1, 4)


def table_columns(sc):
    return COLUMNS, LEFT


def figures(row):
    """(figure name, value, unit) of a row for `lab.py bench`'s JSON lines."""
    out = [("matrix_as_expected", row["as_expected"], f"of {row['trials']} trials")]
    for key, name, unit in (("ttfb_rtt", "matrix_ttfb", "lab RTTs"),
                            ("to_direct_rtt", "matrix_to_direct", "lab RTTs"),
                            ("after_intro_rtt", "matrix_intro_to_direct", "lab RTTs (est.)"),
                            ("probes", "matrix_probes", "probes sent, both sides (median)")):
        if row.get(key) is not None:
            out.append((name, round(row[key], 2), unit))
    return out


def _fmt(v, scale=1.0):
    return "-" if v is None else f"{v / scale:.1f}"


def matrix_trial_details(t, rtt_ms):
    """A matrix trial's log line, between the brackets."""
    return (f"start {t.start or '-'}, final {t.final or '-'}, ttfb {_fmt(t.ttfb_ms)} ms, "
            f"to direct {_fmt(t.to_direct_ms)} ms = {_fmt(t.to_direct_ms, rtt_ms)} RTTs, "
            f"intro->direct {_fmt(t.after_intro_ms, rtt_ms)} RTTs, probes {t.probes}, "
            f"birthday probes {t.birthday_probes}")


def run_scenario(lab, binary, sc, payload, reply, workdir, verbose=True):
    """Runs the matrix's pairs; returns its table rows."""
    return run_trials(
        sc, lambda pair: run_matrix_trial(lab, binary, sc, pair, payload, reply, workdir),
        lambda t: matrix_trial_details(t, lab.rtt_ms), summarize, lab.rtt_ms, verbose,
        show_expect=True)

