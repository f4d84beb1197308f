#!/usr/bin/env python3
"""The lab's delay line: a TUN device whose packets come back out after a one-way delay.

These kernels have no netem. The "internet" namespace routes every packet arriving from a host or
router link into the TUN device (policy routing: `iif hN lookup 100`, table 100 = `dev kwtun`);
this program reads each packet, holds it for the configured delay (plus optional jitter,
reordering, loss, duplication) and writes it back, and the kernel routes it on by the main table.
So every packet crossing the lab internet is delayed once: RTT = 2 x delay.

Bounded: the queue holds at most --queue-limit packets (tail drop beyond, counted), the program
exits after --max-seconds, when its parent dies, or on SIGTERM (writing its counters to --stats).
"""

import argparse
import collections
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dev", default="kwtun")
    ap.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay")
    ap.add_argument("--jitter-ms", type=float, default=0.0, help="uniform extra delay 0..jitter")
    ap.add_argument("--loss", type=float, default=0.0, help="drop probability per packet")
    ap.add_argument("--dup", type=float, default=0.0, help="duplication probability")
    ap.add_argument("--reorder", type=float, default=0.0,
                    help="probability a packet is held --reorder-ms longer (so later ones pass it)")
    ap.add_argument("--reorder-ms", type=float, default=10.0)
    ap.add_argument("--queue-limit", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--max-seconds", type=float, default=3600.0)
    ap.add_argument("--stats", default=None, help="write counters (JSON) here at exit")
    ap.add_argument("--ready", default=None, help="create this file once the TUN is attached")
    a = ap.parse_args()

    rng = random.Random(a.seed)
    fd = open_tun(a.dev)
    parent = os.getppid()
    stats = {"in": 0, "out": 0, "lost": 0, "dup": 0, "reordered": 0, "tail_dropped": 0,
             "max_queue": 0, "cpu_s": 0.0, "config": vars(a)}
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    if a.ready:
        open(a.ready, "w").close()

    delay = a.delay_ms / 1000.0
    jitter = a.jitter_ms / 1000.0
    reorder_extra = a.reorder_ms / 1000.0
    impaired = a.loss > 0 or a.dup > 0 or a.reorder > 0 or jitter > 0
    # Constant delay keeps packets in arrival order: a FIFO suffices. Jitter and reordering
    # need the heap ordered by due time.
    fifo = not (jitter or a.reorder)
    queue = collections.deque()  # (due, packet), FIFO mode
    heap = []  # (due, seq, packet), heap mode
    seq = 0
    poller = select.epoll()
    poller.register(fd, select.EPOLLIN)
    started = time.monotonic()
    last_parent_check = started
    while not stopping:
        now = time.monotonic()
        if now - started > a.max_seconds:
            break
        if now - last_parent_check > 0.5:
            last_parent_check = now
            if os.getppid() != parent:
                break
        # Release what is due.
        if fifo:
            while queue and queue[0][0] <= now:
                _, pkt = queue.popleft()
                try:
                    os.write(fd, pkt)
                    stats["out"] += 1
                except OSError:
                    stats["tail_dropped"] += 1
            next_due = queue[0][0] if queue else None
        else:
            while heap and heap[0][0] <= now:
                _, _, pkt = heapq.heappop(heap)
                try:
                    os.write(fd, pkt)
                    stats["out"] += 1
                except OSError:
                    stats["tail_dropped"] += 1
            next_due = heap[0][0] if heap else None
        timeout = 0.5 if next_due is None else max(0.0, next_due - now)
        try:
            events = poller.poll(timeout)
        except InterruptedError:
            continue
        if not events:
            continue
        # Read a bounded burst of packets.
        now = time.monotonic()
        for _ in range(512):
            try:
                pkt = os.read(fd, 65535)
            except BlockingIOError:
                break
            stats["in"] += 1
            copies = 1
            due = now + delay
            if impaired:
                if a.loss and rng.random() < a.loss:
                    stats["lost"] += 1
                    continue
                if jitter:
                    due += rng.random() * jitter
                if a.reorder and rng.random() < a.reorder:
                    due += reorder_extra
                    stats["reordered"] += 1
                if a.dup and rng.random() < a.dup:
                    copies = 2
                    stats["dup"] += 1
            for _ in range(copies):
                if len(queue) + len(heap) >= a.queue_limit:
                    stats["tail_dropped"] += 1
                    continue
                if fifo:
                    queue.append((due, pkt))
                else:
                    seq += 1
                    heapq.heappush(heap, (due, seq, pkt))
        depth = len(queue) + len(heap)
        if depth > stats["max_queue"]:
            stats["max_queue"] = depth
    t = os.times()
    stats["cpu_s"] = round(t.user + t.system, 3)
    stats["seconds"] = round(time.monotonic() - started, 3)
    if a.stats:
        with open(a.stats, "w") as f:
            json.dump(stats, f)
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
