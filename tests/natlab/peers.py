"""Running the real `keywire` binary in lab namespaces and reading what it reports.

A `KeywireProc` starts `keywire --json ...` in a namespace (recorded for cleanup, dies with the
runner), feeds stdin from a file, hashes stdout (and notes when its first byte arrived), and
collects the JSON events of stderr with the runner's receive time. With `stdin_rate` (bytes per
second) stdin is fed from the file at that pace, so a transfer stays in flight for a known time.
With `stdin_hold` (a threading.Event) nothing is fed until the runner sets it, so a connection can
be watched (e.g. until it goes direct) before its payload starts. With `stdin_pause`
((offset, seconds)) the feed stops once after `offset` bytes for `seconds`: the application falls
silent mid-stream (NAT mappings must then be held by keywire's own keepalives).
"""

import hashlib
import json
import os
import subprocess
import threading
import time


class KeywireProc:
    def __init__(self, lab, binary, host, args, keyfile, network, stdin_path=None, label="",
                 stdin_rate=None, stdin_hold=None, stdin_pause=None):
        self.label = label or host.name
        self.events = []  # (monotonic time received, dict)
        self.text = []  # stderr lines that are not JSON
        self.out_bytes = 0
        self.out_hash = hashlib.sha256()
        self.first_byte_t = None
        self.last_byte_t = None
        self.pause_t = None  # (monotonic start, seconds) of the stdin pause, once it began
        self._cv = threading.Condition()
        self.lab = lab
        paced = stdin_path is not None and (stdin_rate is not None or stdin_hold is not None
                                            or stdin_pause is not None)
        if paced:
            stdin = subprocess.PIPE
        else:
            stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
        self.t_spawn = time.monotonic()
        self.proc = lab.reg.spawn(
            host.ns, [binary, "--key", keyfile, "--network", network, "--json"] + list(args),
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if stdin_path and not paced:
            stdin.close()
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        if paced:
            threading.Thread(target=self._feed, args=(stdin_path, stdin_rate, stdin_hold, stdin_pause),
                             daemon=True).start()
        for t in self._threads:
            t.start()

    def _feed(self, path, rate, hold=None, pause=None):
        """Writes the file to stdin at `rate` bytes/s (None: at once; in 64 KiB steps), once
        `hold` is set (if given), pausing once for pause[1] s after pause[0] bytes (if given),
        then closes stdin."""
        sink = self.proc.stdin
        if hold is not None:
            # Bounded: a runner that forgets to release cannot leave the feeder behind forever.
            hold.wait(600)
        t0 = time.monotonic()
        sent = 0
        try:
            with open(path, "rb") as f:
                while True:
                    if pause is not None and sent >= pause[0]:
                        self.pause_t = (time.monotonic(), pause[1])
                        time.sleep(pause[1])
                        t0 += pause[1]  # the pause does not count against the rate
                        pause = None
                    step = 64 << 10 if pause is None else min(64 << 10, pause[0] - sent)
                    chunk = f.read(step)
                    if not chunk:
                        break
                    ahead = sent / rate - (time.monotonic() - t0) if rate else 0
                    if ahead > 0:
                        time.sleep(ahead)
                    sink.write(chunk)
                    sink.flush()
                    sent += len(chunk)
        except (BrokenPipeError, OSError, ValueError):
            pass  # the process went away; its exit code tells the story
        finally:
            try:
                sink.close()
            except OSError:
                pass

    def _read_out(self):
        f = self.proc.stdout
        while True:
            chunk = f.read1(1 << 16)
            if not chunk:
                break
            now = time.monotonic()
            if self.first_byte_t is None:
                self.first_byte_t = now
            self.last_byte_t = now
            self.out_bytes += len(chunk)
            self.out_hash.update(chunk)

    def _read_err(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            now = time.monotonic()
            try:
                ev = json.loads(line)
                if not isinstance(ev, dict):
                    raise ValueError
            except ValueError:
                ev = None
            with self._cv:
                if ev is not None:
                    self.events.append((now, ev))
                else:
                    self.text.append(line)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_event(self, name, timeout):
        """The first event named `name` (waiting up to `timeout` s), or None."""
        hit = self.wait_match(lambda t, ev: ev.get("event") == name, timeout)
        return hit[1] if hit else None

    def wait_match(self, pred, timeout):
        """The first (receive time, event) for which pred(t, ev) holds, waiting up to `timeout`
        s (less if the process ends), or None."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for t, ev in self.events:
                    if pred(t, ev):
                        return t, ev
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._threads[1].is_alive()):
                    return None
                self._cv.wait(min(left, 0.2))

    def event(self, name):
        for t, ev in self.events:
            if ev.get("event") == name:
                return t, ev
        return None, None

    def wait(self, timeout):
        """Exit code, or None if still running after `timeout` s (then it is stopped)."""
        try:
            rc = self.proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            self.lab.reg.stop(self.proc)
            rc = None
        for t in self._threads:
            t.join(timeout=5)
        return rc

    def stop(self):
        self.lab.reg.stop(self.proc)
        for t in self._threads:
            t.join(timeout=5)

    def error_text(self):
        """What the process said about a failure (JSON error events and plain lines)."""
        parts = [ev.get("error", "") for _, ev in self.events if ev.get("event") == "error"]
        return " | ".join([p for p in parts if p] + self.text)[-2000:]


def bind_addr(ip, port):
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def make_payload(path, size, seed=None):
    """Writes `size` random bytes to `path`; returns their sha256 hex digest."""
    h = hashlib.sha256()
    left = size
    with open(path, "wb") as f:
        while left > 0:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()
