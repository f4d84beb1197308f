"""Just enough of MQTT 3.1.1, BLAKE3 and bech32m (Python standard library only) for the lab's
attacker in `dialkey-forged`: compute a node's signalling topic (docs/mqtt-signalling.md),
capture what is published to it, publish replays and garbage.

- `blake3(data, key=None, derive_context=None)`: BLAKE3 for inputs of at most one chunk
  (1024 bytes), in hash, keyed and derive-key modes (every input here is under 100 bytes);
- `node_id_bytes("kw1...")`: the 32 bytes of a node id (bech32m, prefix "kw");
- `signal_topic(network_name, node_id)`: "kw1/" + hex(BLAKE3("keywire mqtt signal topic v1" ||
  network id || node id)[0..20]), the network id being BLAKE3-derive_key("keywire 2026-11
  network id from name", name);
- `Mqtt(host, port)`: CONNECT (clean session), SUBSCRIBE QoS 0, PUBLISH QoS 0, read PUBLISHes
  with a deadline. Every call is bounded by a timeout.
"""

import socket
import struct
import time

# -- BLAKE3 (single chunk) ---------------------------------------------------------------------

_IV = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
       0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]
_PERM = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]
CHUNK_START, CHUNK_END, ROOT, KEYED_HASH, DERIVE_KEY_CONTEXT, DERIVE_KEY_MATERIAL = \
    1, 2, 8, 16, 32, 64
_M = 0xFFFFFFFF


def _g(s, a, b, c, d, x, y):
    s[a] = (s[a] + s[b] + x) & _M
    s[d] = ((s[d] ^ s[a]) >> 16 | (s[d] ^ s[a]) << 16) & _M
    s[c] = (s[c] + s[d]) & _M
    s[b] = ((s[b] ^ s[c]) >> 12 | (s[b] ^ s[c]) << 20) & _M
    s[a] = (s[a] + s[b] + y) & _M
    s[d] = ((s[d] ^ s[a]) >> 8 | (s[d] ^ s[a]) << 24) & _M
    s[c] = (s[c] + s[d]) & _M
    s[b] = ((s[b] ^ s[c]) >> 7 | (s[b] ^ s[c]) << 25) & _M


def _compress(cv, block, block_len, counter, flags):
    m = list(struct.unpack("<16I", block))
    s = list(cv) + _IV[:4] + [counter & _M, counter >> 32, block_len, flags]
    for rnd in range(7):
        _g(s, 0, 4, 8, 12, m[0], m[1])
        _g(s, 1, 5, 9, 13, m[2], m[3])
        _g(s, 2, 6, 10, 14, m[4], m[5])
        _g(s, 3, 7, 11, 15, m[6], m[7])
        _g(s, 0, 5, 10, 15, m[8], m[9])
        _g(s, 1, 6, 11, 12, m[10], m[11])
        _g(s, 2, 7, 8, 13, m[12], m[13])
        _g(s, 3, 4, 9, 14, m[14], m[15])
        if rnd < 6:
            m = [m[i] for i in _PERM]
    return [s[i] ^ s[i + 8] for i in range(8)]


def _hash_chunk(data, key_words, flags):
    if len(data) > 1024:
        raise ValueError("mqttmini.blake3 handles inputs of one chunk (1024 bytes) only")
    blocks = [data[i:i + 64] for i in range(0, len(data), 64)] or [b""]
    cv = key_words
    for i, blk in enumerate(blocks):
        f = flags
        if i == 0:
            f |= CHUNK_START
        if i == len(blocks) - 1:
            f |= CHUNK_END | ROOT
        cv = _compress(cv, blk.ljust(64, b"\0"), len(blk), 0, f)
    return struct.pack("<8I", *cv)  # 32 bytes: the root output's first block


def blake3(data, key=None, derive_context=None):
    """BLAKE3 of `data` (32 bytes): plain, keyed (`key`, 32 bytes) or derive-key
    (`derive_context`, a str)."""
    if derive_context is not None:
        ctx_key = _hash_chunk(derive_context.encode(), _IV, DERIVE_KEY_CONTEXT)
        return _hash_chunk(data, list(struct.unpack("<8I", ctx_key)), DERIVE_KEY_MATERIAL)
    if key is not None:
        return _hash_chunk(data, list(struct.unpack("<8I", key)), KEYED_HASH)
    return _hash_chunk(data, _IV, 0)


# -- bech32m node ids ----------------------------------------------------------------------------

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _polymod(values):
    gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for v in values:
        b = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (b >> i) & 1 else 0
    return chk


def node_id_bytes(text):
    """The 32 key bytes of a node id ("kw1..."); ValueError if it is not one."""
    text = text.strip().lower()
    hrp, _, data = text.rpartition("1")
    if hrp != "kw":
        raise ValueError(f"not a node id: {text[:12]}")
    values = [_CHARSET.index(c) for c in data]
    hrp_exp = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    if _polymod(hrp_exp + values) != 0x2BC830A3:
        raise ValueError("node id checksum mismatch")
    acc = bits = 0
    out = bytearray()
    for v in values[:-6]:
        acc = acc << 5 | v
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    if len(out) != 32:
        raise ValueError(f"node id of {len(out)} bytes")
    return bytes(out)


def network_id(name):
    return blake3(name.encode(), derive_context="keywire 2026-11 network id from name")


def signal_topic(network_name, node_id):
    """The MQTT topic a node listens on (docs/mqtt-signalling.md, "Topic")."""
    h = blake3(b"keywire mqtt signal topic v1" + network_id(network_name) + node_id_bytes(node_id))
    return "kw1/" + h[:20].hex()


# -- MQTT 3.1.1, QoS 0 -----------------------------------------------------------------------------

def _varint(n):
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


class Mqtt:
    """One MQTT connection (clean session, QoS 0 only); every operation bounded by `timeout`."""

    def __init__(self, host, port=1883, client_id="kwlab-attacker", timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self._send(0x10, _str("MQTT") + bytes([4, 0x02]) + struct.pack(">H", 60) + _str(client_id))
        kind, body = self._read_packet(time.monotonic() + timeout)
        if kind != 0x20 or len(body) < 2 or body[1] != 0:
            raise ConnectionError(f"MQTT CONNACK refused: {kind:#x} {body!r}")
        self._pid = 1

    def _send(self, header, body):
        self.sock.sendall(bytes([header]) + _varint(len(body)) + body)

    def _read_exact(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("MQTT read timed out")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("MQTT connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _read_packet(self, deadline):
        first = self._read_exact(1, deadline)[0]
        length, mult = 0, 1
        while True:
            b = self._read_exact(1, deadline)[0]
            length += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        return first & 0xF0, self._read_exact(length, deadline) if length else b""

    def subscribe(self, topic, timeout=5.0):
        self._pid += 1
        self._send(0x82, struct.pack(">H", self._pid) + _str(topic) + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            kind, body = self._read_packet(deadline)
            if kind == 0x90:
                if body[-1] == 0x80:
                    raise ConnectionError(f"MQTT SUBSCRIBE {topic} refused")
                return

    def publish(self, topic, payload):
        self._send(0x30, _str(topic) + payload)

    def next_publish(self, timeout):
        """(topic, payload) of the next PUBLISH received within `timeout` s, or None."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                kind, body = self._read_packet(deadline)
                if kind == 0x30:
                    n = struct.unpack(">H", body[:2])[0]
                    return body[2:2 + n].decode("utf-8", "replace"), body[2 + n:]
        except (TimeoutError, socket.timeout):
            return None

    def close(self):
        try:
            self._send(0xE0, b"")
        except OSError:
            pass
        self.sock.close()
