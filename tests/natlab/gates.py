"""Gate scenarios: a `keywire gate` on a public host; the listener registers with it and puts it
in its ticket; the dialer dials the ticket (directly and through the gate at once).

Every trial starts a fresh gate (fresh key, port, network id), a listener and a dialer, and
stops all three (by PID). What is asserted comes from keywire's JSON events only:
- `connected.path`: how the connection started ("direct" | "relayed");
- `path` events: each switch, `ms` since the dialer's dial start (listener: since its accept);
- `done.path` (final path), `done.to_direct_ms`, `done.path_changes`;
- `nat` (each side, when it came): the NAT mapping the gate's two ports saw, checked against the
  side's room kind (routers.NAT_MAPPING) and its public address. keywire emits it in the
  background after `listening`/`connected` (up to ~1.5 s later), so a process that exits first
  never says it: a missing event is noted, never failed; a wrong one fails the trial. The
  `nat-classify` scenario (natclass.py) is where presence is asserted, one listener per kind.

Modes (Scenario.params["mode"]):
- "transfer": stream the payload; the expectation says how it must start and end;
- "cut":      once direct, drop UDP between the two peers' public addresses in the internet
              namespace (the gate stays reachable); a `path` event back to "relayed" must come
              within `fallback_limit_s` of the cut; the transfer must still complete;
- "kill":     once direct, SIGKILL the gate; the transfer must still complete;
- "unblock":  one peer sits in a udp-blocked room (it reaches the gate over TCP); 1 s after
              `connected` its router's UDP drop goes (the ruleset becomes port-restricted's, the
              same masquerade without the drop): a `path` event to direct must come within
              `unblock_limit_s`, the transfer must still complete; the drop comes back after
              the trial;
- "failover": two gates (gate1, gate2), both in the listener's ticket, peers whose NATs allow no
              direct path (the connection must start relayed and never go direct); 1 s after
              `connected`, SIGKILL the gate the connection uses (`connected.gate`): a `path`
              event, still "relayed", naming the *other* gate must come within
              `failover_limit_s` of the kill, the transfer must still complete, and `done.gate`
              must be the other gate.

Clocks: the runner notes the cut on its monotonic clock just *before* running nft; keywire's
`ms` counts from the dialer's dial start, which comes after process start-up. The dial start on
the runner's clock is estimated as min(receive time - ms) over the dialer's events: each event
is received after it was written, so this is never earlier than the true dial start. The cut time
on the dialer's clock is thus never later than the truth and the measured fallback delay never
shorter than the truth (the error is the event's pipe latency, well under a millisecond). The
gate kill of "failover" mode is timed the same way: noted just *before* the SIGKILL, mapped to
the dialer's clock through the same estimate, so the measured failover delay is never shorter
than the truth either.
"""

import ipaddress
import json
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import routers
from netns import log, nft, ns_run
from peers import KeywireProc, bind_addr
from runner import _median, base_row, exchange_problems, run_trials
from topology import Room

GATE_HOSTS = [("gate1", "192.0.2.50", "2001:db8:200::50"),  # public hosts of their own
              ("gate2", "192.0.2.51", "2001:db8:200::51")]
CUT_TABLE = "kwcut"


@dataclass
class GateExpect:
    """start: required initial path (None: either); direct: must end direct (and have gone
    direct); fallback_limit_s: in "cut" mode, the limit for the path event back to relayed;
    failover_limit_s: in "failover" mode, the limit for the path event naming the other gate;
    listener_start: the listener's required initial path (None: either), e.g. "relayed (tcp)"
    for a listener in a room that blocks UDP."""
    start: str = None
    direct: bool = True
    fallback_limit_s: float = 3.0
    mode: str = "transfer"
    failover_limit_s: float = 5.0
    listener_start: str = None
    unblock_limit_s: float = 15.0

    def describe(self):
        parts = ["bytes ok"]
        if self.start:
            parts.append(f"starts {self.start}")
        if self.listener_start:
            parts.append(f"listener {self.listener_start}")
        if self.mode == "cut":
            parts.append(f"direct, cut, relayed <= {self.fallback_limit_s:g} s")
        elif self.mode == "unblock":
            parts.append(f"UDP unblocked, direct <= {self.unblock_limit_s:g} s")
        elif self.mode == "kill":
            parts.append("direct, gate killed")
        elif self.mode == "failover":
            parts.append(f"never direct, gate killed, other gate <= {self.failover_limit_s:g} s")
        elif self.direct:
            parts.append("ends direct")
        return ", ".join(parts)


class GateProc:
    """`keywire --json gate`: its one stdout JSON line is the `gate` event."""

    def __init__(self, lab, binary, host, port, keyfile, network, logfile, bind_ip=None):
        self.lab = lab
        self.event = None
        self._got = threading.Event()
        self._err = open(logfile, "wb")
        self.proc = lab.reg.spawn(
            host.ns, [binary, "--key", keyfile, "--network", network, "--json", "gate",
                      "--bind", bind_addr(bind_ip or host.v4, port), "--report-every", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._err)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            self.lines.append(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and ev.get("event") == "gate" and self.event is None:
                self.event = ev
                self._got.set()
        self._got.set()

    def wait_ready(self, timeout):
        self._got.wait(timeout)
        return self.event

    def kill(self):
        """SIGKILL, no goodbye: the gate vanishes as a crashed or unplugged one would."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def stop(self):
        self.lab.reg.stop(self.proc)
        self._reader.join(timeout=5)
        self._err.close()


def gate_host(lab, index=0):
    name, v4, v6 = GATE_HOSTS[index]
    return lab.hosts.get(name) or lab.add_public_host(name, v4, v6)


NAT_SHORT = {"none": "none", "endpoint-independent": "EIM", "endpoint-dependent": "EDM",
             "unknown": "unknown"}


def split_addr(text):
    """(host, port) of a socket address string; an IPv4 address spelt v4-mapped is unmapped."""
    if not text:
        return None
    host, _, port = str(text).rpartition(":")
    host = host.strip("[]").lower()
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]
    return host, port


def nat_problems(ev, room, expect=None):
    """What is wrong with a `nat` event of a peer in `room` (empty: it fits): the mapping must be
    routers.NAT_MAPPING's for the room kind, and the observed address must be the room's public
    address (the outermost router's WAN address, or the host's own). `expect`: another mapping
    to demand (the self-checks)."""
    want = expect or routers.NAT_MAPPING.get(room.kind)
    out = []
    if ev.get("mapping") != want:
        out.append(f"mapping {ev.get('mapping')}, expected {want} for {room.kind} "
                   f"(observed {ev.get('observed')}, observers {ev.get('observers')}, "
                   f"port_preserving {ev.get('port_preserving')})")
    seen = split_addr(ev.get("observed"))
    try:
        same_host = bool(seen) and ipaddress.ip_address(seen[0]) == ipaddress.ip_address(room.public_ip)
    except ValueError:
        same_host = False
    if not same_host:
        out.append(f"observed {ev.get('observed')}, expected the room's public address "
                   f"{room.public_ip}")
    return out


def nat_cell(events):
    """A table cell for one side's `nat` events over the trials (None: no event): the short
    mapping, with counts when the trials differ ("-": no event)."""
    names = [NAT_SHORT.get(e.get("mapping"), str(e.get("mapping"))) if e else "-" for e in events]
    if not names:
        return "-"
    if len(set(names)) == 1:
        return names[0]
    return ",".join(f"{n} {names.count(n)}" for n in sorted(set(names)))


def same_addr(a, b):
    """Whether two socket address strings name the same IPv4/IPv6 address and port (an IPv4
    address may appear v4-mapped, `[::ffff:192.0.2.50]:9000`, on a dual-stack socket)."""
    return split_addr(a) is not None and split_addr(a) == split_addr(b)


def listener_room(lab, kind):
    """The listener's room: pub1 if public, else a router of `kind` of its own (so that both
    peers can sit behind routers of the same kind); cgnat: a home router behind a carrier router
    of its own; ipv6-fw: an IPv6 room."""
    key = f"gl-{kind}"
    if key in lab.rooms:
        return lab.rooms[key]
    if kind == "public":
        room = Room(kind, [lab.hosts["pub1"]], [], 4)
    elif kind == "cgnat":
        carrier = lab.add_router(f"r-{key}-carrier", "carrier")
        home = lab.add_router(f"r-{key}-home", "port-restricted", upstream=carrier)
        room = Room(kind, [lab.add_peer(home, f"{key}-a")], [carrier, home], 4)
    else:
        if kind not in routers.ROUTER_OF_ROOM or kind in routers.ROOM_PEERS:
            raise ValueError(f"gate scenarios: unsupported listener kind {kind!r}")
        r = lab.add_router(f"r-{key}", routers.ROUTER_OF_ROOM[kind])
        room = Room(kind, [lab.add_peer(r, f"{key}-a")], [r], routers.KINDS[kind][1])
    lab.rooms[key] = room
    return room


def cut_direct(lab, a, b):
    """Drops UDP between public addresses a and b in the internet namespace (every packet
    between hosts crosses it), leaving traffic to and from anyone else (the gate) alone."""
    nft(lab.inet, f"""table inet {CUT_TABLE} {{
  chain forward {{ type filter hook forward priority -10; policy accept;
    ip saddr {{ {a}, {b} }} ip daddr {{ {a}, {b} }} meta l4proto udp counter drop
  }}
}}""")


def set_udp_blocked(lab, room, blocked):
    """Gives the routers of `room` (a udp-blocked room) their own ruleset (blocked) or
    port-restricted's, the same masquerade without the UDP drop (unblocked)."""
    kind = "udp-blocked" if blocked else "port-restricted"
    for r in room.routers:
        nft(r.ns, "flush ruleset\n" + routers.ruleset(
            kind, r.wan_v4, str(r.lan_v4) if r.lan_v4 else None, lab.udp_timeout_s))


def uncut(lab):
    ns_run(lab.inet, ["nft", "delete", "table", "inet", CUT_TABLE], check=False)


def cut_drops(lab):
    out = ns_run(lab.inet, ["nft", "list", "table", "inet", CUT_TABLE], check=False)
    for word in out.split("packets ")[1:]:
        return int(word.split()[0])
    return None


@dataclass
class GateTrial:
    pair: object
    connected: bool = False
    completed: bool = False
    as_expected: bool = False
    start: str = ""
    final: str = ""
    went_direct: bool = False
    connect_ms: float = None
    to_direct_ms: float = None
    changes: int = None
    fallback_ms: float = None
    listener_fallback_ms: float = None
    unblock_ms: float = None
    failover_ms: float = None
    listener_failover_ms: float = None
    killed_gate: str = ""
    new_gate: str = ""
    dial_offset_ms: float = None
    cut_drops: int = None
    mib_s: float = None
    d_nat: dict = None  # the dialer's `nat` event, if it came
    l_nat: dict = None  # the listener's
    seconds: float = 0.0
    note: str = ""
    notes: list = field(default_factory=list)


def _is_direct(t, ev):
    return (ev.get("event") in ("connected", "path")) and ev.get("path") == "direct"


def dial_start(proc):
    """Estimated dial start on the runner's clock (see the module docstring)."""
    cands = []
    for t, ev in proc.events:
        if ev.get("event") == "path" and ev.get("ms") is not None:
            cands.append(t - ev["ms"] / 1000.0)
        elif ev.get("event") == "connected" and ev.get("connect_ms") is not None:
            cands.append(t - ev["connect_ms"] / 1000.0)
    return min(cands) if cands else None


def run_gate_trial(lab, binary, sc, pair, payload, reply, workdir, timeout_s=90.0):
    exp = pair.expect
    mode = exp.mode
    t = GateTrial(pair)
    t0 = time.monotonic()
    lab.flush_state()
    d_room = lab.add_room(pair.dialer)
    l_room = listener_room(lab, pair.listener)
    n_gates = 2 if mode == "failover" else 1
    g_hosts = [gate_host(lab, i) for i in range(n_gates)]
    d_host, l_host = d_room.peer, l_room.peer
    trial_dir = os.path.join(workdir, f"gtrial-{time.monotonic_ns()}")
    os.makedirs(trial_dir)
    network = f"natlab-{random.getrandbits(64):016x}"
    gport = random.randrange(9000, 9998, 2)
    port = random.randint(7000, 8999)
    rate = sc.params.get("stdin_rate")
    gate = listener = dialer = None
    gate_procs = []
    gevs = []
    cut = False
    unblocked = None  # the room whose UDP drop was lifted
    problems = []
    try:
        for i, g_host in enumerate(g_hosts):
            name = f"gate{i + 1}" if n_gates > 1 else "gate"
            g = GateProc(lab, binary, g_host, gport, os.path.join(trial_dir, f"{name}.key"),
                         network, os.path.join(trial_dir, f"{name}.err"))
            gate_procs.append(g)
            gev = g.wait_ready(15)
            if not gev:
                t.note = f"{name} did not start: {g.lines[-3:]}"
                return t
            gevs.append(gev)
        gate = gate_procs[0]
        gate_args = []
        for gev in gevs:
            gate_args += ["--gate", gev["ticket"]]
        listener = KeywireProc(lab, binary, l_host,
                               ["listen", "--bind", bind_addr(l_host.v4, port)] + gate_args,
                               os.path.join(trial_dir, "listener.key"), network, reply[0], "listener")
        ev = listener.wait_event("listening", 15)
        if not ev:
            t.note = f"listener did not start: {listener.error_text()}"
            return t
        if len(ev.get("gates") or []) != n_gates:
            problems.append(f"listener ticket carries {len(ev.get('gates') or [])} gates, "
                            f"expected {n_gates}: {ev}")
        dialer = KeywireProc(lab, binary, d_host, ["connect", ev["ticket"]],
                             os.path.join(trial_dir, "dialer.key"), network, payload[0], "dialer",
                             stdin_rate=rate)
        t_act = None
        if mode == "failover":
            hit = dialer.wait_match(lambda tr, e: e.get("event") == "connected", 30)
            conn_ev = hit[1] if hit else None
            used = [i for i, gev in enumerate(gevs) if conn_ev and same_addr(conn_ev.get("gate"), gev["addr"])]
            if conn_ev is None:
                problems.append("not connected within 30 s, so no gate kill")
            elif conn_ev.get("path") != "relayed" or not used:
                problems.append(f"connected {conn_ev.get('path')} via gate {conn_ev.get('gate')} "
                                f"(gates {[g['addr'] for g in gevs]}): no relayed connection to fail over")
            else:
                time.sleep(sc.params.get("act_after_s", 1.0))  # let data flow on the relay
                if dialer.proc.poll() is not None:
                    problems.append("the transfer ended before the kill: payload too small")
                gate = gate_procs[used[0]]
                t.killed_gate, t.new_gate = gevs[used[0]]["addr"], gevs[1 - used[0]]["addr"]
                t_act = time.monotonic()
                gate.kill()
                log(f"gate{used[0] + 1} ({t.killed_gate}) killed at "
                    f"{(t_act - dialer.t_spawn) * 1000:.0f} ms after the dialer's spawn")
                # Wait for the move (the verdict below times it on the dialer's clock).
                dialer.wait_match(
                    lambda tr, e: tr >= t_act and e.get("event") == "path"
                    and e.get("path") == "relayed" and same_addr(e.get("gate"), t.new_gate),
                    max(10.0, 3 * exp.failover_limit_s))
        if mode == "unblock":
            hit = dialer.wait_match(lambda tr, e: e.get("event") == "connected", 30)
            if hit is None:
                problems.append("not connected within 30 s, so no unblock")
            else:
                time.sleep(sc.params.get("act_after_s", 1.0))  # let data flow over TCP
                if dialer.proc.poll() is not None:
                    problems.append("the transfer ended before the unblock: payload too small")
                unblocked = d_room if pair.dialer == "udp-blocked" else l_room
                t_act = time.monotonic()
                if any(_is_direct(tr, e) for tr, e in dialer.events if tr < t_act):
                    problems.append("direct before the unblock: UDP was not blocked")
                set_udp_blocked(lab, unblocked, False)
                log(f"UDP unblocked in {unblocked.kind} at "
                    f"{(t_act - dialer.t_spawn) * 1000:.0f} ms after the dialer's spawn")
                dialer.wait_match(lambda tr, e: tr >= t_act and _is_direct(tr, e),
                                  2 * exp.unblock_limit_s)
        if mode in ("cut", "kill"):
            hit = dialer.wait_match(_is_direct, 30)
            if hit is None:
                problems.append(f"never went direct within 30 s, so no {mode}")
            else:
                time.sleep(sc.params.get("act_after_s", 1.0))  # let data flow on the direct path
                if dialer.proc.poll() is not None:
                    problems.append(f"the transfer ended before the {mode}: payload too small")
                t_act = time.monotonic()
                if mode == "cut":
                    cut_direct(lab, d_room.public_ip, l_room.public_ip)
                    cut = True
                    log(f"cut direct path {d_room.public_ip} <-> {l_room.public_ip} at "
                        f"{(t_act - dialer.t_spawn) * 1000:.0f} ms after the dialer's spawn")
                    back = dialer.wait_match(
                        lambda tr, e: tr >= t_act and e.get("event") == "path"
                        and e.get("path") == "relayed", max(10.0, 3 * exp.fallback_limit_s))
                    if back is None:
                        problems.append("no path event back to relayed within "
                                        f"{max(10.0, 3 * exp.fallback_limit_s):g} s of the cut")
                else:
                    gate.kill()
                    log(f"gate killed at {(t_act - dialer.t_spawn) * 1000:.0f} ms after the "
                        "dialer's spawn")
        d_rc = dialer.wait(max(1.0, timeout_s - (time.monotonic() - t0)))
        l_rc = listener.wait(max(5.0, timeout_s - (time.monotonic() - t0)))
        if cut:
            t.cut_drops = cut_drops(lab)
        # -- what keywire said -------------------------------------------------------------
        _, conn = dialer.event("connected")
        _, done = dialer.event("done")
        t.connected = conn is not None
        t.start = conn.get("path", "?") if conn else ""
        t.connect_ms = conn.get("connect_ms") if conn else None
        t.final = done.get("path", "?") if done else ""
        t.went_direct = any(_is_direct(tr, e) for tr, e in dialer.events)
        t.d_nat, t.l_nat = dialer.event("nat")[1], listener.event("nat")[1]
        if done:
            t.to_direct_ms = done.get("to_direct_ms")
            t.changes = done.get("path_changes")
            if done.get("seconds"):
                t.mib_s = payload[1] / done["seconds"] / (1 << 20)
        start = dial_start(dialer)
        if start is not None:
            t.dial_offset_ms = (start - dialer.t_spawn) * 1000.0
        if mode == "cut" and t_act is not None and start is not None:
            cut_ms = (t_act - start) * 1000.0  # the cut on the dialer's clock
            backs = [e["ms"] for tr, e in dialer.events if e.get("event") == "path"
                     and e.get("path") == "relayed" and e.get("ms", -1) >= cut_ms]
            if backs:
                t.fallback_ms = backs[0] - cut_ms
            l_backs = [tr for tr, e in listener.events if e.get("event") == "path"
                       and e.get("path") == "relayed" and tr >= t_act]
            if l_backs:
                t.listener_fallback_ms = (l_backs[0] - t_act) * 1000.0  # receive time: an upper bound
        if mode == "unblock" and t_act is not None and start is not None:
            unblock_ms = (t_act - start) * 1000.0  # the unblock on the dialer's clock
            directs = [e["ms"] for tr, e in dialer.events if e.get("event") == "path"
                       and e.get("path") == "direct" and e.get("ms", -1) >= unblock_ms]
            if directs:
                t.unblock_ms = directs[0] - unblock_ms
        if mode == "failover" and t_act is not None and start is not None:
            kill_ms = (t_act - start) * 1000.0  # the kill on the dialer's clock
            moves = [e["ms"] for tr, e in dialer.events if e.get("event") == "path"
                     and e.get("path") == "relayed" and same_addr(e.get("gate"), t.new_gate)
                     and e.get("ms", -1) >= kill_ms]
            if moves:
                t.failover_ms = moves[0] - kill_ms
            l_moves = [tr for tr, e in listener.events if e.get("event") == "path"
                       and e.get("path") == "relayed" and same_addr(e.get("gate"), t.new_gate)
                       and tr >= t_act]
            if l_moves:
                t.listener_failover_ms = (l_moves[0] - t_act) * 1000.0  # receive time: an upper bound
        # -- verdict -----------------------------------------------------------------------
        transfer_problems = exchange_problems(dialer, listener, d_rc, l_rc, payload, reply)
        t.completed = not transfer_problems
        problems.extend(transfer_problems)
        if exp.start and t.connected and t.start != exp.start:
            problems.append(f"started {t.start}, expected {exp.start}")
        _, l_conn = listener.event("connected")
        if exp.listener_start and l_conn and l_conn.get("path") != exp.listener_start:
            problems.append(f"listener started {l_conn.get('path')}, expected {exp.listener_start}")
        if exp.start and not exp.direct and t.final and t.final != exp.start:
            problems.append(f"final path {t.final}, expected to stay {exp.start}")
        if mode == "transfer" and exp.direct:
            if not t.went_direct:
                problems.append("never went direct (no direct connected/path event)")
            if t.final and t.final != "direct":
                problems.append(f"final path {t.final}, expected direct")
        if mode == "unblock" and t_act is not None:
            if t.unblock_ms is None:
                problems.append("no path event to direct after the unblock")
            elif t.unblock_ms > exp.unblock_limit_s * 1000:
                problems.append(f"direct {t.unblock_ms:.0f} ms after the unblock "
                                f"(limit {exp.unblock_limit_s * 1000:.0f} ms)")
            if t.final and t.final != "direct":
                problems.append(f"final path {t.final}, expected direct")
        if mode == "cut" and t_act is not None and not t.cut_drops:
            problems.append(f"the cut dropped no packets ({t.cut_drops}): it missed the direct path")
        if mode in ("kill", "failover") and t_act is not None \
                and gate.proc.returncode != -signal.SIGKILL:
            problems.append(f"the gate did not die by SIGKILL (exit {gate.proc.returncode})")
        if mode == "cut" and t_act is not None:
            if t.fallback_ms is None:
                problems.append("no path event back to relayed after the cut")
            elif t.fallback_ms > exp.fallback_limit_s * 1000:
                problems.append(f"back to relayed {t.fallback_ms:.0f} ms after the cut "
                                f"(limit {exp.fallback_limit_s * 1000:.0f} ms)")
        if mode == "failover" and t_act is not None:
            if t.went_direct:
                problems.append("went direct: a direct path exists, so the relay failover is "
                                "not exercised")
            if t.failover_ms is None:
                problems.append(f"no path event naming the other gate ({t.new_gate}) after the kill")
            elif t.failover_ms > exp.failover_limit_s * 1000:
                problems.append(f"moved to the other gate {t.failover_ms:.0f} ms after the kill "
                                f"(limit {exp.failover_limit_s * 1000:.0f} ms)")
            if done and not (done.get("path") == "relayed" and same_addr(done.get("gate"), t.new_gate)):
                problems.append(f"ended {done.get('path')} via {done.get('gate')}, expected relayed "
                                f"via the other gate {t.new_gate}")
        for side, nat_ev, room in (("dialer", t.d_nat, d_room), ("listener", t.l_nat, l_room)):
            if nat_ev is not None:
                problems += [f"{side} nat: {p}" for p in nat_problems(nat_ev, room)]
        t.as_expected = not problems
        t.note = "; ".join(problems)
        if problems:
            t.notes = [f"dialer events: {[e for _, e in dialer.events][-8:]}"]
        return t
    finally:
        if cut:
            uncut(lab)
        if unblocked is not None:
            set_udp_blocked(lab, unblocked, True)
        for p in (dialer, listener):
            if p and p.proc.poll() is None:
                p.stop()
        for g in gate_procs:
            g.stop()
        t.seconds = time.monotonic() - t0



def _max(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def summarize(pair, trials, rtt_ms):
    to_direct = _median([t.to_direct_ms for t in trials if t.went_direct])
    connect = _median([t.connect_ms for t in trials])
    return {
        **base_row(pair, trials),
        "start": ",".join(sorted({t.start for t in trials if t.start})) or "-",
        "final": ",".join(sorted({t.final for t in trials if t.final})) or "-",
        "nat": f"{nat_cell([t.d_nat for t in trials])}/{nat_cell([t.l_nat for t in trials])}",
        "connect_rtt": None if connect is None else connect / rtt_ms,
        "direct": f"{sum(t.went_direct for t in trials)}/{len(trials)}",
        "to_direct_rtt": None if to_direct is None else to_direct / rtt_ms,
        "to_direct_ms": to_direct,
        "changes": _median([t.changes for t in trials]),
        "fallback_ms": _max([t.fallback_ms for t in trials]),
        "unblock_ms": _max([t.unblock_ms for t in trials]),
        "failover_ms": _max([t.failover_ms for t in trials]),
        "failover_median_ms": _median([t.failover_ms for t in trials]),
        "listener_failover_ms": _max([t.listener_failover_ms for t in trials]),
        "dial_offset_ms": _median([t.dial_offset_ms for t in trials]),
        "mib_s": _median([t.mib_s for t in trials if t.completed]),
        "pass": bool(trials) and all(t.as_expected for t in trials),
        "notes": ([t.note for t in trials if t.note and not t.as_expected][:2]
                  + [n for t in trials if not t.as_expected for n in t.notes][:1]),
    }


# Columns every gate table starts and ends with; the middle is per mode.
_HEAD = [
    ("pair", "pair", "{}"),
    ("trials", "trials", "{}"),
    ("connected", "conn", "{}"),
    ("completed", "done", "{}"),
    ("start", "start", "{}"),
    ("final", "final", "{}"),
    ("nat", "NAT d/l", "{}"),
    ("connect_rtt", "connect RTTs", "{:.1f}"),
    ("direct", "direct", "{}"),
]
_TAIL = [
    ("mib_s", "MiB/s", "{:.1f}"),
    ("expect", "expected", "{}"),
    ("pass", "verdict", "{}"),
]
COLUMNS = _HEAD + [
    ("to_direct_rtt", "to-direct RTTs", "{:.1f}"),
    ("changes", "changes", "{:g}"),
    ("fallback_ms", "back-to-relay ms", "{:.0f}"),
    ("unblock_ms", "unblock-to-direct ms", "{:.0f}"),
] + _TAIL
LEFT = (0, 4, 5, 6, 14)

# "failover" mode's table: the failover delays instead of the direct-path columns.
FAILOVER_COLUMNS = _HEAD + [
    ("changes", "changes", "{:g}"),
    ("failover_median_ms", "failover ms (median)", "{:.0f}"),
    ("failover_ms", "failover ms (max)", "{:.0f}"),
    ("listener_failover_ms", "listener follows ms (max)", "{:.0f}"),
] + _TAIL
FAILOVER_LEFT = (0, 4, 5, 6, 14)


def table_columns(sc):
    """(columns, left-aligned indexes) of a gate scenario's table."""
    if any(p.expect.mode == "failover" for p in sc.pairs):
        return FAILOVER_COLUMNS, FAILOVER_LEFT
    return COLUMNS, LEFT


def figures(row):
    """(figure name, value, unit) of a row for `lab.py bench`'s JSON lines."""
    out = []
    if row.get("connect_rtt") is not None:
        out.append(("gate_connect", round(row["connect_rtt"], 2), "lab RTTs"))
    if row.get("to_direct_rtt") is not None:
        out.append(("gate_to_direct", round(row["to_direct_rtt"], 2), "lab RTTs"))
    if row.get("fallback_ms") is not None:
        out.append(("gate_back_to_relay", round(row["fallback_ms"]), "ms after the cut (max)"))
    if row.get("failover_ms") is not None:
        out.append(("gate_failover", round(row["failover_ms"]), "ms after the kill (max)"))
    if row.get("unblock_ms") is not None:
        out.append(("gate_unblock_to_direct", round(row["unblock_ms"]),
                    "ms after UDP was unblocked (max)"))
    return out


def nat_log(ev):
    if ev is None:
        return "no event (exited first?)"
    return (f"{ev.get('mapping')} seen as {ev.get('observed')} ({ev.get('observers')} observers"
            f"{', port-preserving' if ev.get('port_preserving') else ''})")


def gate_trial_details(t):
    """A gate trial's log line, between the brackets."""
    return (f"start {t.start or '-'} at {t.connect_ms if t.connect_ms is None else round(t.connect_ms)} ms, final {t.final or '-'}, to direct "
            f"{t.to_direct_ms if t.to_direct_ms is None else round(t.to_direct_ms)} ms, "
            f"changes {t.changes}, back to relay {t.fallback_ms if t.fallback_ms is None else round(t.fallback_ms)} ms"
            f", listener back to relay {t.listener_fallback_ms if t.listener_fallback_ms is None else round(t.listener_fallback_ms)} ms"
            f", dial offset {t.dial_offset_ms if t.dial_offset_ms is None else round(t.dial_offset_ms)} ms"
            f"{', cut dropped ' + str(t.cut_drops) + ' packets' if t.cut_drops is not None else ''}"
            + (f", failover {t.killed_gate} -> {t.new_gate} "
               f"{t.failover_ms if t.failover_ms is None else round(t.failover_ms)} ms, listener "
               f"follows {t.listener_failover_ms if t.listener_failover_ms is None else round(t.listener_failover_ms)} ms"
               if t.killed_gate else "")
            + f", nat dialer {nat_log(t.d_nat)}, listener {nat_log(t.l_nat)}")


def run_scenario(lab, binary, sc, payload, reply, workdir, verbose=True):
    """Runs a gate scenario's pairs; returns its table rows."""
    return run_trials(
        sc, lambda pair: run_gate_trial(lab, binary, sc, pair, payload, reply, workdir),
        gate_trial_details, summarize, lab.rtt_ms, verbose)
