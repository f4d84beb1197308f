"""Dial a bare key (issue #11): `keywire connect <node id>` with no ticket and no relay gate.

The listener advertises itself by key (a signed DHT record plus an introduction topic, and/or
the MQTT broker pool); the dialer resolves the key and connects. Every trial: fresh keys (a
fresh node id), a fresh network id, fresh NAT state, fresh servers (DHT nodes, brokers, the
observer gate), all stopped by PID at the end; both payloads byte-checked
(runner.exchange_problems); both sides must name the right peer (`connected.remote_node_id`).
The listener's `--book` and the dialer's `--book` are per-trial files in the trial directory.

Scenarios (modes of DialkeyPair):
- `dialkey-dht` ("dht"): three public DHT nodes (`keywire dht serve` on dht1..3; dht2 and dht3
  bootstrap from dht1), peers each behind its own port-restricted router. Listener:
  `listen --dht <dht1> --dht <dht2> --book B`; after its `listening` its record is looked up
  (`keywire dht lookup <id> --bootstrap <dht1>`, repeated until the record names the
  listener's public address, at most 15 s; from behind a symmetric NAT; see find_record;
  `record wait` in the table); then
  `connect <id> --dht <dht1> --book <fresh>`. Must end direct with `introduced_by`
  "dht-record" or "dht-intro".
- `dialkey-mqtt` ("mqtt"): no DHT, no relay gate: mosquitto on mqtt1 and mqtt2 (anonymous, no
  persistence), one `keywire gate` on gate1 used only as the observer (`--observer <its
  observation_addr>`); peers behind port-restricted routers, both with `--brokers <b1>,<b2>
  --observer <obs>`. Must end direct with `introduced_by` "mqtt-intro". A second pair with the
  listener on pub1 is the baseline (MQTT signalling without NAT traversal on the listener's
  side).
- `dialkey-book` ("book"): a dialkey-dht trial (it must pass), then the DHT nodes are stopped,
  every router's conntrack state is flushed, the listener is started again (same key file, same
  --bind port, no --dht) and the dialer dials again with the SAME --book file and no --dht: must
  connect with `introduced_by` "address-book" (and no DHT/MQTT resolve time).
  The honest set-up: the listener is on a public host (pub1), the dialer behind a
  port-restricted router. An address book can only carry a dialer to an address that accepts
  an unsolicited packet: a listener behind a port-restricted (or full-cone) router that has
  been silent for longer than the conntrack timeout (5 s in the lab) has no mapping left, and
  nothing but an introduction (DHT, MQTT, a gate) makes its side open one; a test that relied on
  a leftover conntrack entry would pass by luck. So the second dial is "reconnect to a
  reachable peer from the book, without any lookup" -- exactly what the book is for.
- `dialkey-forged` ("forged"): dialkey-mqtt (both pairs) plus an attacker on a public host (python,
  mqttmini.py): it computes the listener's signalling topic (docs/mqtt-signalling.md: BLAKE3
  over the network id and node id), subscribes to it on both brokers before the dialer starts,
  captures the dialer's introduction envelope (opaque bytes), and once the dialer is
  `connected` publishes it again 3 times and then 3 garbage payloads (random bytes of the
  envelope's length, first byte the envelope version 1) to that topic on the broker it came
  from. The dialer's payload is held until 1.5 s after the last forged message, so the listener
  is still running when they arrive. The replays are 0.3 s apart (a copy within 200 ms of the
  last acknowledgement is dropped unopened, uncounted in `done`). Must: connect to the right
  peer, bytes intact, the listener's `done.mqtt_envelopes_refused` >= 3 (the garbage),
  `mqtt_envelopes_repeated` + `introductions_rejected` >= 3 (the replays) and exactly one MQTT
  introduction accepted (forged_problems).

Figures (lab RTTs, RTT = 2 x the one-way delay): `ttfb` = from spawning the dialer process to
the dialer's first reply byte on the runner's clock (includes process start-up and the whole
resolve); `kw ttfb` = the dialer's `done.first_byte_ms` / RTT (keywire's clock);
`connect` = `connected.connect_ms` / RTT; `resolve` = the dialer's `connected.resolve`
(ms per channel, medians). The 8 RTT target is reported, not asserted; the scenario asserts
`ttfb` <= `max_ttfb_rtt` (default 40 RTT) so a regression is caught.
"""

import os
import random
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import mqttmini
from gates import GateProc, gate_host, listener_room, split_addr
from matrix import brief_events, wait_done
from netns import in_netns, log, ns_run
from peers import KeywireProc, bind_addr
from runner import _median, exchange_problems, run_trials

DHT_HOSTS = [("dht1", "198.51.100.60", "2001:db8:5100::60"),
             ("dht2", "192.0.2.61", "2001:db8:200::61"),
             ("dht3", "192.0.2.62", "2001:db8:200::62")]
MQTT_HOSTS = [("mqtt1", "198.51.100.70", "2001:db8:5100::70"),
              ("mqtt2", "192.0.2.71", "2001:db8:200::71")]
ATTACKER_HOST = ("attacker", "192.0.2.80", "2001:db8:200::80")
REPLAY_GAP_S = 0.3
MQTT_PORT = 1883
# The Debian package puts the broker in /usr/sbin, which a non-login PATH may lack.
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
DHT_INTROS = ("dht-record", "dht-intro")
BRIEF_KEYS_EXTRA = ("introduced_by", "resolve", "introductions", "introductions_rejected",
                    "channels", "remote_node_id", "first_byte_ms")


def public_host(lab, spec):
    name, v4, v6 = spec
    return lab.hosts.get(name) or lab.add_public_host(name, v4, v6)


# -- servers --------------------------------------------------------------------------------------

class JsonLineProc:
    """A server that prints JSON lines on stdout (stderr to a log file); `wait_event(name)`."""

    def __init__(self, lab, host, argv, logfile):
        self.lab = lab
        self.events = []
        self.lines = []
        self._cv = threading.Condition()
        self._err = open(logfile, "wb")
        self.logfile = logfile
        self.proc = lab.reg.spawn(host.ns, argv, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=self._err)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        import json
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            with self._cv:
                self.lines.append(line)
                try:
                    ev = json.loads(line)
                    if isinstance(ev, dict):
                        self.events.append(ev)
                except ValueError:
                    pass
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_event(self, name, timeout):
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for ev in self.events:
                    if ev.get("event") == name:
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cv.wait(min(left, 0.2))

    def said(self):
        try:
            with open(self.logfile, "rb") as f:
                tail = f.read()[-400:].decode("utf-8", "replace")
        except OSError:
            tail = ""
        return f"stdout {self.lines[-3:]}, stderr {tail!r}"

    def stop(self):
        self.lab.reg.stop(self.proc)
        self._reader.join(timeout=5)
        self._err.close()


def start_dht(lab, binary, trial_dir, network, port):
    """Three `keywire dht serve` nodes (dht2, dht3 bootstrap from dht1); returns (procs,
    addresses) or raises RuntimeError."""
    procs, addrs = [], []
    try:
        for i, spec in enumerate(DHT_HOSTS):
            host = public_host(lab, spec)
            addr = bind_addr(host.v4, port)
            argv = [binary, "--key", os.path.join(trial_dir, f"dht{i + 1}.key"), "--network",
                    network, "--json", "dht", "serve", "--bind", addr]
            if addrs:
                argv += ["--bootstrap", addrs[0]]
            p = JsonLineProc(lab, host, argv, os.path.join(trial_dir, f"dht{i + 1}.err"))
            procs.append(p)
            ev = p.wait_event("dht-serving", 15)
            if not ev:
                raise RuntimeError(f"dht{i + 1} did not start: {p.said()}")
            addrs.append(addr)
        return procs, addrs
    except Exception:
        for p in procs:
            p.stop()
        raise


def tcp_ready(host, ip, port, timeout):
    """Whether a TCP connection from `host`'s namespace to ip:port succeeds within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with in_netns(host.ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(1.0)
            s.connect((ip, port))
            return True
        except OSError:
            time.sleep(0.1)
        finally:
            s.close()
    return False


def start_brokers(lab, trial_dir):
    """mosquitto on mqtt1 and mqtt2 (anonymous, no persistence); returns (procs, "b1,b2")."""
    if not os.access(MOSQUITTO, os.X_OK):
        raise RuntimeError(f"no mosquitto broker at {MOSQUITTO} (Debian package mosquitto, "
                           ".ci/apt-packages.txt)")
    procs, addrs = [], []
    try:
        for spec in MQTT_HOSTS:
            host = public_host(lab, spec)
            conf = os.path.join(trial_dir, f"{host.name}.conf")
            with open(conf, "w") as f:
                f.write(f"listener {MQTT_PORT} 0.0.0.0\nallow_anonymous true\npersistence false\n"
                        "log_dest stderr\n")
            log_path = os.path.join(trial_dir, f"{host.name}.log")
            err = open(log_path, "wb")
            p = lab.reg.spawn(host.ns, [MOSQUITTO, "-c", conf], stdin=subprocess.DEVNULL,
                              stdout=err, stderr=err)
            err.close()
            procs.append(p)
            if not tcp_ready(host, host.v4, MQTT_PORT, 10):
                with open(log_path, "rb") as f:
                    tail = f.read()[-400:].decode("utf-8", "replace")
                raise RuntimeError(f"mosquitto on {host.name} did not start (exit "
                                   f"{p.poll()}): {tail!r}")
            addrs.append(f"{host.v4}:{MQTT_PORT}")
        return procs, ",".join(addrs)
    except Exception:
        for p in procs:
            lab.reg.stop(p)
        raise


def find_record(lab, binary, trial_dir, network, node_id, bootstrap, public_ip, limit_s=15.0):
    """Looks `node_id` up until its record names `public_ip` (the listener's public address),
    at most `limit_s`; returns (ms to that record or None, ms to the first record found or None,
    the last error or what the last record held).

    A listener publishes its record at once with the addresses it knows (its LAN address) and
    again once it learned its public one (from DHT peers or the observer); a dial that finds
    only the first cannot open the dialer's own NAT toward the listener, so it waits for the
    second: the lab measures a dial to a listener that is fully advertised. How long that takes
    is the `record wait` column.

    The lookup runs behind a symmetric NAT, not on a public host: a `dht lookup` process
    (mode Auto) on a public host is promoted to DHT server, other nodes add it to their tables,
    and once it exits it is a dead contact that the dial's own DHT requests then wait on (1 s
    request timeout): the poll itself would slow the dial it prepares. Behind a symmetric NAT
    no third party's reachability proof gets in, so it stays a client and leaves no trace."""
    import json
    host = lab.add_room("symmetric").peer
    t0 = time.monotonic()
    err = ""
    first = None
    while time.monotonic() - t0 < limit_s:
        left = limit_s - (time.monotonic() - t0)
        try:
            out = ns_run(host.ns, [binary, "--key", os.path.join(trial_dir, "lookup.key"),
                                   "--network", network, "--json", "dht", "lookup", node_id,
                                   "--bootstrap", bootstrap,
                                   "--table", os.path.join(trial_dir, "lookup-table.bin"),
                                   "--wait", str(max(1, int(min(5, left))))],
                         timeout=max(2.0, left + 2))
            now_ms = (time.monotonic() - t0) * 1000.0
            first = now_ms if first is None else first
            addrs = json.loads(out.strip().splitlines()[-1]).get("addrs") or []
            if any(split_addr(a) and split_addr(a)[0] == public_ip for a in addrs):
                return now_ms, first, ""
            err = f"the record names {addrs}, not {public_ip}"
        except Exception as e:  # not found yet (exit 1), or the lookup timed out
            err = str(e)[-300:]
        time.sleep(0.2)
    return None, first, err


def node_id_of(binary, keyfile):
    """Creates the key file if needed and returns its node id (no network involved)."""
    out = subprocess.run([binary, "--key", keyfile, "id"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return out.strip()


# -- the attacker ---------------------------------------------------------------------------------

class Attacker:
    """Subscribes to the listener's topic on every broker (from the attacker host), captures the
    first envelope, later republishes it and garbage."""

    def __init__(self, lab, brokers, topic):
        self.host = public_host(lab, ATTACKER_HOST)
        self.topic = topic
        self.conns = {}
        self.captured = None  # (broker, payload)
        self.seen = 0
        self.errors = []
        for b in brokers:
            ip, port = b.rsplit(":", 1)
            with in_netns(self.host.ns):
                c = mqttmini.Mqtt(ip, int(port),
                                  client_id=f"kwlab-attacker-{random.getrandbits(32):x}")
            c.subscribe(topic)
            self.conns[b] = c
        self._threads = [threading.Thread(target=self._watch, args=(b, c), daemon=True)
                         for b, c in self.conns.items()]
        self._stop = threading.Event()
        self._got = threading.Event()
        self._lock = threading.Lock()
        for t in self._threads:
            t.start()

    def _watch(self, broker, conn):
        while not self._stop.is_set():
            try:
                msg = conn.next_publish(0.5)
            except (OSError, ConnectionError) as e:
                self.errors.append(f"{broker}: {e}")
                return
            if msg is None:
                continue
            with self._lock:
                self.seen += 1
                if self.captured is None:
                    self.captured = (broker, msg[1])
                    self._got.set()

    def wait_capture(self, timeout):
        self._got.wait(timeout)
        return self.captured

    def attack(self, replays=3, garbage=3):
        """Publishes the captured envelope `replays` times, then `garbage` random payloads, on
        the broker it came from; returns how many were sent."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        broker, env = self.captured
        conn = self.conns[broker]
        sent = 0
        for _ in range(replays):
            conn.publish(self.topic, env)
            sent += 1
            # Apart by more than the receiver's copy filter (REACK_AFTER, 200 ms), so that each
            # replay is opened and meets the replay guard instead of being dropped as a copy.
            time.sleep(REPLAY_GAP_S)
        for _ in range(garbage):
            conn.publish(self.topic, bytes([env[0]]) + os.urandom(max(1, len(env) - 1)))
            sent += 1
            time.sleep(0.05)
        return sent

    def close(self):
        self._stop.set()
        for c in self.conns.values():
            c.close()


# -- trials ---------------------------------------------------------------------------------------

@dataclass
class DialkeyPair:
    dialer: str
    listener: str
    mode: str  # dht | mqtt | book | forged

    @property
    def name(self):
        return f"{self.dialer} -> {self.listener} ({self.mode})"

    @property
    def expect(self):
        return self

    def describe(self):
        return {"dht": "direct, introduced by dht-record/dht-intro",
                "mqtt": "direct, introduced by mqtt-intro",
                "book": "2nd dial direct from the address book",
                "forged": "right peer, >= 3 refused, >= 3 repeated, 1 accepted"}[self.mode]


@dataclass
class DialkeyTrial:
    pair: DialkeyPair
    connected: bool = False
    completed: bool = False
    as_expected: bool = False
    path: str = ""
    final: str = ""
    introduced_by: str = ""
    resolve: dict = None
    connect_ms: float = None
    ttfb_ms: float = None  # runner: dialer spawn -> dialer's first reply byte
    kw_first_byte_ms: float = None
    record_wait_ms: float = None  # listening -> a record naming the listener's public address
    record_first_ms: float = None  # listening -> the first record found
    intros: dict = None
    rejected: int = None  # listener's done.introductions_rejected (discovery's refusals)
    refused: int = None  # done.mqtt_envelopes_refused (garbage, bad signatures, ...)
    repeated: int = None  # done.mqtt_envelopes_repeated (replays, and a 2nd broker's copy)
    first: dict = None  # book mode: the first (DHT) dial's figures
    forged_sent: int = 0
    seconds: float = 0.0
    note: str = ""
    notes: list = field(default_factory=list)


def brief(proc):
    out = brief_events(proc)
    for (_, ev), b in zip([(t, e) for t, e in proc.events], out):
        for k in BRIEF_KEYS_EXTRA:
            if ev.get(k) is not None:
                b[k] = ev[k]
    return out


def dial_once(lab, binary, sc, pair, payload, reply, trial_dir, network, ctx, tag,
              l_host, d_host, l_args, d_args, l_key, d_key, d_id, hold=None, before_dial=None,
              on_dialer=None, deadline=None):
    """One listener + one dialer; returns (figures dict, problems, listener, dialer)."""
    port = ctx["port"]
    listener = KeywireProc(lab, binary, l_host, ["listen", "--bind", bind_addr(l_host.v4, port)]
                           + l_args, l_key, network, reply[0], f"listener{tag}")
    dialer = None
    fig = {}
    problems = []
    try:
        ev = listener.wait_event("listening", 15)
        if not ev:
            return fig, [f"listener{tag} did not start: {listener.error_text()}"], listener, None
        l_id = ev.get("node_id")
        fig["channels"] = ev.get("channels")
        want = sorted(c for c, flag in (("dht", "--dht"), ("mqtt", "--brokers")) if flag in l_args)
        if sorted(fig["channels"] or []) != want:
            problems.append(f"listener{tag} channels {fig['channels']!r}, expected {want}")
        if before_dial:
            problems += before_dial(l_id, fig)
            if problems:
                return fig, problems, listener, None
        dialer = KeywireProc(lab, binary, d_host, ["connect", l_id] + d_args, d_key, network,
                             payload[0], f"dialer{tag}", stdin_hold=hold)
        if on_dialer:
            problems += on_dialer(dialer, fig) or []
        d_rc, l_rc = wait_both(dialer, listener, deadline)
        _, conn = dialer.event("connected")
        _, done = dialer.event("done")
        _, l_conn = listener.event("connected")
        _, l_done = listener.event("done")
        fig["connected"] = conn is not None
        if conn:
            fig["path"] = conn.get("path", "?")
            fig["introduced_by"] = conn.get("introduced_by")
            fig["resolve"] = conn.get("resolve")
            fig["connect_ms"] = conn.get("connect_ms")
        if done:
            fig["final"] = done.get("path", "?")
            fig["kw_first_byte_ms"] = done.get("first_byte_ms")
        if dialer.first_byte_t is not None:
            fig["ttfb_ms"] = (dialer.first_byte_t - dialer.t_spawn) * 1000.0
        if l_done:
            fig["intros"] = l_done.get("introductions")
            fig["rejected"] = l_done.get("introductions_rejected")
            fig["refused"] = l_done.get("mqtt_envelopes_refused")
            fig["repeated"] = l_done.get("mqtt_envelopes_repeated")
        tp = exchange_problems(dialer, listener, d_rc, l_rc, payload, reply)
        fig["completed"] = not tp
        problems += [f"{tag.strip()}: {p}" if tag else p for p in tp]
        if conn and conn.get("remote_node_id") != l_id:
            problems.append(f"dialer{tag} connected to {conn.get('remote_node_id')}, expected "
                            f"the listener {l_id}")
        if l_conn and l_conn.get("remote_node_id") != d_id:
            problems.append(f"listener{tag} accepted {l_conn.get('remote_node_id')}, expected "
                            f"the dialer {d_id}")
        if conn and (fig.get("path") != "direct" or fig.get("final") != "direct"):
            problems.append(f"dial{tag}: path {fig.get('path')} -> {fig.get('final')}, "
                            "expected direct")
        if conn is None and not tp:
            problems.append(f"dialer{tag} reported no connected event")
        if fig.get("ttfb_ms") is not None and fig["ttfb_ms"] / lab.rtt_ms > sc.params.get(
                "max_ttfb_rtt", 40.0):
            problems.append(f"dial{tag}: first byte {fig['ttfb_ms']:.0f} ms after spawn = "
                            f"{fig['ttfb_ms'] / lab.rtt_ms:.1f} RTTs > "
                            f"{sc.params.get('max_ttfb_rtt', 40.0):g}")
        return fig, problems, listener, dialer
    finally:
        if hold is not None:
            hold.set()
        for p in (dialer, listener):
            if p and p.proc.poll() is None:
                p.stop()


def wait_both(dialer, listener, deadline, after_fail_s=3.0):
    """Exit codes as matrix.wait_done, but a dialer that failed (exited without `done`) leaves
    the listener only `after_fail_s` more: it would otherwise wait for a dial that never comes
    until the trial's deadline."""
    hit = dialer.wait_match(lambda tr, e: e.get("event") == "done",
                            max(1.0, deadline - time.monotonic()))
    if hit is None and dialer.proc.poll() is not None:
        deadline = min(deadline, time.monotonic() + after_fail_s)
    return wait_done([dialer, listener], deadline)


def run_dialkey_trial(lab, binary, sc, pair, payload, reply, workdir, timeout_s=90.0):
    t = DialkeyTrial(pair)
    t0 = time.monotonic()
    lab.flush_state()
    d_room = lab.add_room(pair.dialer)
    if pair.listener == "public":
        l_host = lab.hosts["pub1"]
        l_public_ip = l_host.v4
    else:
        l_room = listener_room(lab, pair.listener)
        l_host, l_public_ip = l_room.peer, l_room.public_ip
    trial_dir = os.path.join(workdir, f"ktrial-{time.monotonic_ns()}")
    os.makedirs(trial_dir)
    network = f"natlab-{random.getrandbits(64):016x}"
    ctx = {"port": random.randint(7000, 8999)}
    l_key, d_key = os.path.join(trial_dir, "listener.key"), os.path.join(trial_dir, "dialer.key")
    l_book = os.path.join(trial_dir, "listener.book")
    d_book = os.path.join(trial_dir, "dialer.book")
    servers, brokers_procs = [], []
    gate = attacker = None
    hold = threading.Event() if pair.mode == "forged" else None
    problems = []
    procs = []
    try:
        d_id = node_id_of(binary, d_key)
        node_id_of(binary, l_key)
        l_args, d_args = ["--book", l_book], ["--book", d_book]
        before = on_dialer = None
        if pair.mode in ("dht", "book"):
            servers, dht_addrs = start_dht(lab, binary, trial_dir, network,
                                           random.randrange(4000, 4999))
            l_args += ["--dht", dht_addrs[0], "--dht", dht_addrs[1]]
            d_args += ["--dht", dht_addrs[0]]

            def before(l_id, fig):
                ms, first, err = find_record(lab, binary, trial_dir, network, l_id,
                                             dht_addrs[0], l_public_ip)
                fig["record_wait_ms"], fig["record_first_ms"] = ms, first
                return [] if ms is not None else [f"no record of the listener naming its public "
                                                  f"address within 15 s: {err}"]
        else:
            brokers_procs, brokers = start_brokers(lab, trial_dir)
            gate = GateProc(lab, binary, gate_host(lab, 0), random.randrange(9000, 9998, 2),
                            os.path.join(trial_dir, "gate.key"), network,
                            os.path.join(trial_dir, "gate.err"))
            gev = gate.wait_ready(15)
            if not gev:
                t.note = f"observer gate did not start: {gate.lines[-3:]}"
                return t
            obs = gev["observation_addr"]
            common = ["--brokers", brokers, "--observer", obs]
            l_args += common
            d_args += common
            if pair.mode == "forged":
                def before(l_id, fig):
                    nonlocal attacker
                    topic = mqttmini.signal_topic(network, l_id)
                    fig["topic"] = topic
                    try:
                        attacker = Attacker(lab, brokers.split(","), topic)
                    except (OSError, ConnectionError) as e:
                        return [f"attacker could not subscribe to {topic}: {e}"]
                    return []
                def on_dialer(dialer, fig):
                    return forge(lab, dialer, attacker, fig, hold,
                                 sc.params.get("forge_counts", (3, 3)))
        fig, problems, listener, dialer = dial_once(
            lab, binary, sc, pair, payload, reply, trial_dir, network, ctx, "", l_host,
            d_room.peer, l_args, d_args, l_key, d_key, d_id, hold=hold, before_dial=before,
            on_dialer=on_dialer, deadline=t0 + timeout_s)
        procs += [listener, dialer]
        fill(t, fig)
        intro = fig.get("introduced_by")
        if fig.get("connected"):
            want = {"dht": DHT_INTROS, "book": DHT_INTROS, "mqtt": ("mqtt-intro",),
                    "forged": ("mqtt-intro",)}[pair.mode]
            if intro not in want:
                problems.append(f"introduced_by {intro!r}, expected one of {list(want)}")
        if pair.mode == "forged" and "forged_sent" in fig:  # the attack ran
            problems += forged_problems(t)
        accepted = (t.intros or {}).get("mqtt" if pair.mode in ("mqtt", "forged") else "dht")
        if fig.get("connected") and intro in ("mqtt-intro", "dht-intro") and not accepted:
            problems.append(f"introduced by {intro} but the listener's introductions are "
                            f"{t.intros}")
        if pair.mode == "book" and not problems:
            t.first = dict(fig)
            for s in servers:
                s.stop()
            servers = []
            lab.flush_state()
            time.sleep(0.2)
            fig2, problems2, listener2, dialer2 = dial_once(
                lab, binary, sc, pair, payload, reply, trial_dir, network, ctx, " (book)",
                l_host, d_room.peer, ["--book", l_book], ["--book", d_book], l_key, d_key, d_id,
                deadline=time.monotonic() + timeout_s)
            procs += [listener2, dialer2]
            t.introduced_by = ""
            fill(t, fig2)
            problems += problems2
            if fig2.get("connected"):
                if fig2.get("introduced_by") != "address-book":
                    problems.append(f"second dial introduced_by {fig2.get('introduced_by')!r}, "
                                    "expected 'address-book'")
                res = fig2.get("resolve") or {}
                if any(res.get(k) is not None for k in ("dht_ms", "dht_nudge_ms", "mqtt_ms")):
                    problems.append(f"second dial resolved over DHT/MQTT: {res}")
        t.as_expected = not problems
        t.note = "; ".join(problems)
        if problems:
            for p in procs:
                if p is not None:
                    t.notes.append(f"{p.label} events: {brief(p)}")
                    if p.text:
                        t.notes.append(f"{p.label} said: {p.text[-4:]}")
        return t
    except RuntimeError as e:
        t.note = str(e)
        return t
    finally:
        if hold is not None:
            hold.set()
        if attacker is not None:
            attacker.close()
        for s in servers:
            s.stop()
        for p in brokers_procs:
            lab.reg.stop(p)
        if gate:
            gate.stop()
        t.seconds = time.monotonic() - t0


def forge(lab, dialer, attacker, fig, hold, counts=(3, 3)):
    """forged mode: after the dialer's `connected`, replay the captured envelope and send
    garbage (`counts`: how many of each; the self-check sends none); then release the dialer's
    payload 1.5 s later."""
    problems = []
    try:
        cap = attacker.wait_capture(10)
        hit = dialer.wait_match(lambda tr, e: e.get("event") == "connected", 30)
        if cap is None:
            problems.append(f"the attacker captured nothing on {attacker.topic} within 10 s "
                            f"(errors {attacker.errors})")
        elif hit is None:
            problems.append("the dialer never connected, so no replay")
        else:
            fig["forged_sent"] = attacker.attack(*counts)
            fig["captured_len"] = len(cap[1])
            fig["seen"] = attacker.seen
            log(f"attacker: captured {len(cap[1])} bytes on {cap[0]} ({attacker.seen} seen), "
                f"sent {fig['forged_sent']} forged messages")
            time.sleep(1.5)
    finally:
        hold.set()
    return problems


def fill(t, fig):
    t.connected = t.connected or fig.get("connected", False)
    t.completed = fig.get("completed", False) if t.first is None else (
        t.first.get("completed", False) and fig.get("completed", False))
    t.path = fig.get("path", "") or ""
    t.final = fig.get("final", "") or ""
    t.introduced_by = fig.get("introduced_by") or ""
    t.resolve = fig.get("resolve")
    t.connect_ms = fig.get("connect_ms")
    t.ttfb_ms = fig.get("ttfb_ms")
    t.kw_first_byte_ms = fig.get("kw_first_byte_ms")
    t.record_wait_ms = fig.get("record_wait_ms", t.record_wait_ms)
    t.record_first_ms = fig.get("record_first_ms", t.record_first_ms)
    t.intros = fig.get("intros")
    t.rejected = fig.get("rejected")
    t.refused = fig.get("refused")
    t.repeated = fig.get("repeated")
    t.forged_sent = fig.get("forged_sent", t.forged_sent)


# -- tables ---------------------------------------------------------------------------------------

def _rtt(ms, rtt_ms):
    return None if ms is None else ms / rtt_ms


def _resolve_cell(trials):
    out = []
    for key in ("book_ms", "dht_ms", "dht_nudge_ms", "mqtt_ms"):
        m = _median([(t.resolve or {}).get(key) for t in trials])
        if m is not None:
            out.append(f"{key[:-3]} {m:.0f}")
    return ", ".join(out) or "-"


def _triple(trials):
    """The listener's rejection counters over the trials, "i/g/r" (medians; "-": none)."""
    cells = [_median([getattr(t, k) for t in trials]) for k in ("rejected", "refused", "repeated")]
    if all(c is None for c in cells):
        return None
    return "/".join("-" if c is None else f"{c:g}" for c in cells)


def forged_problems(t):
    """dialkey-forged's verdict on the listener's `done` counters. The CLI counts at two layers:
    the MQTT layer refuses garbage (`mqtt_envelopes_refused`) and envelopes already accepted
    (`mqtt_envelopes_repeated`: the replays, and also the ordinary second copy of an envelope
    sent to both brokers); discovery refuses introductions that got through that layer but are
    stale, replayed or unasked (`introductions_rejected`). The replays are 0.3 s apart: a
    byte-identical copy within 200 ms of the last acknowledgement is dropped before opening,
    into a counter `done` does not show (`SignalMetrics::duplicates`). Must hold: >= 3 refused
    (the garbage), >= 3 repeated + rejected (the replays), and exactly one MQTT introduction
    accepted (the dialer's). Without the per-layer counters: `introductions_rejected` >= 3."""
    if t.refused is None and t.repeated is None:
        if t.rejected is None or t.rejected < 3:
            return [f"listener's introductions_rejected {t.rejected}, expected >= 3 "
                    f"({t.forged_sent} forged messages sent)"]
        return []
    out = []
    if (t.refused or 0) < 3:
        out.append(f"listener refused {t.refused} envelopes, expected >= 3 (the garbage; "
                   f"{t.forged_sent} forged messages sent)")
    if (t.repeated or 0) + (t.rejected or 0) < 3:
        out.append(f"listener counted {t.repeated} repeated envelopes and {t.rejected} rejected "
                   "introductions, expected >= 3 (the replays)")
    accepted = (t.intros or {}).get("mqtt")
    if accepted != 1:
        out.append(f"listener accepted {accepted} MQTT introductions, expected exactly 1 (the "
                   "dialer's)")
    return out


def summarize(pair, trials, rtt_ms):
    intros = sorted({t.introduced_by for t in trials if t.introduced_by})
    firsts = [t.first for t in trials if t.first]
    return {
        "pair": pair.name,
        "expect": pair.describe(),
        "trials": len(trials),
        "connected": sum(t.connected for t in trials),
        "completed": sum(t.completed for t in trials),
        "as_expected": sum(t.as_expected for t in trials),
        "path": ",".join(sorted({f"{t.path}->{t.final}" for t in trials if t.path})) or "-",
        "introduced_by": ",".join(intros) or "-",
        "resolve": _resolve_cell(trials),
        "connect_rtt": _rtt(_median([t.connect_ms for t in trials]), rtt_ms),
        "ttfb_rtt": _rtt(_median([t.ttfb_ms for t in trials if t.completed]), rtt_ms),
        "ttfb_max_rtt": _rtt(max([t.ttfb_ms for t in trials if t.ttfb_ms is not None],
                                 default=None) if trials else None, rtt_ms),
        "kw_ttfb_rtt": _rtt(_median([t.kw_first_byte_ms for t in trials]), rtt_ms),
        "first_ttfb_rtt": _rtt(_median([f.get("ttfb_ms") for f in firsts]), rtt_ms),
        "record_wait_ms": _median([t.record_wait_ms for t in trials]),
        "rejected": _triple(trials),
        "intros": ",".join(sorted({str(t.intros) for t in trials if t.intros is not None})) or "-",
        "pass": bool(trials) and all(t.as_expected for t in trials),
        "notes": ([t.note for t in trials if t.note and not t.as_expected][:2]
                  + [n[:1500] for t in trials if not t.as_expected for n in t.notes][:6]),
    }


COLUMNS = [
    ("pair", "pair", "{}"),
    ("trials", "trials", "{}"),
    ("completed", "done", "{}"),
    ("path", "path", "{}"),
    ("introduced_by", "introduced by", "{}"),
    ("resolve", "resolve ms", "{}"),
    ("connect_rtt", "connect RTTs", "{:.1f}"),
    ("ttfb_rtt", "ttfb RTTs", "{:.1f}"),
    ("ttfb_max_rtt", "ttfb max", "{:.1f}"),
    ("kw_ttfb_rtt", "kw ttfb RTTs", "{:.1f}"),
    ("first_ttfb_rtt", "1st dial ttfb", "{:.1f}"),
    ("record_wait_ms", "record wait ms", "{:.0f}"),
    ("intros", "listener intros", "{}"),
    ("rejected", "rejected/refused/repeated", "{}"),
    ("expect", "expected", "{}"),
    ("pass", "verdict", "{}"),
]
LEFT = (0, 3, 4, 5, 12, 13, 14)


def table_columns(sc):
    return COLUMNS, LEFT


def figures(row):
    out = []
    for key, name in (("ttfb_rtt", "dialkey_ttfb"), ("kw_ttfb_rtt", "dialkey_kw_ttfb"),
                      ("connect_rtt", "dialkey_connect")):
        if row.get(key) is not None:
            out.append((name, round(row[key], 2), "lab RTTs"))
    return out


def _fmt(v, scale=1.0):
    return "-" if v is None else f"{v / scale:.1f}"


def dialkey_trial_details(t, rtt_ms):
    """A dial-by-key trial's log line, between the brackets."""
    return (f"path {t.path or '-'}->{t.final or '-'}, introduced by "
            f"{t.introduced_by or '-'}, resolve {t.resolve}, connect "
            f"{_fmt(t.connect_ms, rtt_ms)} RTTs, ttfb {_fmt(t.ttfb_ms, rtt_ms)} "
            f"RTTs, kw ttfb {_fmt(t.kw_first_byte_ms, rtt_ms)} RTTs, record wait "
            f"{_fmt(t.record_wait_ms)} ms (first record {_fmt(t.record_first_ms)} ms), "
            + (f"1st dial introduced by {t.first.get('introduced_by')} ttfb "
               f"{_fmt(t.first.get('ttfb_ms'), rtt_ms)} RTTs, " if t.first else "")
            + f"listener intros {t.intros}, rejected {t.rejected}, forged {t.forged_sent}")


def run_scenario(lab, binary, sc, payload, reply, workdir, verbose=True):
    """Runs a dial-by-key scenario's pairs; returns its table rows."""
    return run_trials(
        sc, lambda pair: run_dialkey_trial(lab, binary, sc, pair, payload, reply, workdir),
        lambda t: dialkey_trial_details(t, lab.rtt_ms), summarize, lab.rtt_ms, verbose)
