"""Router kinds of the NAT lab: the nftables ruleset of each (see docs/natlab.md).

Every router namespace has two interfaces: `wan` (towards the internet, or towards a carrier-grade
NAT) and `lan` (a bridge holding its peers). The filter table is common to all kinds; what
differs is the nat table (mapping) and a few filter rules (filtering).

DESIGN.md's input-chain pitfall: the input chain drops unsolicited WAN packets, so conntrack never
confirms an entry for an early punch packet; otherwise the router would later pick a different
external port for the peer's own flow and a cone NAT would silently turn into a random-port one.
"""

# External port range of the `snat-range` kind. Local ephemeral ports (32768-60999) lie outside it,
# so the external port always differs from the local one. On these kernels the port chosen for a
# local socket was the same towards every destination (endpoint-independent mapping); the probe
# checks both on every run.
SNAT_PORTS = "20000-29999"

KINDS = {
    # name: (description, family)
    "public": ("public host, no NAT, no firewall", 4),
    "full-cone": ("EIM + endpoint-independent filtering (dynamic map + DNAT)", 4),
    "port-restricted": ("EIM + address-and-port-dependent filtering, port-preserving (masquerade)", 4),
    "snat-range": ("EIM without port preservation (snat to ports 20000-29999)", 4),
    "symmetric": ("endpoint-dependent mapping (masquerade random)", 4),
    "cgnat": ("port-restricted home router behind a port-restricted carrier-grade NAT", 4),
    "udp-blocked": ("outbound UDP dropped, TCP allowed (masquerade)", 4),
    "ipv6-fw": ("IPv6, no NAT, stateful firewall", 6),
    "hairpin": ("port-restricted with hairpinning, two peers on the LAN", 4),
    "no-hairpin": ("port-restricted without hairpinning, two peers on the LAN", 4),
}

# The router kind of each room's router (cgnat has two: home router behind the carrier's).
ROUTER_OF_ROOM = {
    "full-cone": "full-cone",
    "port-restricted": "port-restricted",
    "snat-range": "snat-range",
    "symmetric": "symmetric",
    "cgnat": "port-restricted",
    "udp-blocked": "udp-blocked",
    "ipv6-fw": "ipv6-fw",
    "hairpin": "hairpin",
    "no-hairpin": "no-hairpin",
}

ROOM_PEERS = {"hairpin": 2, "no-hairpin": 2}

# What keywire's `nat` event must report for a peer in each room kind: the address the gate's main
# port saw at registration vs the one its observation port (main port + 1) sees. No NAT ("none"):
# the observed address is the peer's own. Linux masquerade and snat to a port range keep one
# mapping per local socket for every destination (endpoint-independent; snat-range just never
# preserves the port), `masquerade random` picks a new port per destination
# (endpoint-dependent). udp-blocked: no UDP leaves; it reaches gates over TCP, whose mapping says
# nothing about UDP, so keywire reports no NAT event.
NAT_MAPPING = {
    "public": "none",
    "public6": "none",
    "ipv6-fw": "none",
    "full-cone": "endpoint-independent",
    "port-restricted": "endpoint-independent",
    "snat-range": "endpoint-independent",
    "symmetric": "endpoint-dependent",
    "cgnat": "endpoint-independent",
    "hairpin": "endpoint-independent",
    "no-hairpin": "endpoint-independent",
    "udp-blocked": None,
}


def _filter_table(input_extra="", forward_extra=""):
    return f"""
table inet kwfilter {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept
    iifname "wan" drop
{input_extra}
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
{forward_extra}
    iifname "lan" accept
    iifname "wan" ct state established,related accept
  }}
}}
"""


def _cone_map(timeout_s):
    # external UDP port -> (internal address . internal port), learnt from outgoing packets
    # after source NAT (priority srcnat + 10 sees the translated port), refreshed by each one.
    return f"""
  map cone {{
    type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout {timeout_s}s;
  }}
  chain record {{
    type filter hook postrouting priority srcnat + 10; policy accept;
    oifname "wan" meta l4proto udp update @cone {{ udp sport timeout {timeout_s}s : ct original ip saddr . ct original proto-src }}
  }}
"""


def ruleset(kind, wan_ip, lan_cidr, timeout_s):
    """The complete nft ruleset of a router of `kind`."""
    if kind == "ipv6-fw":
        # Routing only; the common filter is the stateful firewall.
        return _filter_table()
    if kind in ("port-restricted", "udp-blocked"):
        nat = 'oifname "wan" masquerade'
        extra_fwd = ('    iifname "lan" oifname "wan" meta l4proto udp drop'
                     if kind == "udp-blocked" else "")
        return _filter_table(forward_extra=extra_fwd) + _nat_table(post=nat)
    if kind == "no-hairpin":
        return (_filter_table(input_extra=f'    iifname "lan" ip daddr {wan_ip} drop')
                + _nat_table(post='oifname "wan" masquerade'))
    if kind == "symmetric":
        return _filter_table() + _nat_table(post='oifname "wan" masquerade random')
    if kind == "snat-range":
        post = (f'oifname "wan" meta l4proto udp snat ip to {wan_ip}:{SNAT_PORTS}\n'
                '    oifname "wan" masquerade')
        return _filter_table() + _nat_table(post=post)
    if kind == "full-cone":
        pre = 'iifname "wan" meta l4proto udp dnat ip to udp dport map @cone'
        return (_filter_table(forward_extra='    iifname "wan" ct status dnat accept')
                + _nat_table(pre=pre, post='oifname "wan" masquerade', extra=_cone_map(timeout_s)))
    if kind == "hairpin":
        # A LAN packet to the router's public address and a mapped port goes to the peer owning
        # that mapping, with its source translated to the public address (so the reply comes
        # back through the router too).
        pre = f'iifname "lan" ip daddr {wan_ip} meta l4proto udp dnat ip to udp dport map @cone'
        post = ('oifname "wan" masquerade\n'
                f'    ip saddr {lan_cidr} oifname "lan" ct status dnat snat ip to {wan_ip}')
        return _filter_table() + _nat_table(pre=pre, post=post, extra=_cone_map(timeout_s))
    raise ValueError(f"unknown router kind {kind!r}")


def _nat_table(pre="", post="", extra=""):
    return f"""
table ip kwnat {{
{extra}
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    {pre}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    {post}
  }}
}}
"""


def has_cone_map(kind):
    return kind in ("full-cone", "hairpin")
