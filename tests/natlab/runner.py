"""The trial runner: (dialer kind, listener kind) pairs x N trials, a table, expectations.

Each trial gets fresh keys (new key files), a fresh listener port, a fresh network id and fresh
NAT state (conntrack flushed, cone maps emptied in every router). A trial's outcome is compared
with the pair's expectation; a pair passes only if every trial met it. Nothing is skipped: a pair
that cannot run counts as failed.

Times are reported in lab round trips (RTT = 2 x the delay line's one-way delay):
- ttfb:   from starting the dialer process to the first payload byte on the listener's stdout
          (the runner's clock; includes process start-up);
- direct: keywire's own `connect_ms` for the first `connected` event whose path is direct
          (dial start -> direct path usable).
"""

import os
import random
import statistics
import time
from dataclasses import dataclass, field

from netns import log
from peers import KeywireProc, bind_addr


@dataclass
class Expect:
    """What a pair must do: `transfer` (both directions complete, path direct) or `fail`."""
    outcome: str = "transfer"
    error_contains: str = ""
    rtt_ms_range: tuple = None  # keywire's reported RTT must fall in (lo, hi), if given

    def describe(self):
        if self.outcome == "fail":
            return f"fails: '{self.error_contains}'"
        return "transfer, direct" + (f", rtt {self.rtt_ms_range[0]:.0f}-{self.rtt_ms_range[1]:.0f} ms"
                                     if self.rtt_ms_range else "")


@dataclass
class Pair:
    dialer: str
    listener: str
    expect: Expect = field(default_factory=Expect)

    @property
    def name(self):
        return f"{self.dialer} -> {self.listener}"


@dataclass
class Trial:
    pair: Pair
    connected: bool = False
    completed: bool = False
    as_expected: bool = False
    path: str = ""
    ttfb_ms: float = None
    direct_ms: float = None
    rtt_ms: float = None
    mib_s: float = None
    seconds: float = 0.0
    note: str = ""


def endpoints(lab, pair):
    """(dialer host, listener host, address family) of a pair; builds the rooms it needs."""
    d_room = lab.add_room(pair.dialer)
    if pair.listener == "public":
        l_host = lab.hosts["pub1"]
        family = d_room.family
    else:
        l_room = lab.add_room(pair.listener)
        l_host = l_room.peers[-1]
        family = 6 if 6 in (d_room.family, l_room.family) else 4
    return d_room.peer, l_host, family


def run_trial(lab, binary, pair, payload, reply, workdir, timeout_s=90.0):
    """One trial: listener on the listener host, dialer dials its ticket and streams `payload`.

    `payload` and `reply` are (path, size, sha256) of what the dialer and the listener send.
    """
    t = Trial(pair)
    t0 = time.monotonic()
    lab.flush_state()
    d_host, l_host, family = endpoints(lab, pair)
    trial_dir = os.path.join(workdir, f"trial-{time.monotonic_ns()}")
    os.makedirs(trial_dir)
    network = f"natlab-{random.getrandbits(64):016x}"
    port = random.randint(7000, 8999)
    listener = KeywireProc(lab, binary, l_host,
                           ["listen", "--bind", bind_addr(l_host.addr(family), port)],
                           os.path.join(trial_dir, "listener.key"), network, reply[0], "listener")
    dialer = None
    try:
        ev = listener.wait_event("listening", 15)
        if not ev:
            t.note = f"listener did not start: {listener.error_text()}"
            listener.stop()
            return t
        dialer = KeywireProc(lab, binary, d_host, ["connect", ev["ticket"]],
                             os.path.join(trial_dir, "dialer.key"), network, payload[0], "dialer")
        fail_expected = pair.expect.outcome == "fail"
        d_rc = dialer.wait(timeout_s)
        if fail_expected:
            # The listener must not have seen anyone; give a stray connection a moment to show.
            l_rc = listener.wait(0.2)
            if l_rc is None:
                pass  # still listening, as it should; wait() stopped it
        else:
            l_rc = listener.wait(max(5.0, timeout_s - (time.monotonic() - t0)))
        _, conn = dialer.event("connected")
        t.connected = conn is not None
        if conn:
            t.path = conn.get("path", "?")
            t.rtt_ms = conn.get("rtt_ms")
            if conn.get("path") == "direct" and conn.get("connect_ms") is not None:
                t.direct_ms = conn["connect_ms"]
        if listener.first_byte_t is not None:
            t.ttfb_ms = (listener.first_byte_t - dialer.t_spawn) * 1000.0
        _, done = dialer.event("done")
        if done and done.get("seconds"):
            t.mib_s = payload[1] / done["seconds"] / (1 << 20)
        if done and done.get("rtt_ms") is not None:
            # After the transfer: the estimate has its samples. At "connected" (one round trip
            # in) quinn has only the handshake's, the first of which includes the listener's
            # first-handshake set-up in a fresh (debug) process.
            t.rtt_ms = done["rtt_ms"]
        transfer_problems = exchange_problems(dialer, listener, d_rc, l_rc, payload, reply)
        t.completed = not transfer_problems
        if fail_expected:
            err = dialer.error_text()
            _, l_conn = listener.event("connected")
            t.as_expected = (d_rc not in (0, None) and pair.expect.error_contains in err
                             and l_conn is None)
            t.note = (f"dialer exit {d_rc}: {err[:160]}" if t.as_expected else
                      f"expected failure with '{pair.expect.error_contains}', got dialer exit {d_rc}"
                      f", error {err[:200]!r}, listener connected {l_conn is not None}")
        else:
            problems = list(transfer_problems)
            if t.path != "direct":
                problems.append(f"path {t.path!r}, expected direct")
            r = pair.expect.rtt_ms_range
            if r and not (t.rtt_ms is not None and r[0] <= t.rtt_ms <= r[1]):
                problems.append(f"keywire rtt {t.rtt_ms} ms outside {r[0]:.0f}..{r[1]:.0f} ms")
            t.as_expected = not problems
            t.note = "; ".join(problems)
        return t
    finally:
        for p in (dialer, listener):
            if p and p.proc.poll() is None:
                p.stop()
        t.seconds = time.monotonic() - t0


def run_pairs(lab, binary, pairs, trials, payload, reply, workdir, verbose=True):
    """Runs every pair `trials` times; returns {pair name: [Trial]} in order."""
    results = {}
    for pair in pairs:
        results[pair.name] = []
        for i in range(trials):
            t = run_trial(lab, binary, pair, payload, reply, workdir)
            results[pair.name].append(t)
            if verbose:
                log(f"{pair.name} #{i + 1}: {'as expected' if t.as_expected else 'NOT as expected'}"
                    f" in {t.seconds:.1f} s" + (f" ({t.note})" if t.note else ""))
    return results


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def base_row(pair, trials):
    """The table cells every scenario's row starts with: the pair and its trial counts."""
    return {
        "pair": pair.name,
        "expect": pair.expect.describe(),
        "trials": len(trials),
        "connected": sum(t.connected for t in trials),
        "completed": sum(t.completed for t in trials),
        "as_expected": sum(t.as_expected for t in trials),
    }


def exchange_problems(dialer, listener, d_rc, l_rc, payload, reply):
    """What went wrong with a two-way transfer: exit codes, then bytes and hashes; [] if nothing."""
    problems = []
    if d_rc != 0:
        problems.append(f"dialer exit {d_rc}: {dialer.error_text()[:300]}")
    if l_rc != 0:
        problems.append(f"listener exit {l_rc}: {listener.error_text()[:300]}")
    if not (listener.out_bytes == payload[1] and listener.out_hash.hexdigest() == payload[2]
            and dialer.out_bytes == reply[1] and dialer.out_hash.hexdigest() == reply[2]):
        problems.append(f"bytes: listener got {listener.out_bytes}/{payload[1]}, dialer got "
                        f"{dialer.out_bytes}/{reply[1]} (or hash mismatch)")
    return problems


def summarize(pair, trials, rtt_ms):
    """One table row (dict) for a pair's trials."""
    paths = sorted({t.path for t in trials if t.path})
    ttfb = _median([t.ttfb_ms for t in trials if t.completed])
    direct = _median([t.direct_ms for t in trials])
    return {
        **base_row(pair, trials),
        "path": ",".join(paths) or "-",
        "ttfb_rtt": None if ttfb is None else ttfb / rtt_ms,
        "direct_rtt": None if direct is None else direct / rtt_ms,
        "kw_rtt_ms": _median([t.rtt_ms for t in trials]),
        "mib_s": _median([t.mib_s for t in trials if t.completed]),
        "pass": bool(trials) and all(t.as_expected for t in trials),
        "notes": [t.note for t in trials if t.note and not t.as_expected][:2],
    }


COLUMNS = [
    ("pair", "pair", "{}"),
    ("trials", "trials", "{}"),
    ("connected", "conn", "{}"),
    ("completed", "done", "{}"),
    ("path", "path", "{}"),
    ("ttfb_rtt", "ttfb RTTs", "{:.1f}"),
    ("direct_rtt", "direct RTTs", "{:.1f}"),
    ("kw_rtt_ms", "kw rtt ms", "{:.1f}"),
    ("mib_s", "MiB/s", "{:.1f}"),
    ("expect", "expected", "{}"),
    ("pass", "verdict", "{}"),
]


def format_table(rows, title="", columns=None, left=(0, 4, 9)):
    """A plain-text table of summarize() rows (`columns`: (key, header, format), default
    COLUMNS; `left`: the indexes of left-aligned columns)."""
    columns = columns or COLUMNS
    def cell(row, key, fmt):
        v = row.get(key)
        if key == "pass":
            return "PASS" if v else "FAIL"
        return "-" if v is None else fmt.format(v)

    cells = [[h for _, h, _ in columns]] + [[cell(r, k, f) for k, _, f in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = [title] if title else []
    for n, c in enumerate(cells):
        lines.append("  ".join(x.ljust(w) if i in left else x.rjust(w)
                               for i, (x, w) in enumerate(zip(c, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        for note in r["notes"]:
            lines.append(f"  {r['pair']}: {note}")
    return "\n".join(lines)


def run_trials(sc, run_trial, details, summarize_rows, rtt_ms, verbose=True, show_expect=False):
    """Runs each of `sc`'s pairs `sc.trials` times (`run_trial(pair)` -> a trial with
    `as_expected`, `seconds` and `note`), logs each trial with `details(t)` in brackets (and the
    pair's expectation if `show_expect`), and returns one `summarize_rows(pair, trials, rtt_ms)`
    row per pair. The per-scenario modules (gates, matrix, punchfaults, dialkey) share it."""
    rows = []
    for pair in sc.pairs:
        trials = []
        for i in range(sc.trials):
            t = run_trial(pair)
            trials.append(t)
            if verbose:
                expect = f" [{pair.expect}]" if show_expect else ""
                log(f"{sc.name} {pair.name} #{i + 1}{expect}: "
                    f"{'as expected' if t.as_expected else 'NOT as expected'} in {t.seconds:.1f} s "
                    f"({details(t)})" + (f": {t.note}" if t.note else ""))
        rows.append(summarize_rows(pair, trials, rtt_ms))
    return rows
