#!/usr/bin/env python3
"""keywire NAT lab: real NATs in network namespaces, a delay line, probes and a trial runner.

Commands (run as root from the repository root; see docs/natlab.md):
  lab.py probe [KIND ...]            build rooms, check each router kind with its probe
  lab.py run SCENARIO [--trials N]   run one scenario's table (see `lab.py list`)
  lab.py ci                          probes + the short scenario table (what CI runs)
  lab.py bench                       the long version (more trials, more delays)
  lab.py fwdbench                    shows the delay line does not bottleneck 20 MiB
  lab.py up [KIND ...]               build the lab, print it, wait (for trying things by hand)
  lab.py cleanup --prefix P          remove namespaces/processes left by a run with prefix P
"""

import argparse
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import netns  # noqa: E402
import routers  # noqa: E402
from netns import log  # noqa: E402

ALL_KINDS = list(routers.KINDS)
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
DEFAULT_BINARY = os.path.join(REPO, "target", "debug", "keywire")


def cmd_probe(a):
    from probe import probe_all
    from topology import Lab
    kinds = a.kinds or ALL_KINDS
    t0 = time.monotonic()
    with Lab(delay_ms=a.delay_ms) as lab:
        results = probe_all(lab, kinds)
        for r in results:
            print(r.report(), flush=True)
        failed = [r.kind for r in results if not r.ok]
        print(f"probes: {len(results) - len(failed)}/{len(results)} router kinds behave as "
              f"promised ({time.monotonic() - t0:.1f} s)" + (f"; FAILED: {failed}" if failed else ""))
        return 1 if failed else 0


def check_binary(binary):
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise SystemExit(f"no keywire binary at {binary}: run `cargo build -p keywire-cli` "
                         "(or pass --binary / set KEYWIRE_BIN)")


def run_scenarios(lab, binary, scenarios, json_lines=False):
    """Runs scenarios in one lab; prints a table per scenario; returns (all passed, rows)."""
    from peers import make_payload
    from runner import format_table, run_pairs, summarize
    payloads = {}

    def payload(size):
        if size not in payloads:
            path = os.path.join(lab.tmpdir, f"payload-{size}.bin")
            payloads[size] = (path, size, make_payload(path, size))
        return payloads[size]

    all_ok = True
    all_rows = []
    for sc in scenarios:
        if sc.delay_ms != lab.delay_ms or sc.impair != lab.impair:
            lab.impair = dict(sc.impair)
            lab.start_forwarder(sc.delay_ms)
        t0 = time.monotonic()
        table = {}
        if sc.run:  # e.g. gates.run_scenario, with its own columns (in sc.run's module)
            mod = sys.modules[sc.run.__module__]
            rows = sc.run(lab, binary, sc, payload(sc.payload_bytes), payload(sc.reply_bytes),
                          lab.tmpdir)
            columns, left = mod.table_columns(sc)
            table = {"columns": columns, "left": left}
            for r in rows:
                r["figures"] = mod.figures(r)
        else:
            results = run_pairs(lab, binary, sc.pairs, sc.trials, payload(sc.payload_bytes),
                                payload(sc.reply_bytes), lab.tmpdir)
            rows = [summarize(p, results[p.name], lab.rtt_ms) for p in sc.pairs]
        ok = all(r["pass"] for r in rows)
        all_ok &= ok
        title = (f"scenario {sc.name}: {sc.description}\n  {sc.trials} trials per pair, one-way delay "
                 f"{lab.delay_ms:g} ms (RTT {lab.rtt_ms:g} ms)"
                 + (f", impairment {sc.impair}" if sc.impair else "")
                 + f", payload {sc.payload_bytes} bytes; {time.monotonic() - t0:.0f} s; "
                 + ("PASS" if ok else "FAIL"))
        print(format_table(rows, title, **table) + "\n", flush=True)
        for r in rows:
            r["scenario"] = sc.name
            r["lab_rtt_ms"] = lab.rtt_ms
        all_rows += rows
    if json_lines:
        import json
        for r in all_rows:
            key = f"{r['scenario']}.{r['pair'].replace(' -> ', '_to_')}"
            print(json.dumps({"bench": f"natlab.success.{key}", "value": r["completed"],
                              "unit": f"of {r['trials']} trials", "baseline": None, "ratio": None}))
            print(json.dumps({"bench": f"natlab.as_expected.{key}", "value": r["as_expected"],
                              "unit": f"of {r['trials']} trials", "expected": r["expect"],
                              "baseline": None, "ratio": None}))
            for name, value, unit in r.get("figures", []):
                print(json.dumps({"bench": f"natlab.{name}.{key}", "value": value, "unit": unit,
                                  "baseline": None, "ratio": None}))
            if r.get("ttfb_rtt") is not None:
                print(json.dumps({"bench": f"natlab.ttfb.{key}", "value": round(r["ttfb_rtt"], 2),
                                  "unit": "lab RTTs", "baseline": None, "ratio": None}))
            if r.get("direct_rtt") is not None:
                print(json.dumps({"bench": f"natlab.direct.{key}", "value": round(r["direct_rtt"], 2),
                                  "unit": "lab RTTs", "baseline": None, "ratio": None}))
            if r.get("kw_rtt_ms") is not None:
                print(json.dumps({"bench": f"natlab.rtt.{key}", "value": round(r["kw_rtt_ms"], 2),
                                  "unit": "ms", "baseline": r["lab_rtt_ms"],
                                  "ratio": round(r["kw_rtt_ms"] / r["lab_rtt_ms"], 3)}))
    return all_ok, all_rows


def cmd_run(a):
    import scenarios
    from topology import Lab
    check_binary(a.binary)
    if a.scenario not in scenarios.SCENARIOS:
        raise SystemExit(f"unknown scenario {a.scenario!r}; known: {', '.join(scenarios.SCENARIOS)}")
    kw = {} if a.delay_ms is None else {"delay_ms": a.delay_ms}
    if a.trials:
        kw["trials"] = a.trials
    sc = scenarios.SCENARIOS[a.scenario](**kw)
    if a.pairs:
        wanted = set(a.pairs)
        sc.pairs = [p for p in sc.pairs if p.dialer in wanted or p.name in wanted]
        if not sc.pairs:
            raise SystemExit(f"no pair of {a.scenario} matches {a.pairs}")
    with Lab(delay_ms=sc.delay_ms, impair=dict(sc.impair)) as lab:
        ok, _ = run_scenarios(lab, a.binary, [sc])
    return 0 if ok else 1


def self_checks(lab, binary):
    """The lab's checks can fail: wrong expectations must be caught. Returns True if all were."""
    import copy
    from probe import probe_room
    from peers import make_payload
    from runner import Expect, Pair, run_trial
    ok = True
    for promised, actual in (("full-cone", "port-restricted"), ("port-restricted", "full-cone"),
                             ("port-restricted", "symmetric"), ("no-hairpin", "hairpin"),
                             ("ipv6-fw", "public6")):
        room = copy.copy(lab.add_room(actual))
        room.kind = promised
        if promised in ("no-hairpin", "hairpin") and len(room.peers) < 2:
            continue
        lab.flush_state()
        caught = not probe_room(lab, room).ok
        ok &= caught
        print(f"self-check: the {promised} probe {'rejects' if caught else 'DOES NOT REJECT'} "
              f"a {actual} room", flush=True)
    path = os.path.join(lab.tmpdir, "selfcheck.bin")
    data = (path, 1 << 16, make_payload(path, 1 << 16))
    t = run_trial(lab, binary, Pair("port-restricted", "public", Expect("fail", "could not reach")),
                  data, data, lab.tmpdir)
    caught = t.completed and not t.as_expected
    ok &= caught
    print(f"self-check: the runner {'flags' if caught else 'DOES NOT FLAG'} a transfer that was "
          f"expected to fail", flush=True)
    # The gate runner: a NAT'd dialer reaches a public listener directly at once, so a demand
    # for a relayed start must be flagged (while the bytes still arrive).
    import scenarios
    from gates import GateExpect, run_gate_trial
    sc = scenarios.gate_nat_public(trials=1, payload_bytes=1 << 16)
    g = run_gate_trial(lab, binary, sc, Pair("port-restricted", "public", GateExpect(start="relayed")),
                       data, data, lab.tmpdir)
    caught = g.completed and g.start == "direct" and not g.as_expected
    ok &= caught
    print(f"self-check: the gate runner {'flags' if caught else 'DOES NOT FLAG'} a direct start "
          f"that was expected to be relayed", flush=True)
    # nat-classify: a port-restricted (endpoint-independent) listener said to be symmetric.
    import natclass
    ct = natclass.run_classify_trial(lab, binary, scenarios.nat_classify(trials=1),
                                     natclass.classify_pairs(["port-restricted"])[0], lab.tmpdir,
                                     expect="endpoint-dependent")
    caught = ct.nat is not None and not ct.as_expected
    ok &= caught
    print(f"self-check: nat-classify {'flags' if caught else 'DOES NOT FLAG'} an "
          f"endpoint-independent NAT that was expected to be endpoint-dependent", flush=True)
    # The matrix: a NAT'd dialer reaches a public listener directly, so a demand for a relayed
    # path must be flagged (while the bytes still arrive).
    import matrix
    mt = matrix.run_matrix_trial(lab, binary, scenarios.holepunch_matrix(trials=1),
                                 matrix.MatrixPair("port-restricted", "public", "R"), data, data,
                                 lab.tmpdir)
    caught = mt.completed and mt.went_direct and not mt.as_expected
    ok &= caught
    print(f"self-check: the matrix {'flags' if caught else 'DOES NOT FLAG'} a direct path where "
          f"relayed was expected", flush=True)
    # dialkey-forged: an attacker who sends nothing must leave the listener's refusal counters
    # short, so the counters' check is not vacuous (public listener: one dial, a few seconds).
    import dialkey
    sc = scenarios.dialkey_forged(trials=1)
    sc.params["forge_counts"] = (0, 0)
    kt = dialkey.run_dialkey_trial(lab, binary, sc,
                                   dialkey.DialkeyPair("port-restricted", "public", "forged"),
                                   data, data, lab.tmpdir)
    caught = kt.completed and kt.forged_sent == 0 and not kt.as_expected
    ok &= caught
    print(f"self-check: dialkey-forged {'flags' if caught else 'DOES NOT FLAG'} a listener that "
          f"counted no forged envelopes", flush=True)
    return ok


def cmd_ci(a, bench=False):
    import scenarios
    from probe import probe_all
    from topology import Lab
    check_binary(a.binary)
    t0 = time.monotonic()
    scs = scenarios.bench_scenarios() if bench else scenarios.ci_scenarios()
    with Lab(delay_ms=scs[0].delay_ms) as lab:
        log(f"lab {lab.prefix} up; probing every router kind")
        results = probe_all(lab, ALL_KINDS)
        for r in results:
            print(r.report(), flush=True)
        failed = [r.kind for r in results if not r.ok]
        t_probe = time.monotonic() - t0
        print(f"\nprobes: {len(results) - len(failed)}/{len(results)} router kinds behave as promised "
              f"({t_probe:.0f} s)" + (f"; FAILED: {failed}" if failed else "") + "\n", flush=True)
        checked = self_checks(lab, a.binary)
        print(f"self-checks: {'PASS' if checked else 'FAIL'}\n", flush=True)
        ok, _ = run_scenarios(lab, a.binary, scs, json_lines=bench)
    ok = ok and not failed and checked
    print(f"natlab {'bench' if bench else 'ci'}: {'PASS' if ok else 'FAIL'} in "
          f"{time.monotonic() - t0:.0f} s", flush=True)
    return 0 if ok else 1


def cmd_fwdbench(a):
    """20 MiB public -> public: straight routing vs the delay line at 0 ms vs at 20 ms."""
    import json
    import statistics
    from peers import make_payload
    from runner import Pair, run_trial
    from topology import Lab
    check_binary(a.binary)
    with Lab(delay_ms=0.0) as lab:
        size = 20 << 20
        pl = os.path.join(lab.tmpdir, "payload.bin")
        payload = (pl, size, make_payload(pl, size))
        rp = os.path.join(lab.tmpdir, "reply.bin")
        reply = (rp, 1024, make_payload(rp, 1024))
        pair = Pair("public", "public")
        modes = [("straight", None), ("delay-line-0ms", 0.0), ("delay-line-20ms", 20.0)]
        secs = {m: [] for m, _ in modes}
        cpu = {m: [] for m, _ in modes}
        for rnd in range(a.rounds):
            for mode, delay in modes:
                lab.bypass_delay_line(delay is None)
                if delay is not None:
                    lab.start_forwarder(delay)
                t = run_trial(lab, a.binary, pair, payload, reply, lab.tmpdir)
                st = lab.stop_forwarder() if delay is not None else None
                lab.bypass_delay_line(False)
                if not t.completed:
                    print(f"round {rnd} {mode}: transfer failed: {t.note}")
                    return 1
                secs[mode].append(size / (t.mib_s * (1 << 20)))
                if st:
                    cpu[mode].append(st["cpu_s"])
                log(f"round {rnd} {mode}: {t.mib_s:.1f} MiB/s"
                    + (f", forwarder {st['in']} packets, {st['cpu_s']} s CPU, queue max "
                       f"{st['max_queue']}, drops {st['tail_dropped']}" if st else ""))
        base = statistics.median(secs["straight"])
        for mode, _ in modes:
            med = statistics.median(secs[mode])
            print(json.dumps({"bench": f"natlab.fwd_transfer_s.{mode}", "value": round(med, 3),
                              "unit": "s for 20 MiB", "baseline": round(base, 3),
                              "ratio": round(med / base, 2),
                              "forwarder_cpu_s": round(statistics.median(cpu[mode]), 2) if cpu[mode] else None}))
        capacity = size / statistics.median(secs["delay-line-0ms"]) / (1 << 20)
        demand = size / statistics.median(secs["delay-line-20ms"]) / (1 << 20)
        ok = capacity >= 2 * demand
        print(f"delay line carries {capacity:.1f} MiB/s at 0 ms; a 20 MiB transfer at 20 ms uses "
              f"{demand:.1f} MiB/s: {'not a bottleneck' if ok else 'POSSIBLY A BOTTLENECK'} "
              f"(headroom x{capacity / demand:.1f})")
    return 0 if ok else 1


def cmd_up(a):
    from topology import Lab
    with Lab(delay_ms=a.delay_ms) as lab:
        for k in a.kinds or ALL_KINDS:
            lab.add_room(k)
        print(lab.describe())
        print(f"\nkeywire binary: {a.binary}\nrun e.g.: ip netns exec {lab.prefix}pub1 {a.binary} "
              f"--key /tmp/k1 listen --bind 198.51.100.10:7000\n"
              f"the lab stays up for {a.seconds} s (Ctrl-C to tear it down now)", flush=True)
        deadline = time.monotonic() + a.seconds
        while time.monotonic() < deadline:
            time.sleep(0.5)
    return 0


def cmd_list(a):
    import scenarios
    print("router kinds (room kinds):")
    for k, (desc, fam) in routers.KINDS.items():
        print(f"  {k:16} IPv{fam}  {desc}")
    print("scenarios:")
    for name, fn in scenarios.SCENARIOS.items():
        print(f"  {name:16} {' '.join((fn.__doc__ or '').split())}")
    return 0


def cmd_cleanup(a):
    ok = netns.cleanup_prefix(a.prefix)
    return 0 if ok else 1


def cmd_reap(a):
    netns.reap(a.prefix, a.watch_pid, a.tmpdir, a.max_seconds)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, max_seconds=1800):
        p.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay of the lab internet")
        p.add_argument("--binary", default=os.environ.get("KEYWIRE_BIN", DEFAULT_BINARY))
        p.add_argument("--max-seconds", type=int, default=max_seconds,
                       help="overall time limit; the run cleans up and fails after it")

    p = sub.add_parser("probe")
    common(p)
    p.add_argument("kinds", nargs="*", choices=ALL_KINDS + [[]], metavar="KIND")
    p.set_defaults(fn=cmd_probe)

    p = sub.add_parser("run", help="one scenario's table")
    common(p)
    p.set_defaults(delay_ms=None)
    p.add_argument("scenario")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--pairs", nargs="*", help="only these dialer kinds (or 'a -> b' names)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("ci", help="probes + the short scenario table")
    common(p, max_seconds=1800)
    p.set_defaults(fn=cmd_ci)

    p = sub.add_parser("bench", help="probes + the long scenario tables, JSON figures")
    # The matrix's 20 trials of 56 pairs take most of it (docs/natlab.md).
    common(p, max_seconds=4 * 3600)
    p.set_defaults(fn=lambda a: cmd_ci(a, bench=True))

    p = sub.add_parser("fwdbench", help="does the delay line bottleneck 20 MiB?")
    common(p)
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(fn=cmd_fwdbench)

    p = sub.add_parser("list", help="router kinds and scenarios")
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("up")
    common(p, max_seconds=0)  # bounded by --seconds
    p.add_argument("kinds", nargs="*", metavar="KIND")
    p.add_argument("--seconds", type=float, default=3600)
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("cleanup")
    p.add_argument("--prefix", required=True, help="e.g. kwlab12345- (or kwlab for every run)")
    p.set_defaults(fn=cmd_cleanup)

    p = sub.add_parser("reap", help=argparse.SUPPRESS)
    p.add_argument("--prefix", required=True)
    p.add_argument("--watch-pid", type=int, required=True)
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--max-seconds", type=float, default=4 * 3600)
    p.set_defaults(fn=cmd_reap)

    a = ap.parse_args(argv)
    if getattr(a, "max_seconds", None) and a.cmd != "reap":
        import signal
        signal.alarm(int(a.max_seconds))
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
