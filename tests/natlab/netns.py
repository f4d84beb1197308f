"""Low-level pieces of the NAT lab: commands in namespaces, processes we start, cleanup.

Everything the lab creates is named with the run's prefix (`kwlab<pid>-...`), and every
process it starts is recorded by PID, so cleanup removes exactly what this run made:
- `Registry.cleanup()` runs at exit and on SIGTERM/SIGINT/SIGHUP;
- a detached reaper process (`lab.py reap`) cleans up when the runner dies by SIGKILL;
- `lab.py cleanup --prefix P` removes leftovers of any prefix by hand.
Processes started in lab namespaces also get PR_SET_PDEATHSIG, so they die with the runner.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def log(msg):
    print(f"[natlab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class CommandError(RuntimeError):
    pass


def run(args, check=True, input=None, timeout=30):
    """Runs a command (list of arguments) and returns its stdout; raises with stderr on failure."""
    p = subprocess.run(args, input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise CommandError(f"{' '.join(args)} -> exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def ns_run(ns, args, **kw):
    """Runs a command inside namespace `ns`."""
    return run(["ip", "netns", "exec", ns] + list(args), **kw)


def ip_batch(ns, lines):
    """Runs many `ip` commands in one process (fast); `ns` None means the root namespace."""
    # Batch lines cannot carry "-6": those run in a second, IPv6 batch after the others.
    v4 = [x for x in lines if not x.startswith("-6 ")]
    v6 = [x[3:] for x in lines if x.startswith("-6 ")]
    for fam, batch in (([], v4), (["-6"], v6)):
        if batch:
            base = ["ip"] + fam + (["-n", ns] if ns else []) + ["-batch", "-"]
            run(base, input="\n".join(batch) + "\n")


def sysctl(ns, settings):
    """Writes sysctls inside a namespace via /proc (no sysctl binary needed)."""
    with in_netns(ns):
        for key, value in settings.items():
            path = "/proc/sys/" + key.replace(".", "/")
            with open(path, "w") as f:
                f.write(str(value))


def nft(ns, ruleset):
    run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=ruleset)


def _pdeathsig():
    # Runs in the child between fork and exec: die with the runner (SIGKILL cannot be trapped).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class in_netns:
    """Context manager: the calling thread enters network namespace `ns` (None = stay).

    Sockets created inside stay in that namespace after leaving, which lets the probes drive
    sockets in many namespaces from one thread.
    """

    def __init__(self, ns):
        self.ns = ns

    def __enter__(self):
        if self.ns is None:
            return self
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(os.path.join(NETNS_DIR, self.ns), os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {self.ns}: {os.strerror(err)}")
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc):
        if self.ns is None:
            return False
        try:
            if _libc.setns(self.home, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back home: {os.strerror(err)}")
        finally:
            os.close(self.home)
        return False


def list_netns(prefix):
    if not os.path.isdir(NETNS_DIR):
        return []
    return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))


def netns_pids(ns):
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in out.split() if x.isdigit()]


def kill_pids(pids, grace=1.0):
    """SIGTERM, then SIGKILL after `grace` seconds, to exactly these process ids."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _exists(p)]
        if alive:
            time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _exists(pid):
    try:
        # Reap it if it is our child, so a zombie does not count as alive.
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def cleanup_prefix(prefix, quiet=False):
    """Removes every namespace named `prefix*` and ends the processes inside them (by PID).

    Processes inside a lab namespace were started by the lab, so they are ours to end.
    """
    if not prefix or len(prefix) < 4:
        raise ValueError("refusing a prefix shorter than 4 characters")
    names = list_netns(prefix)
    pids = sorted({pid for ns in names for pid in netns_pids(ns)} - {os.getpid()})
    if pids:
        kill_pids(pids)
    for ns in names:
        run(["ip", "netns", "del", ns], check=False)
    left = list_netns(prefix)
    if not quiet:
        log(f"cleanup {prefix}: ended {len(pids)} processes, removed {len(names) - len(left)} namespaces"
            + (f", {len(left)} left: {left}" if left else ""))
    return not left


class Registry:
    """What one lab run created: its prefix, its processes, its temp dir; cleans them up once."""

    def __init__(self, prefix, tmpdir, reaper=True, max_life_s=4 * 3600):
        self.prefix = prefix
        self.tmpdir = tmpdir
        self.procs = []
        self.cleaned = False
        self.reaper = None
        # SIGALRM: the run's overall time limit (lab.py --max-seconds) ends it like a SIGTERM.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
            signal.signal(sig, self._on_signal)
        import atexit
        atexit.register(self.cleanup)
        if reaper:
            self.reaper = subprocess.Popen(
                [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lab.py"),
                 "reap", "--prefix", prefix, "--watch-pid", str(os.getpid()),
                 "--tmpdir", tmpdir, "--max-seconds", str(max_life_s)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)

    def _on_signal(self, signum, frame):
        log(f"signal {signum}: cleaning up")
        self.cleanup()
        os._exit(128 + signum)

    def spawn(self, ns, args, **kw):
        """Starts `args` in namespace `ns` (None = root), recorded for cleanup; dies with us."""
        cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
        p = subprocess.Popen(cmd, preexec_fn=_pdeathsig, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, grace=1.0):
        if p.poll() is None:
            kill_pids([p.pid], grace)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def cleanup(self):
        if self.cleaned:
            return
        self.cleaned = True
        kill_pids([p.pid for p in self.procs if p.poll() is None])
        for p in self.procs:
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        cleanup_prefix(self.prefix, quiet=True)
        if self.tmpdir and os.path.isdir(self.tmpdir):
            import shutil
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if self.reaper and self.reaper.poll() is None:
            kill_pids([self.reaper.pid])
            self.reaper.wait(timeout=5)


def reap(prefix, watch_pid, tmpdir, max_seconds):
    """The reaper: waits (bounded) for the runner to die, then removes what it left behind."""
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        try:
            os.kill(watch_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        return  # the runner outlived our watch; it cleans up itself
    time.sleep(0.2)
    cleanup_prefix(prefix, quiet=True)
    if tmpdir and os.path.isdir(tmpdir) and os.path.basename(tmpdir).startswith("kwlab"):
        import shutil
        shutil.rmtree(tmpdir, ignore_errors=True)
