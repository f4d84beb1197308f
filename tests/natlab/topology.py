"""NAT lab topology: an "internet" namespace, public hosts, routers of each kind, their peers.

    pub1 198.51.100.10 ─┐                       ┌─ wan 203.0.113.11 [router full-cone] lan 192.168.1.0/24 ─ peer a
    pub2 192.0.2.10  ───┤  inet (routes through ├─ wan 203.0.113.12 [router symmetric] lan ... ─ peer a
    pub3 192.0.2.20  ───┤  the kwtun delay line)├─ wan 203.0.113.13 [carrier NAT] lan 100.64.3.0/24
                        │                       │       └─ wan 100.64.3.2 [home router] lan 192.168.4.0/24 ─ peer a
                        └─ ...                  └─ wan 2001:db8:113::14 [ipv6-fw] lan 2001:db8:1000:5::/64 ─ peer a

Each host or router WAN hangs off the internet namespace on its own veth, addressed as a /32
(/128) with the segment's .1 (fe80::1) as gateway: two hosts of one /24 still talk through the
internet's router, so every packet between different hosts crosses the delay line once.
Addresses are documentation ranges and live only inside the lab's namespaces; nothing routes to
the machine's own network (the root namespace is never touched).
"""

import ipaddress
import os
import tempfile
import time
import sys

import netns
import routers
from netns import ip_batch, nft, ns_run, sysctl

HERE = os.path.dirname(os.path.abspath(__file__))
TUN = "kwtun"
TUN_TABLE = 100

# Public hosts: name -> (IPv4 /24 segment address, IPv6 address).
PUBLIC_HOSTS = {
    "pub1": ("198.51.100.10", "2001:db8:5100::10"),  # the public listener of the scenarios
    "pub2": ("192.0.2.10", "2001:db8:200::10"),      # second public host (second observer)
    "pub3": ("192.0.2.20", "2001:db8:200::20"),      # third public host (never contacted first)
}
ROUTER_WAN_V4 = "203.0.113.{}"
ROUTER_WAN_V6 = "2001:db8:113::{:x}"
FORWARDER_MAX_S = 4 * 3600


class Host:
    """A namespace running peers: a public host, or a peer on a router's LAN."""

    def __init__(self, lab, name, ns, v4=None, v6=None, router=None):
        self.lab, self.name, self.ns, self.v4, self.v6, self.router = lab, name, ns, v4, v6, router

    def addr(self, family):
        return self.v4 if family == 4 else self.v6

    def __repr__(self):
        return f"Host({self.name}, {self.v4 or ''} {self.v6 or ''})"


class Router:
    def __init__(self, lab, name, kind, ns, wan_v4, wan_v6, lan_v4, lan_v6, upstream):
        self.lab, self.name, self.kind, self.ns = lab, name, kind, ns
        self.wan_v4, self.wan_v6 = wan_v4, wan_v6
        self.lan_v4, self.lan_v6 = lan_v4, lan_v6  # ip_network or None
        self.upstream = upstream  # None = the internet, else the Router this one sits behind
        self.peers = 0


class Room:
    """What a scenario calls a kind: a public host, or one or more peers behind router(s)."""

    def __init__(self, kind, peers, routers_, family):
        self.kind, self.peers, self.routers, self.family = kind, peers, routers_, family

    @property
    def peer(self):
        return self.peers[0]

    @property
    def public_ip(self):
        """The address the outside world sees (outermost router's WAN, or the host's own)."""
        if not self.routers or self.family == 6:  # IPv6 rooms have no NAT
            return self.peer.addr(self.family)
        outer = self.routers[0]
        return outer.wan_v4 if self.family == 4 else outer.wan_v6


class Lab:
    """One lab run. Use as a context manager: everything it created goes away on exit."""

    def __init__(self, delay_ms=20.0, udp_timeout_s=5, prefix=None, reaper=True, impair=None):
        if os.geteuid() != 0:
            raise SystemExit("the NAT lab needs root (network namespaces, nftables)")
        self.prefix = prefix or f"kwlab{os.getpid()}-"
        self.tmpdir = tempfile.mkdtemp(prefix=f"kwlab{os.getpid()}-")
        self.reg = netns.Registry(self.prefix, self.tmpdir, reaper=reaper)
        self.delay_ms = delay_ms
        self.impair = impair or {}
        self.udp_timeout_s = udp_timeout_s
        self.inet = self.prefix + "inet"
        self.namespaces = []
        self.hosts = {}
        self.routers = {}
        self.rooms = {}
        self.inet_ifaces = []
        self.forwarder = None
        self._next_router = 10
        self._next_lan = 1
        self._build_internet()
        for name, (v4, v6) in PUBLIC_HOSTS.items():
            self.add_public_host(name, v4, v6)

    # -- context manager -------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        self.reg.cleanup()

    @property
    def rtt_ms(self):
        return 2.0 * self.delay_ms

    # -- namespaces and links --------------------------------------------------------------
    def _add_ns(self, short):
        ns = self.prefix + short
        netns.run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        # No DAD (addresses usable at once), no redirects (hairpin would teach peers wrong
        # shortcuts), no reverse-path filter (packets come back out of the delay line).
        sysctl(ns, {
            "net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0,
            "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
            "net.ipv4.conf.all.send_redirects": 0, "net.ipv4.conf.default.send_redirects": 0,
            "net.ipv4.conf.all.accept_redirects": 0, "net.ipv6.conf.all.accept_redirects": 0,
        })
        ip_batch(ns, ["link set lo up"])
        return ns

    def _conntrack_sysctls(self, ns):
        t = self.udp_timeout_s
        settings = {
            "net.netfilter.nf_conntrack_udp_timeout": t,
            "net.netfilter.nf_conntrack_udp_timeout_stream": t,
        }
        try:
            sysctl(ns, settings)
        except OSError:
            # conntrack's sysctls appear once nftables uses conntrack in this namespace.
            nft(ns, "table inet kwprobe { chain c { type filter hook prerouting priority 0; ct state new accept; } }")
            nft(ns, "delete table inet kwprobe")
            sysctl(ns, settings)
        # Bridged LAN traffic stays out of the IP hooks (br_netfilter may be loaded).
        for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
            try:
                sysctl(ns, {key: 0})
            except OSError:
                pass

    def _build_internet(self):
        ns = self._add_ns("inet")
        sysctl(ns, {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1})
        ip_batch(ns, [
            f"tuntap add dev {TUN} mode tun",
            f"link set {TUN} up",
            f"route add default dev {TUN} table {TUN_TABLE}",
            f"-6 route add default dev {TUN} table {TUN_TABLE}",
        ])
        sysctl(ns, {f"net.ipv4.conf.{TUN}.rp_filter": 0})
        self.start_forwarder()

    def _link_to_inet(self, ns, dev, v4, v6, v6_routed=None, v4_routed=None):
        """A veth from the internet namespace to `ns` (device `dev`), /32 and /128 addressing."""
        idx = len(self.inet_ifaces)
        hi = f"h{idx}"
        self.inet_ifaces.append(hi)
        ip_batch(self.inet, [f"link add {hi} type veth peer name {dev} netns {ns}"])
        inet_cmds = [f"link set {hi} up", f"addr add fe80::1/64 dev {hi} nodad",
                     f"rule add iif {hi} lookup {TUN_TABLE} pref 100",
                     f"-6 rule add iif {hi} lookup {TUN_TABLE} pref 100"]
        host_cmds = [f"link set {dev} up", f"addr add fe80::2/64 dev {dev} nodad"]
        if v4:
            gw = str(ipaddress.ip_network(f"{v4}/24", strict=False).network_address + 1)
            inet_cmds += [f"addr add {gw}/32 dev {hi}", f"route add {v4}/32 dev {hi}"]
            host_cmds += [f"addr add {v4}/32 dev {dev}", f"route add {gw}/32 dev {dev}",
                          f"route add default via {gw} dev {dev}"]
            if v4_routed:
                inet_cmds.append(f"route add {v4_routed} via {v4} dev {hi}")
        if v6:
            inet_cmds.append(f"-6 route add {v6}/128 dev {hi}")
            host_cmds += [f"-6 addr add {v6}/128 dev {dev} nodad",
                          f"-6 route add default via fe80::1 dev {dev}"]
            if v6_routed:
                inet_cmds.append(f"-6 route add {v6_routed} via {v6} dev {hi}")
        ip_batch(self.inet, inet_cmds)
        ip_batch(ns, host_cmds)

    # -- public hosts, routers, peers ------------------------------------------------------
    def add_public_host(self, name, v4, v6=None):
        ns = self._add_ns(name)
        self._link_to_inet(ns, "eth0", v4, v6)
        h = Host(self, name, ns, v4, v6)
        self.hosts[name] = h
        return h

    def add_router(self, name, kind, upstream=None):
        """A router namespace: `wan` towards the internet (or `upstream`'s LAN), `lan` bridge."""
        ns = self._add_ns(name)
        lan_idx = self._next_lan
        self._next_lan += 1
        family6 = kind == "ipv6-fw"
        if kind == "carrier":
            lan_v4 = ipaddress.ip_network(f"100.64.{lan_idx}.0/24")
        else:
            lan_v4 = None if family6 else ipaddress.ip_network(f"192.168.{lan_idx}.0/24")
        lan_v6 = ipaddress.ip_network(f"2001:db8:1000:{lan_idx:x}::/64") if family6 else None
        sysctl(ns, {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1})
        if upstream is None:
            n = self._next_router
            self._next_router += 1
            wan_v4 = None if family6 else ROUTER_WAN_V4.format(n)
            wan_v6 = ROUTER_WAN_V6.format(n) if family6 else None
            self._link_to_inet(ns, "wan", wan_v4, wan_v6,
                               v6_routed=str(lan_v6) if lan_v6 else None)
        else:
            wan_v4 = self._attach_to_lan(upstream, ns, "wan")
            wan_v6 = None
        cmds = ["link add lan type bridge", "link set lan up"]
        if lan_v4:
            cmds.append(f"addr add {lan_v4.network_address + 1}/24 dev lan")
        if lan_v6:
            cmds.append(f"-6 addr add {lan_v6.network_address + 1}/64 dev lan nodad")
        ip_batch(ns, cmds)
        self._conntrack_sysctls(ns)
        nat_kind = "port-restricted" if kind == "carrier" else kind
        nft(ns, routers.ruleset(nat_kind, wan_v4, str(lan_v4) if lan_v4 else None,
                                self.udp_timeout_s))
        r = Router(self, name, kind, ns, wan_v4, wan_v6, lan_v4, lan_v6, upstream)
        self.routers[name] = r
        return r

    def _attach_to_lan(self, router, ns, dev):
        """Plugs namespace `ns` into `router`'s LAN bridge; returns its IPv4 address (if any)."""
        router.peers += 1
        port = f"p{router.peers}"
        host_index = 1 + router.peers  # .2, .3, ... (.1 is the router)
        ip_batch(router.ns, [f"link add {port} type veth peer name {dev} netns {ns}",
                             f"link set {port} master lan", f"link set {port} up"])
        cmds = [f"link set {dev} up"]
        v4 = None
        if router.lan_v4:
            v4 = str(router.lan_v4.network_address + host_index)
            cmds += [f"addr add {v4}/24 dev {dev}",
                     f"route add default via {router.lan_v4.network_address + 1}"]
        if router.lan_v6:
            v6 = str(router.lan_v6.network_address + host_index)
            cmds += [f"-6 addr add {v6}/64 dev {dev} nodad",
                     f"-6 route add default via {router.lan_v6.network_address + 1}"]
        ip_batch(ns, cmds)
        return v4

    def add_peer(self, router, name):
        ns = self._add_ns(name)
        v4 = self._attach_to_lan(router, ns, "eth0")
        v6 = None
        if router.lan_v6:
            v6 = str(router.lan_v6.network_address + 1 + router.peers)
        h = Host(self, name, ns, v4, v6, router)
        self.hosts[name] = h
        return h

    def add_room(self, kind):
        """Builds the room of a kind once (public: a public host of its own)."""
        if kind in self.rooms:
            return self.rooms[kind]
        if kind == "public":
            room = Room(kind, [self.hosts["pub2"]], [], 4)
        elif kind == "public6":
            room = Room(kind, [self.hosts["pub2"]], [], 6)
        elif kind == "cgnat":
            carrier = self.add_router("r-cgnat-carrier", "carrier")
            home = self.add_router("r-cgnat-home", "port-restricted", upstream=carrier)
            room = Room(kind, [self.add_peer(home, "cgnat-a")], [carrier, home], 4)
        else:
            if kind not in routers.ROUTER_OF_ROOM:
                raise ValueError(f"unknown room kind {kind!r}; known: {', '.join(routers.KINDS)}")
            r = self.add_router(f"r-{kind}", routers.ROUTER_OF_ROOM[kind])
            n = routers.ROOM_PEERS.get(kind, 1)
            peers = [self.add_peer(r, f"{kind}-{'ab'[i]}") for i in range(n)]
            room = Room(kind, peers, [r], routers.KINDS[kind][1])
        self.rooms[kind] = room
        return room

    # -- state between trials --------------------------------------------------------------
    def flush_state(self):
        """Fresh NAT state: conntrack tables and learnt cone mappings of every router."""
        for r in self.routers.values():
            self._flush_router(r)

    def rebind(self, room):
        """Forgets every NAT mapping of `room`'s routers (conntrack -F): the next packet gets a
        new mapping, as after a NAT reboot or a mapping time-out."""
        for r in room.routers:
            self._flush_router(r)

    def _flush_router(self, r):
        ns_run(r.ns, ["conntrack", "-F"], check=False)
        if routers.has_cone_map(r.kind):
            ns_run(r.ns, ["nft", "flush", "map", "ip", "kwnat", "cone"], check=False)

    # -- the delay line ----------------------------------------------------------------------
    def start_forwarder(self, delay_ms=None, **impair):
        """(Re)starts the delay forwarder; `impair`: jitter_ms, loss, dup, reorder, reorder_ms."""
        if delay_ms is not None:
            self.delay_ms = delay_ms
        if impair:
            self.impair = impair
        self.stop_forwarder()
        ready = os.path.join(self.tmpdir, f"fwd-ready-{time.monotonic_ns()}")
        self.fwd_stats = os.path.join(self.tmpdir, f"fwd-stats-{time.monotonic_ns()}.json")
        args = [sys.executable, os.path.join(HERE, "delayfwd.py"), "--dev", TUN,
                "--delay-ms", str(self.delay_ms), "--ready", ready, "--stats", self.fwd_stats,
                # As long as the longest run may last (bench, with the matrix: 4 h), not the
                # forwarder's default hour: the runner stops it anyway.
                "--max-seconds", str(FORWARDER_MAX_S)]
        for k, v in self.impair.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        self.forwarder = self.reg.spawn(self.inet, args)
        deadline = time.monotonic() + 10
        while not os.path.exists(ready):
            if self.forwarder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the delay forwarder did not start")
            time.sleep(0.02)

    def stop_forwarder(self):
        """Stops the forwarder; returns its counters (packets, CPU seconds) or None."""
        if not self.forwarder:
            return None
        self.reg.stop(self.forwarder)
        self.forwarder = None
        try:
            import json
            with open(self.fwd_stats) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def bypass_delay_line(self, bypass):
        """Routes straight through the internet namespace (True) or through the delay line."""
        if bypass == getattr(self, "bypassed", False):
            return
        self.bypassed = bypass
        op = "del" if bypass else "add"
        cmds = []
        for hi in self.inet_ifaces:
            cmds += [f"rule {op} iif {hi} lookup {TUN_TABLE} pref 100",
                     f"-6 rule {op} iif {hi} lookup {TUN_TABLE} pref 100"]
        ip_batch(self.inet, cmds)

    def add_nft_loss(self, percent):
        """Random loss in the internet namespace with nftables (in addition to the forwarder)."""
        nft(self.inet, f"""table inet kwloss {{
  chain forward {{ type filter hook forward priority 0; policy accept;
    iifname "{TUN}" numgen random mod 100 < {int(percent)} drop
  }}
}}""")

    def describe(self):
        lines = [f"prefix {self.prefix}  delay {self.delay_ms} ms one way (RTT {self.rtt_ms} ms)"]
        for name, h in self.hosts.items():
            lines.append(f"  host   {h.ns:28} {h.v4 or '-':16} {h.v6 or '-'}")
        for name, r in self.routers.items():
            lines.append(f"  router {r.ns:28} kind {r.kind:16} wan {r.wan_v4 or r.wan_v6}"
                         f"  lan {r.lan_v4 or r.lan_v6}")
        return "\n".join(lines)
