"""Probes: each room's router is observed from public hosts, so the lab proves its own rooms.

A probe drives plain UDP/TCP sockets that live in different namespaces from one thread (a socket
stays in the namespace it was created in). It learns the mapping (which public address:port the
observers see for one local socket) and the filtering (which unsolicited packets reach that
socket), and compares them with what the room's kind promises. Every check can fail.

Observers: pub1 (198.51.100.10) on ports 3478 and 3479, pub2 (192.0.2.10) on a different /24,
pub3 (192.0.2.20), a host the peer never sent anything to.
"""

import select
import socket
import time

from netns import in_netns

WAIT_S = 0.6  # how long "dropped" waits; the lab RTT is tens of milliseconds
OBS_PORT = 3478


def udp_socket(ns, family, addr, port=0):
    with in_netns(ns):
        s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind((addr, port))
    s.setblocking(False)
    return s


def recv_within(sock, seconds):
    """The (payload, source) of the first datagram within `seconds`, or None."""
    r, _, _ = select.select([sock], [], [], seconds)
    if not r:
        return None
    data, src = sock.recvfrom(2048)
    return data, src[:2]


class Checks:
    def __init__(self, kind):
        self.kind = kind
        self.results = []  # (name, ok, detail)

    def check(self, name, ok, detail=""):
        self.results.append((name, bool(ok), detail))
        return ok

    @property
    def ok(self):
        return bool(self.results) and all(ok for _, ok, _ in self.results)

    def report(self):
        lines = [f"probe {self.kind}: {'PASS' if self.ok else 'FAIL'}"]
        for name, ok, detail in self.results:
            lines.append(f"  [{'ok' if ok else 'FAIL'}] {name}{(': ' + detail) if detail else ''}")
        return "\n".join(lines)


class Observers:
    def __init__(self, lab, family):
        self.family = family
        h1, h2, h3 = lab.hosts["pub1"], lab.hosts["pub2"], lab.hosts["pub3"]
        self.o1 = udp_socket(h1.ns, family, h1.addr(family), OBS_PORT)
        self.o1alt = udp_socket(h1.ns, family, h1.addr(family), OBS_PORT + 1)
        self.o2 = udp_socket(h2.ns, family, h2.addr(family), OBS_PORT)
        self.o3 = udp_socket(h3.ns, family, h3.addr(family), OBS_PORT)
        self.all = [self.o1, self.o1alt, self.o2, self.o3]

    def addr(self, s):
        return s.getsockname()[:2]

    def close(self):
        for s in self.all:
            s.close()


def mapping_seen(client, observer, label):
    """Sends from `client` to `observer`; returns the source address the observer saw."""
    client.sendto(label.encode(), observer.getsockname()[:2])
    got = recv_within(observer, WAIT_S * 2)
    return got[1] if got else None


def reaches(sender, target, receiver):
    """Does a datagram from `sender` to `target` arrive at `receiver`? Returns the source seen."""
    token = f"t{time.monotonic_ns()}".encode()
    sender.sendto(token, target)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        got = recv_within(receiver, max(0.0, deadline - time.monotonic()))
        if got is None:
            return None
        if got[0] == token:
            return got[1]
    return None


def probe_room(lab, room):
    """Runs the probe of `room` and returns its Checks."""
    kind = room.kind
    c = Checks(kind)
    fam = room.family
    obs = Observers(lab, fam)
    socks = []
    try:
        peer = room.peer
        local_ip = peer.addr(fam)
        client = udp_socket(peer.ns, fam, local_ip, 0)
        socks.append(client)
        local_port = client.getsockname()[1]
        c.check("peer address", local_ip, f"{peer.name} {local_ip}:{local_port}")

        if kind == "udp-blocked":
            m1 = mapping_seen(client, obs.o1, "m1")
            c.check("UDP does not get out", m1 is None, f"observer saw {m1}")
            seen = tcp_mapping(peer.ns, fam, local_ip, lab.hosts["pub1"])
            c.check("TCP gets out (through NAT)", seen and seen[0] == room.public_ip,
                    f"observer saw {seen}, router public address {room.public_ip}")
            return c

        m1 = mapping_seen(client, obs.o1, "m1")
        m2 = mapping_seen(client, obs.o2, "m2")
        c.check("UDP gets out", m1 and m2, f"pub1 saw {m1}, pub2 saw {m2}")
        if not (m1 and m2):
            return c
        c.check("public address", m1[0] == room.public_ip,
                f"seen {m1[0]}, expected {room.public_ip}")
        eim = m1 == m2
        preserved = m1[1] == local_port
        from_o1 = reaches(obs.o1, m1, client)
        from_o1alt = reaches(obs.o1alt, m1, client)
        from_o3 = reaches(obs.o3, m1, client)
        details = (f"mapping pub1 {m1[0]}:{m1[1]} pub2 {m2[0]}:{m2[1]} (local port {local_port}); "
                   f"replies: pub1 {bool(from_o1)}, pub1 other port {bool(from_o1alt)}, "
                   f"pub3 (never contacted) {bool(from_o3)}")
        c.check("replies from the contacted observer arrive", from_o1, details)

        if kind in ("public", "ipv6-fw"):
            c.check("no NAT: observers see the local address and port",
                    m1 == (local_ip, local_port) and eim, f"{m1} vs {(local_ip, local_port)}")
        if kind == "public":
            c.check("no filtering: pub3 reaches the peer unsolicited", from_o3)
            rtt = echo_rtt_ms(client, obs.o1)
            lo, hi = lab.rtt_ms, lab.rtt_ms + max(10.0, 0.25 * lab.rtt_ms)
            c.check("delay line: round trip to pub1 is 2 x the one-way delay", rtt and lo <= rtt <= hi,
                    f"measured {rtt and round(rtt, 1)} ms, expected {lo:.0f}..{hi:.0f} ms")
        if kind == "ipv6-fw":
            c.check("stateful firewall: pub3 (unsolicited) is dropped", not from_o3)
            c.check("stateful firewall: pub1 from another port (unsolicited) is dropped", not from_o1alt)
        if kind == "full-cone":
            c.check("endpoint-independent mapping", eim)
            c.check("port preserved", preserved, f"{m1[1]} vs {local_port}")
            c.check("endpoint-independent filtering: pub3 reaches the mapped port", from_o3)
            c.check("endpoint-independent filtering: pub1's other port reaches it", from_o1alt)
        if kind in ("port-restricted", "hairpin", "no-hairpin", "cgnat"):
            c.check("endpoint-independent mapping", eim)
            c.check("address-and-port-dependent filtering: pub3 dropped", not from_o3)
            c.check("address-and-port-dependent filtering: pub1's other port dropped", not from_o1alt)
            if kind != "cgnat":
                c.check("port preserved", preserved, f"{m1[1]} vs {local_port}")
        if kind == "cgnat":
            home = room.routers[1]
            c.check("two NATs: home router WAN is carrier-grade space",
                    home.wan_v4.startswith("100.64."), f"home WAN {home.wan_v4}, public {m1[0]}")
        if kind == "snat-range":
            c.check("endpoint-independent mapping", eim)
            c.check("port NOT preserved", not preserved, f"external {m1[1]}, local {local_port}")
            c.check("address-and-port-dependent filtering: pub3 dropped", not from_o3)
        if kind == "symmetric":
            c.check("endpoint-dependent mapping: different external ports per destination",
                    m1[1] != m2[1], f"{m1[1]} vs {m2[1]}")
            c.check("address-and-port-dependent filtering: pub3 dropped", not from_o3)
        if kind in ("hairpin", "no-hairpin"):
            probe_hairpin(room, client, m1, obs, c, socks)
        return c
    finally:
        obs.close()
        for s in socks:
            s.close()


def echo_rtt_ms(client, observer, rounds=8):
    """Smallest round trip client -> observer -> client, in milliseconds (None if all lost).

    The minimum, not the median: scheduling on a loaded machine only ever adds time, so the
    smallest sample is the one closest to what the delay line itself adds."""
    samples = []
    for i in range(rounds):
        t0 = time.monotonic()
        client.sendto(b"ping%d" % i, observer.getsockname()[:2])
        got = recv_within(observer, WAIT_S)
        if not got:
            continue
        observer.sendto(got[0], got[1])
        back = recv_within(client, WAIT_S)
        if back and back[0] == got[0]:
            samples.append((time.monotonic() - t0) * 1000.0)
    return min(samples) if samples else None


def probe_hairpin(room, a_sock, a_mapped, obs, c, socks):
    """Peer b sends to peer a's public mapping: arrives with hairpinning, not without."""
    b = room.peers[1]
    b_sock = udp_socket(b.ns, 4, b.v4, 0)
    socks.append(b_sock)
    b_mapped = mapping_seen(b_sock, obs.o1, "mb")
    seen = reaches(b_sock, a_mapped, a_sock)
    if room.kind == "hairpin":
        c.check("hairpin: b reaches a through a's public mapping", seen,
                f"a mapped {a_mapped}, b mapped {b_mapped}, a saw {seen}")
        c.check("hairpin: a sees b as b's public mapping", seen == b_mapped,
                f"a saw {seen}, b's mapping {b_mapped}")
    else:
        c.check("no hairpin: b cannot reach a through a's public mapping", seen is None,
                f"a saw {seen}")


def tcp_mapping(ns, family, local_ip, server_host):
    """Connects over TCP from `ns` to a listener on `server_host`; returns the source it saw."""
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    with in_netns(server_host.ns):
        srv = socket.socket(fam, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((server_host.addr(family), OBS_PORT))
        srv.listen(1)
    with in_netns(ns):
        cli = socket.socket(fam, socket.SOCK_STREAM)
    try:
        cli.settimeout(3)
        cli.connect((server_host.addr(family), OBS_PORT))
        srv.settimeout(3)
        conn, src = srv.accept()
        conn.close()
        return src[:2]
    except OSError:
        return None
    finally:
        cli.close()
        srv.close()


def probe_all(lab, kinds):
    results = []
    for kind in kinds:
        room = lab.add_room(kind)
        lab.flush_state()
        results.append(probe_room(lab, room))
    return results
