"""Structured fuzzing of the fast path's packet code (issue 11, item 13).

Random bytes almost all fail the IPv4 header checksum, so the route lookup, the spoof check, the
coalescer and the TX segmentation never see them. These cases are built to get past each check in
turn: valid headers with correct checksums and lying lengths, every IHL and TCP data offset,
forged and unleased sources, fragments, vnet headers that lie, GRO trains of interleaved flows.
Each case is compared with an oracle written here from the rules (not from the C), and every
packet must be accounted for exactly once. CI also runs this file against an ASan+UBSan build of
the same C sources (scripts/sanitizers).
"""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from integration.packets import csum, hostile_rx, ip4, tcp
from netd.adapters.fastpath import UdpRoute, route_array
from tests.unit.test_fastpath_c import rx_coalesce

fp = pytest.importorskip("netd._fastpath", reason="the C extension is built by `pip install -e .`")
ffi, lib = fp.ffi, fp.lib

N, A = ipaddress.IPv4Network, ipaddress.IPv4Address
ROUTES = [UdpRoute(N("10.5.2.0/24"), A("192.0.2.2"), 8285), UdpRoute(N("10.5.3.0/24"), A("192.0.2.3"), 8285),
          UdpRoute(ipaddress.IPv6Network("fd00:5:0:2::/64"), A("192.0.2.2"), 8285)]
OUTERS = ["192.0.2.2", "192.0.2.3", "192.0.2.99"]
SOURCES = ["10.5.2.7", "10.5.3.9", "10.5.4.1", "10.9.0.1", "0.0.0.0", "255.255.255.255"]
DST = "10.5.1.11"
CASES = 20_000


# -- RX: the accept decision, against an oracle ------------------------------------------------------
def lookup(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> UdpRoute | None:
    best = None
    for r in ROUTES:
        if r.subnet.version == addr.version and addr in r.subnet and (best is None or
                                                                       r.subnet.prefixlen > best.subnet.prefixlen):
            best = r
    return best


def expected_verdict(outer: str, pkt: bytes) -> str:
    """The rules of rx_accept, stated independently: well-formed, leased source, right sender."""
    if len(pkt) >= 1 and pkt[0] >> 4 == 6:
        if len(pkt) < 40 or struct.unpack("!H", pkt[4:6])[0] + 40 != len(pkt):
            return "malformed"
        route = lookup(ipaddress.IPv6Address(pkt[8:24]))
    else:
        ihl = (pkt[0] & 0xF) * 4 if pkt else 0
        if len(pkt) < 20 or pkt[0] >> 4 != 4 or ihl < 20 or ihl > len(pkt):
            return "malformed"
        if struct.unpack("!H", pkt[2:4])[0] != len(pkt) or csum(pkt[:ihl]) != 0:
            return "malformed"
        route = lookup(A(pkt[12:16]))
    if route is None:
        return "no_route"
    return "accept" if str(route.peer_ip) == outer else "spoofed"


def rx_verdict(table: object, outer: str, pkt: bytes) -> str:
    st = ffi.new("fp_stats *")
    ok = lib.fp_rx_accept(table, len(ROUTES), int(A(outer)), pkt, len(pkt), st)
    counted = {"malformed": st.rx_drop_malformed, "no_route": st.rx_drop_no_route, "spoofed": st.rx_drop_spoofed}
    drops = [k for k, v in counted.items() if v]
    assert sum(counted.values()) == (0 if ok else 1), (ok, counted)  # counted once, or accepted
    return "accept" if ok == 1 else drops[0]


@pytest.mark.parametrize("seed", [1, 2])
def test_rx_accepts_exactly_what_the_rules_accept(seed):
    rng = random.Random(seed)
    table = route_array(tuple(ROUTES))
    seen: dict[str, int] = {}
    for _ in range(CASES):
        pkt, outer = hostile_rx(rng, SOURCES, DST), rng.choice(OUTERS)
        want = expected_verdict(outer, pkt)
        assert rx_verdict(table, outer, pkt) == want, (outer, pkt.hex())
        seen[want] = seen.get(want, 0) + 1
    print(f"rx_accept: {CASES} structured cases, verdicts {seen}")
    assert all(seen.get(v, 0) > CASES // 50 for v in ("accept", "malformed", "no_route", "spoofed")), seen


# -- RX: GRO trains of interleaved flows through the coalescer ------------------------------------------
def flow_key(pkt: bytes) -> tuple:
    ihl = (pkt[0] & 0xF) * 4
    return (pkt[9], pkt[12:20], pkt[ihl:ihl + 4] if pkt[9] == 6 else b"")


def split(vnet: bytes, pkt: bytes) -> list[bytes]:
    """A frame as the kernel would cut it: a TCPv4 super-packet into gso_size segments' payloads."""
    flags, gso_type, hdr_len, gso_size = struct.unpack("<BBHH", vnet[:6])
    if gso_type == 0:
        return [pkt]
    assert gso_type == 1 and flags & 1 and hdr_len >= 40, vnet.hex()
    head, data = pkt[:hdr_len], pkt[hdr_len:]
    return [head + data[i:i + gso_size] for i in range(0, len(data), gso_size)]


def train(rng: random.Random) -> list[bytes]:
    """What one UDP_GRO receive hands over: segments of a few TCP flows, interleaved, mostly in
    order, with PSH, retransmits, options that change, and odd packets among them."""
    flows = []
    for f in range(rng.randint(1, 4)):
        mss = rng.choice([1448, 1400, 536, rng.randint(1, 1460)])
        ts = struct.pack("!BBBBII", 1, 1, 8, 10, 7 + f, 8)
        flows.append({"sport": 40000 + f, "seq": rng.getrandbits(32), "mss": mss, "opts": ts if rng.random() < 0.7
                      else b""})
    out = []
    for _ in range(rng.randint(1, 48)):
        r = rng.random()
        if r < 0.1:
            out.append(ip4("10.5.2.7", DST, 17, rng.randbytes(rng.randint(0, 400))))
            continue
        fl = rng.choice(flows)
        size = fl["mss"] if rng.random() < 0.85 else rng.randint(0, fl["mss"])
        flags = 0x10 | (0x08 if rng.random() < 0.08 else 0) | (rng.choice([0x01, 0x02, 0x04, 0x20]) if
                                                                 rng.random() < 0.03 else 0)
        seq = fl["seq"] if rng.random() < 0.95 else fl["seq"] - rng.randint(1, 3000)  # sometimes a retransmit
        opts = fl["opts"] if rng.random() < 0.97 else struct.pack("!BBBBII", 1, 1, 8, 10, 99, 99)
        seg = tcp(seq, rng.randbytes(size), doff=5 + len(opts) // 4, flags=flags, sport=fl["sport"], options=opts)
        pkt = ip4("10.5.2.7", DST, 6, seg, frag=0x4000 if rng.random() < 0.97 else 0x2000,
                  ihl=5 if rng.random() < 0.97 else 6)
        out.append(pkt)
        fl["seq"] = (seq + size) & 0xFFFFFFFF
    return out


def payloads(seq: list[bytes], key: tuple) -> list[bytes]:
    """The L4 payloads of one flow's packets, in order."""
    return [p[(p[0] & 0xF) * 4 + ((p[(p[0] & 0xF) * 4 + 12] >> 4) * 4 if p[9] == 6 else 0):]
            for p in seq if flow_key(p) == key]


@pytest.mark.parametrize("seed", [3, 4])
def test_coalesced_trains_carry_every_byte_of_every_flow_in_order(seed):
    rng = random.Random(seed)
    merged = frames_total = 0
    for _ in range(CASES // 10):
        packets = train(rng)
        frames = rx_coalesce(packets)
        frames_total += len(frames)
        got: list[bytes] = []
        for vnet, pkt in frames:
            assert struct.unpack("!H", pkt[2:4])[0] == len(pkt) and csum(pkt[:(pkt[0] & 0xF) * 4]) == 0
            pieces = split(vnet, pkt)
            merged += len(pieces) > 1
            got.extend(pieces)
        # the frames, cut as the kernel cuts them, are the packets received: same count, and each
        # flow's bytes in the order they came (headers may be the first segment's)
        assert len(got) == len(packets)
        for key in {flow_key(p) for p in packets}:
            assert payloads(got, key) == payloads(packets, key), key
        singles = [p for p in packets if p[9] != 6]
        assert [p for p in got if p[9] != 6] == singles  # non-TCP untouched
    print(f"coalescer: {CASES // 10} trains -> {frames_total} frames, {merged} super-packets")
    assert merged > CASES // 40


# -- TX: frames from the TUN with vnet headers that lie --------------------------------------------------
def tx_one(frame: bytes) -> tuple[list[tuple[int, bytes]], object]:
    blob = ffi.new("uint8_t[]", frame or b"\0")
    lens = ffi.new("uint32_t[]", [len(frame)])
    rts = route_array((UdpRoute(N("10.5.0.0/16"), A("192.0.2.2"), 8285),))
    out = ffi.new("uint8_t[]", 4 << 20)  # room for a 64 KB super-packet cut into 1-byte segments
    dgrams = ffi.new("fp_datagram[]", 4096)
    st = ffi.new("fp_stats *")
    n = lib.fp_tx_batch(blob, lens, 1, rts, 1, 1, out, 4 << 20, dgrams, 4096, st)
    assert n >= 0 and st.tx_drop_socket_error == 0
    res, off = [], 0
    for i in range(n):
        res.append((dgrams[i].gso_size, bytes(ffi.buffer(out + off, dgrams[i].len))))
        off += dgrams[i].len
    return res, st


def hostile_tx(rng: random.Random) -> bytes:
    ihl = 5 if rng.random() < 0.8 else rng.randint(0, 15)
    proto = rng.choice([6, 6, 17, 1])
    data = rng.randbytes(rng.choice([0, 1, 100, 1448, rng.randint(0, 20000)]))
    l4 = tcp(rng.getrandbits(32), data, doff=5 if rng.random() < 0.7 else rng.randint(0, 15)) if proto == 6 else \
        struct.pack("!HHHH", 1, 2, 8 + len(data), 0) + data if proto == 17 else data
    pkt = ip4("10.5.1.11", "10.5.2.9" if rng.random() < 0.9 else "10.9.9.9", proto, l4, ihl=ihl,
              tot=None if rng.random() < 0.9 else rng.getrandbits(16))
    r = rng.random()  # mostly what a kernel writes, sometimes a lie
    gso_type = (1 if proto == 6 and len(data) > 1448 else 0) if r < 0.7 else rng.choice([0, 1, 3, 4, 0x81,
                                                                                          rng.randint(0, 255)])
    gso_size = 1448 if r < 0.7 else rng.choice([0, 1, 88, 536, rng.randint(0, 65535)])
    flags = rng.choice([0, 1]) if r < 0.7 else rng.randint(0, 255)
    csum_start = ihl * 4 if r < 0.7 else rng.choice([20, 0, len(pkt), rng.randint(0, 65535)])
    csum_off = (16 if proto == 6 else 6) if r < 0.7 else rng.choice([16, 6, 0, rng.randint(0, 65535)])
    vnet = struct.pack("<BBHHHH", flags, gso_type, rng.randint(0, 200), gso_size, csum_start, csum_off)
    frame = vnet + pkt
    return frame[: rng.randint(0, len(frame))] if rng.random() < 0.05 else frame


def test_tx_sends_valid_packets_or_counts_a_drop_for_every_hostile_frame():
    rng = random.Random(5)
    sent = dropped = 0
    for _ in range(CASES // 4):
        frame = hostile_tx(rng)
        dgrams, st = tx_one(frame)
        drops = st.tx_drop_malformed + st.tx_drop_no_route
        assert (drops == 1) != (st.tx_packets > 0), (frame[:80].hex(), drops, st.tx_packets)
        if drops:
            dropped += 1
            assert dgrams == []
            continue
        sent += 1
        segments = [d[i:i + (gso or len(d))] for gso, d in dgrams for i in range(0, len(d), gso or len(d))]
        assert len(segments) == st.tx_packets
        for seg in segments:  # each one a packet the peer's kernel takes: lengths and IP checksum right
            assert seg[0] >> 4 == 4 and struct.unpack("!H", seg[2:4])[0] == len(seg), seg[:40].hex()
            assert csum(seg[:(seg[0] & 0xF) * 4]) == 0
        if struct.unpack("<BB", frame[:2]) == (0, 0):  # nothing to do to a plain single: byte for byte
            assert segments == [frame[10:]]
    print(f"tx: {CASES // 4} hostile frames, {sent} sent, {dropped} dropped")
    assert sent > CASES // 40 and dropped > CASES // 40
