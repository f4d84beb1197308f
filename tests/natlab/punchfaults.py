"""Hole punching under faults (issue #7's remaining lab items): one introducer, a listener that
registers with it, a dialer that dials the listener's ticket; every trial must end with both
payloads byte-identical (runner.exchange_problems), plus what its mode asks for.

Modes (FaultPair.mode):
- "late":    one side's punching starts late. The late side's router drops its outbound UDP to
             the *other peer's public IP* (never to the gate) from before the dialer starts until
             `late_s` (0, 1, 5) after the dialer's `connected`, then the drop goes (the "lift").
             Timed from `connected` because punching starts when the relayed connection is up;
             the drop is in place before the dial so that not one early packet slips through.
             Must end direct, with the first direct `path` event within `limit_s` of the lift
             (timed on the dialer's clock as gates.py times its cut); a trial with late_s > 0
             must have dropped packets (else nothing was late).
- "loss":    the scenario's delay line drops 5% of all packets (every path: peer-peer and
             peer-gate) for the whole trial; must end direct.
- "silence": once direct, the dialer sends 64 KiB, then nothing for `silence_s` (3 x the lab's
             UDP conntrack timeout), then the rest; the listener's reply went at once, so both
             applications are silent. Must stay direct throughout (no `path` event to relayed on
             either side after the first direct one): keywire's keepalives hold the mappings.
- "flush":   payload fed at `rate` once direct; 1 s later conntrack is flushed on both peers'
             routers (Lab.rebind). Must complete; whether it stayed direct or fell back (and came
             back) is reported with the times, not asserted (port-restricted NATs re-create the
             same port-preserving mapping; a symmetric NAT picks a new port, so its side's
             direct path dies and the relay takes over).
- "via":     the introducer is not a `keywire gate` but a public peer running
             `keywire listen --introduce` (its ticket works as a gate ticket; stdin /dev/null,
             stopped by PID after the trial). Must start relayed through it and end direct.

Except in "flush" (which feeds at a steady rate from the moment it goes direct), the dialer's
payload is held until it reports a direct path or `window_s` passed, as in matrix.py: a small
payload would otherwise finish over the relay before the path could go direct.
"""

import os
import random
import threading
import time
from dataclasses import dataclass, field

from gates import CUT_TABLE, GateProc, dial_start, gate_host, listener_room, same_addr
from matrix import brief_events, wait_done
from netns import log, nft, ns_run
from peers import KeywireProc, bind_addr
from runner import _median, exchange_problems, run_trials

LATE_TABLE = CUT_TABLE + "late"


@dataclass
class FaultPair:
    """One row: dialer and listener room kinds, the fault, what must hold. `late_s`: how long the
    late side (the listener) is held back after `connected`; `limit_s`: the time limit for going
    direct (after the lift in "late", after the dial otherwise)."""
    dialer: str
    listener: str
    mode: str
    late_s: float = 0.0
    limit_s: float = 15.0
    silence_s: float = None  # None: 3 x the lab's UDP conntrack timeout
    label: str = ""

    @property
    def name(self):
        base = f"{self.dialer} -> {self.listener}"
        return base + (f" ({self.label})" if self.label else "")

    @property
    def expect(self):
        return self  # runner.base_row wants pair.expect.describe()

    def describe(self):
        if self.mode == "late":
            return f"listener {self.late_s:g} s late, direct <= {self.limit_s:g} s after"
        if self.mode == "loss":
            return "5% loss, ends direct"
        if self.mode == "silence":
            return ("silent 3 x UDP timeout" if self.silence_s is None
                    else f"silent {self.silence_s:g} s") + " while direct, stays direct"
        if self.mode == "flush":
            return "conntrack flushed 1 s after direct, bytes ok"
        return "via a peer, starts relayed, ends direct"


@dataclass
class FaultTrial:
    pair: FaultPair
    connected: bool = False
    completed: bool = False
    as_expected: bool = False
    start: str = ""
    final: str = ""
    went_direct: bool = False
    to_direct_ms: float = None
    lift_to_direct_ms: float = None
    late_drops: int = None
    after_fault: str = ""  # the path events after the flush, "relayed@2013,direct@5120" (ms)
    back_direct_ms: float = None
    fell_back: bool = False
    gate_used: str = ""
    seconds: float = 0.0
    note: str = ""
    notes: list = field(default_factory=list)


def _is_direct(ev):
    return ev.get("event") in ("connected", "path") and ev.get("path") == "direct"


def _is_relayed_path(ev):
    return ev.get("event") == "path" and str(ev.get("path", "")).startswith("relayed")


# -- the late side's drop -----------------------------------------------------------------------

def hold_back(router, other_ip):
    """Drops `router`'s forwarded UDP to `other_ip` (the other peer's public address) before
    the NAT and filter tables see it: the peer behind it punches nothing until the drop goes.
    Its own conntrack never confirms an entry for a dropped packet, so no mapping is made."""
    nft(router.ns, f"""table inet {LATE_TABLE} {{
  chain forward {{ type filter hook forward priority -10; policy accept;
    oifname "wan" ip daddr {other_ip} meta l4proto udp counter drop
  }}
}}""")


def late_drops(router):
    out = ns_run(router.ns, ["nft", "list", "table", "inet", LATE_TABLE], check=False)
    for word in out.split("packets ")[1:]:
        return int(word.split()[0])
    return None


def lift(router):
    ns_run(router.ns, ["nft", "delete", "table", "inet", LATE_TABLE], check=False)


def udp_entries(router, gate_ip):
    """A router's UDP conntrack entries, shortened: those to the gate in full, then up to 3
    others and how many more (a birthday attempt leaves hundreds)."""
    out = ns_run(router.ns, ["conntrack", "-L", "-p", "udp"], check=False)
    keep = ("src=", "dst=", "sport=", "dport=", "[UNREPLIED]")
    lines = [" ".join(w for w in line.split() if w.startswith(keep)) for line in out.splitlines()
             if "src=" in line]
    to_gate = [x for x in lines if f"dst={gate_ip} " in x]
    rest = [x for x in lines if x not in to_gate]
    return to_gate + rest[:3] + ([f"... {len(rest) - 3} more"] if len(rest) > 3 else [])


# -- the introducer -----------------------------------------------------------------------------

def start_introducer(lab, binary, pair, host, port, trial_dir, network):
    """(process, ticket, addr) of the introducer: a `keywire gate`, or for "via" a
    `keywire listen --introduce` (stdin /dev/null: it would otherwise wait for a pipe)."""
    if pair.mode != "via":
        g = GateProc(lab, binary, host, port, os.path.join(trial_dir, "gate.key"), network,
                     os.path.join(trial_dir, "gate.err"))
        ev = g.wait_ready(15)
        return g, (ev or {}).get("ticket"), (ev or {}).get("addr")
    p = KeywireProc(lab, binary, host, ["listen", "--introduce", "--bind", bind_addr(host.v4, port)],
                    os.path.join(trial_dir, "introducer.key"), network, None, "introducer")
    ev = p.wait_event("listening", 15) or {}
    if ev and not ev.get("introduces"):
        log(f"introducer's listening event lacks introduces: true: {ev}")
    return p, ev.get("ticket"), bind_addr(host.v4, port)


def delay_then_lift(dialer, router, late_s):
    """Lifts the late side's drop `late_s` after the dialer's `connected` (or after 30 s
    without it); returns (lift time on the runner's clock or None, packets dropped)."""
    hit = dialer.wait_match(lambda tr, e: e.get("event") == "connected", 30)
    if hit:
        time.sleep(max(0.0, hit[0] + late_s - time.monotonic()))
    drops = late_drops(router)
    lift_t = time.monotonic()
    lift(router)
    if hit:
        log(f"late side released {late_s:g} s after connected "
            f"({(lift_t - dialer.t_spawn) * 1000:.0f} ms after the dialer's spawn, "
            f"{drops} packets dropped)")
    return (lift_t if hit else None), drops


# -- one trial ------------------------------------------------------------------------------------

def run_fault_trial(lab, binary, sc, pair, payload, reply, workdir, timeout_s=120.0):
    t = FaultTrial(pair)
    t0 = time.monotonic()
    lab.flush_state()
    d_room = lab.add_room(pair.dialer)
    l_room = listener_room(lab, pair.listener)
    i_host = gate_host(lab, 0)
    trial_dir = os.path.join(workdir, f"ftrial-{time.monotonic_ns()}")
    os.makedirs(trial_dir)
    network = f"natlab-{random.getrandbits(64):016x}"
    gport = random.randrange(9000, 9998, 2)
    port = random.randint(7000, 8999)
    window_s = sc.params.get("window_s", 30.0)
    intro = listener = dialer = None
    late_router = l_room.routers[-1] if pair.mode == "late" else None
    hold = threading.Event()
    ctx = {}
    try:
        intro, ticket, t.gate_used = start_introducer(lab, binary, pair, i_host, gport,
                                                      trial_dir, network)
        if not ticket:
            t.note = "introducer did not start"
            return t
        listener = KeywireProc(lab, binary, l_room.peer,
                               ["listen", "--bind", bind_addr(l_room.peer.v4, port), "--gate", ticket],
                               os.path.join(trial_dir, "listener.key"), network, reply[0], "listener")
        ev = listener.wait_event("listening", 15)
        if not ev:
            t.note = f"listener did not start: {listener.error_text()}"
            return t
        if late_router:
            hold_back(late_router, d_room.public_ip)
        feed = {"stdin_hold": hold}
        if pair.mode == "flush":
            feed["stdin_rate"] = sc.params.get("stdin_rate", 1 << 20)
        if pair.mode == "silence":
            feed["stdin_pause"] = (64 << 10, pair.silence_s or 3 * lab.udp_timeout_s)
        dialer = KeywireProc(lab, binary, d_room.peer, ["connect", ev["ticket"]],
                             os.path.join(trial_dir, "dialer.key"), network, payload[0], "dialer",
                             **feed)
        if late_router:
            ctx["lift_t"], t.late_drops = delay_then_lift(dialer, late_router, pair.late_s)
        hit = dialer.wait_match(lambda tr, e: _is_direct(e), window_s + pair.late_s)
        hold.set()
        if pair.mode == "flush" and hit:
            time.sleep(sc.params.get("act_after_s", 1.0))  # let data flow on the direct path
            if dialer.proc.poll() is not None:
                ctx["early_end"] = True
            ctx["flush_t"] = time.monotonic()
            lab.rebind(d_room)
            lab.rebind(l_room)
            log(f"conntrack flushed on both peers' routers at "
                f"{(ctx['flush_t'] - dialer.t_spawn) * 1000:.0f} ms after the dialer's spawn")
            # What the NATs re-created (kept for the notes: the diagnosis of a failed trial).
            time.sleep(3.0)
            ctx["conntrack"] = [f"{r.name} conntrack 3 s after the flush: {udp_entries(r, i_host.v4)}"
                                for r in d_room.routers + l_room.routers]
        d_rc, l_rc = wait_done([dialer, listener], t0 + timeout_s)
        read_events(t, dialer, ctx)
        problems = exchange_problems(dialer, listener, d_rc, l_rc, payload, reply)
        t.completed = not problems
        problems += verdict(t, pair, dialer, listener, ctx)
        t.as_expected = not problems
        t.note = "; ".join(problems)
        if problems:
            t.notes = [f"dialer events: {brief_events(dialer)}",
                       f"listener events: {brief_events(listener)}"] + ctx.get("conntrack", [])
            t.notes += [f"listener said: {listener.text[-6:]}", f"dialer said: {dialer.text[-6:]}"]
        return t
    finally:
        hold.set()
        if late_router:
            lift(late_router)
        for p in (dialer, listener, intro):
            if p and p.proc.poll() is None:
                p.stop()
        t.seconds = time.monotonic() - t0


def _clock_ms(dialer, t_runner):
    """A runner-clock instant on the dialer's clock (ms since its dial start; gates.py)."""
    start = dial_start(dialer)
    return None if start is None or t_runner is None else (t_runner - start) * 1000.0


def read_events(t, dialer, ctx):
    """Fills the trial's figures from the dialer's events."""
    _, conn = dialer.event("connected")
    _, done = dialer.event("done")
    t.connected = conn is not None
    t.start = conn.get("path", "?") if conn else ""
    t.final = done.get("path", "?") if done else ""
    t.went_direct = any(_is_direct(e) for _, e in dialer.events)
    t.to_direct_ms = done.get("to_direct_ms") if done else None
    if conn and conn.get("gate"):
        ctx["conn_gate"] = conn.get("gate")
    lift_ms = _clock_ms(dialer, ctx.get("lift_t"))
    if lift_ms is not None:
        ctx["lift_ms"] = lift_ms
        directs = [e["ms"] for _, e in dialer.events if e.get("event") == "path"
                   and e.get("path") == "direct" and e.get("ms") is not None]
        after = [m for m in directs if m >= lift_ms]
        ctx["direct_before_lift"] = any(m < lift_ms for m in directs) or t.start == "direct"
        if after:
            t.lift_to_direct_ms = after[0] - lift_ms
    flush_ms = _clock_ms(dialer, ctx.get("flush_t"))
    if flush_ms is not None:
        story = [(e["ms"] - flush_ms, e.get("path")) for _, e in dialer.events
                 if e.get("event") == "path" and e.get("ms", -1) >= flush_ms]
        t.after_fault = ",".join(f"{p}@{m:.0f}" for m, p in story) or "stayed direct"
        t.fell_back = any(str(p).startswith("relayed") for _, p in story)
        backs = [m for m, p in story if p == "direct"]
        if t.fell_back and backs:
            t.back_direct_ms = backs[-1]


def relayed_after_direct(proc):
    """Whether `proc` reported a path back to relayed after its first direct path."""
    seen_direct = False
    for _, e in proc.events:
        if _is_direct(e):
            seen_direct = True
        elif seen_direct and _is_relayed_path(e):
            return True
    return False


def verdict(t, pair, dialer, listener, ctx):
    """The trial's problems against its mode (module docstring; [] when as expected)."""
    problems = []
    if pair.mode != "flush":
        if not t.went_direct:
            problems.append(f"never went direct (start {t.start or '-'}, final {t.final or '-'})")
        elif t.final != "direct":
            problems.append(f"final path {t.final or '-'}, expected direct")
    if pair.mode == "late":
        if ctx.get("lift_ms") is None:
            problems.append("no lift: the dialer never connected")
        elif ctx.get("direct_before_lift"):
            problems.append("direct before the lift: the late side was not held back")
        elif t.lift_to_direct_ms is None:
            problems.append("no direct path event after the lift")
        elif t.lift_to_direct_ms > pair.limit_s * 1000:
            problems.append(f"direct {t.lift_to_direct_ms:.0f} ms after the lift "
                            f"(limit {pair.limit_s * 1000:.0f} ms)")
        if pair.late_s > 0 and not t.late_drops:
            problems.append(f"the hold-back dropped no packets ({t.late_drops}): nothing was late")
    if pair.mode == "silence":
        if dialer.pause_t is None:
            problems.append("the dialer's stdin never paused")
        for side, proc in (("dialer", dialer), ("listener", listener)):
            if relayed_after_direct(proc):
                problems.append(f"{side} fell back to relayed after going direct")
    if pair.mode == "flush":
        if ctx.get("flush_t") is None:
            problems.append("never went direct, so no flush")
        elif ctx.get("early_end"):
            problems.append("the transfer ended before the flush: payload too small")
    if pair.mode == "via":
        if t.start != "relayed":
            problems.append(f"started {t.start or '-'}, expected relayed via the introducer")
        elif not same_addr(ctx.get("conn_gate"), t.gate_used):
            problems.append(f"relayed via {ctx['conn_gate']}, expected the introducer "
                            f"{t.gate_used}")
    return problems


# -- tables --------------------------------------------------------------------------------------

def _max(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def summarize(pair, trials, rtt_ms):
    return {
        "pair": pair.name,
        "expect": pair.describe(),
        "trials": len(trials),
        "connected": sum(t.connected for t in trials),
        "completed": sum(t.completed for t in trials),
        "as_expected": sum(t.as_expected for t in trials),
        "start": ",".join(sorted({t.start for t in trials if t.start})) or "-",
        "final": ",".join(sorted({t.final for t in trials if t.final})) or "-",
        "direct": f"{sum(t.went_direct for t in trials)}/{len(trials)}",
        "to_direct_ms": _median([t.to_direct_ms for t in trials]),
        "lift_median_ms": _median([t.lift_to_direct_ms for t in trials]),
        "lift_max_ms": _max([t.lift_to_direct_ms for t in trials]),
        "fell_back": (f"{sum(t.fell_back for t in trials)}/{len(trials)}"
                      if pair.mode == "flush" else None),
        "back_direct_ms": _max([t.back_direct_ms for t in trials]),
        "pass": bool(trials) and all(t.as_expected for t in trials),
        "notes": ([t.note for t in trials if t.note and not t.as_expected][:2]
                  + [n for t in trials if not t.as_expected for n in t.notes][:6]
                  + [f"after the flush: {t.after_fault}" for t in trials if t.after_fault][:5]),
    }


COLUMNS = [
    ("pair", "pair", "{}"),
    ("trials", "trials", "{}"),
    ("completed", "done", "{}"),
    ("start", "start", "{}"),
    ("final", "final", "{}"),
    ("direct", "direct", "{}"),
    ("to_direct_ms", "to-direct ms", "{:.0f}"),
    ("lift_median_ms", "lift->direct ms (median)", "{:.0f}"),
    ("lift_max_ms", "lift->direct ms (max)", "{:.0f}"),
    ("fell_back", "fell back", "{}"),
    ("back_direct_ms", "flush->direct again ms (max)", "{:.0f}"),
    ("expect", "expected", "{}"),
    ("pass", "verdict", "{}"),
]
LEFT = (0, 3, 4, 11)


def table_columns(sc):
    return COLUMNS, LEFT


def figures(row):
    """(figure name, value, unit) of a row for `lab.py bench`'s JSON lines."""
    out = []
    for key, name, unit in (("to_direct_ms", "faults_to_direct", "ms after the dial (median)"),
                            ("lift_max_ms", "faults_lift_to_direct", "ms after the lift (max)"),
                            ("back_direct_ms", "faults_flush_to_direct",
                             "ms after the flush (max)")):
        if row.get(key) is not None:
            out.append((name, round(row[key]), unit))
    return out


def _fmt(v):
    return "-" if v is None else f"{v:.0f}"


def fault_trial_details(t):
    """A fault trial's log line, between the brackets."""
    return (f"start {t.start or '-'}, final {t.final or '-'}, to direct "
            f"{_fmt(t.to_direct_ms)} ms, lift->direct {_fmt(t.lift_to_direct_ms)} ms, "
            f"late drops {t.late_drops}, after the flush {t.after_fault or '-'}, "
            f"introducer {t.gate_used}")


def run_scenario(lab, binary, sc, payload, reply, workdir, verbose=True):
    """Runs a fault scenario's pairs; returns its table rows."""
    return run_trials(
        sc, lambda pair: run_fault_trial(lab, binary, sc, pair, payload, reply, workdir),
        fault_trial_details, summarize, lab.rtt_ms, verbose)
