"""Packets built by hand for fuzzing and raw sends: IPv4/TCP headers that say what they are told,
with right (or deliberately wrong) checksums. Used by tests/unit/test_fastpath_fuzz.py and by
integration.tools (datagrams sent to a live netd)."""

from __future__ import annotations

import ipaddress
import random
import struct

A = ipaddress.IPv4Address


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip4(src: str, dst: str, proto: int, payload: bytes, *, ihl: int = 5, tot: int | None = None, frag: int = 0,
        good_csum: bool = True, ident: int = 1, ttl: int = 64, tos: int = 0, options: bytes | None = None) -> bytes:
    """An IPv4 packet whose header says what it is told to, with its checksum over the IHL it
    claims (as far as the packet reaches), right or deliberately wrong."""
    opts = options if options is not None else bytes((1,)) * max(0, ihl * 4 - 20)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | (ihl & 0xF), tos, 0, ident, frag, ttl, proto, 0,
                                A(src).packed, A(dst).packed) + opts)
    pkt = hdr + payload
    struct.pack_into("!H", pkt, 2, (len(pkt) if tot is None else tot) & 0xFFFF)
    span = min(max(ihl * 4, 20), len(pkt))
    c = csum(bytes(pkt[:10]) + b"\0\0" + bytes(pkt[12:span]))
    struct.pack_into("!H", pkt, 10, c if good_csum else c ^ 0x5A5A or 1)
    return bytes(pkt)


def tcp(seq: int, payload: bytes, *, doff: int = 5, flags: int = 0x10, sport: int = 40000, dport: int = 5201,
        options: bytes | None = None, window: int = 501) -> bytes:
    opts = options if options is not None else b"\x01" * max(0, doff * 4 - 20)
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 777, (doff & 0xF) << 4, flags, window, 0,
                       0) + opts + payload


def hostile_rx(rng: random.Random, sources: list[str], dst: str) -> bytes:
    """An inner packet built to get past the RX checks in turn: mostly valid IPv4 headers with right
    checksums from ``sources``, with every IHL, lying total lengths, TCP data offsets, fragments,
    truncation; some IPv6 with lying payload lengths."""
    kind = rng.random()
    if kind < 0.08:  # IPv6: lying payload lengths, leased and unleased sources
        src = rng.choice(["fd00:5:0:2::7", "fd00:5:0:3::7", "fd00:9::1"])
        body = rng.randbytes(rng.randint(0, 200))
        plen = rng.choice([len(body), len(body) + 1, max(0, len(body) - 1), 0, 0xFFFF])
        hdr = struct.pack("!IHBB16s16s", 0x60000000, plen & 0xFFFF, 17, 64, ipaddress.IPv6Address(src).packed,
                          ipaddress.IPv6Address("fd00:5:0:1::b").packed)
        return (hdr + body)[: rng.choice([40 + len(body), rng.randint(0, 40 + len(body))])]
    ihl = 5 if rng.random() < 0.85 else rng.randint(0, 15)
    proto = rng.choice([6, 17, 1, rng.randint(0, 255)])
    payload = tcp(rng.getrandbits(32), rng.randbytes(rng.randint(0, 300)), doff=rng.randint(0, 15)) \
        if proto == 6 else rng.randbytes(rng.randint(0, 300))
    length = ihl * 4 + len(payload)
    tot = None if rng.random() < 0.8 else rng.choice([length + rng.choice([-1, 1, -20, 100]), 0, 0xFFFF,
                                                       rng.getrandbits(16)])
    frag = rng.choice([0, 0, 0x4000, 0x2000, 0x2000 | rng.randint(1, 0x1FFF), rng.randint(1, 0x1FFF)])
    pkt = ip4(rng.choice(sources), dst, proto, payload, ihl=ihl, tot=tot, frag=frag, good_csum=rng.random() < 0.95)
    if rng.random() < 0.05:  # truncated on the wire
        pkt = pkt[: rng.randint(0, len(pkt))]
    return pkt
