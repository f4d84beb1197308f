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


def cmd_cleanup(a):
    ok = netns.cleanup_prefix(a.prefix)
    return 0 if ok else 1


def cmd_reap(a):
    netns.reap(a.prefix, a.watch_pid, a.tmpdir, a.max_seconds)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay of the lab internet")
        p.add_argument("--binary", default=os.environ.get("KEYWIRE_BIN", DEFAULT_BINARY))

    p = sub.add_parser("probe")
    common(p)
    p.add_argument("kinds", nargs="*", choices=ALL_KINDS + [[]], metavar="KIND")
    p.set_defaults(fn=cmd_probe)

    p = sub.add_parser("up")
    common(p)
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
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
