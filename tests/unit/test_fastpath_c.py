"""The C fast path's pieces through cffi, compared byte for byte with packets scapy builds."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.utils import checksum as scapy_checksum

from netd.adapters.fastpath import UdpRoute, lookup, route_array

fp = pytest.importorskip("netd._fastpath", reason="the C extension is built by `pip install -e .`")
ffi, lib = fp.ffi, fp.lib

NEEDS_CSUM, GSO_NONE, GSO_TCPV4 = 1, 0, 1
SRC, DST = "10.5.1.11", "10.5.2.11"


def vnet(flags=0, gso_type=GSO_NONE, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def pseudo_partial(src: str, dst: str, proto: int, length: int) -> int:
    """The not-complemented pseudo-header sum a CHECKSUM_PARTIAL packet carries."""
    raw = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + struct.pack("!HH", proto, length)
    return 0xFFFF - scapy_checksum(raw) if scapy_checksum(raw) != 0xFFFF else 0xFFFF


def tx_prepare(frame: bytes) -> tuple[bytes, int]:
    out = ffi.new("uint8_t[]", 200_000)
    seg = ffi.new("uint32_t *")
    n = lib.fp_tx_prepare(frame, len(frame), out, 200_000, seg)
    assert n >= 0, "fp_tx_prepare refused the frame"
    return bytes(ffi.buffer(out, n)), seg[0]


def rx_coalesce(packets: list[bytes]) -> list[tuple[bytes, bytes]]:
    blob = b"".join(packets)
    lens = ffi.new("uint32_t[]", [len(p) for p in packets])
    out = ffi.new("uint8_t[]", 300_000)
    out_lens = ffi.new("uint32_t[]", 64)
    n = lib.fp_rx_coalesce(blob, lens, len(packets), out, 300_000, out_lens, 64)
    assert n >= 0
    frames, off = [], 0
    for i in range(n):
        raw = bytes(ffi.buffer(out + off, out_lens[i]))
        frames.append((raw[:10], raw[10:]))
        off += out_lens[i]
    return frames


@pytest.mark.parametrize("size", [0, 1, 2, 3, 7, 8, 20, 1500, 9001])
def test_checksum_matches_scapy(size):
    data = random.Random(size).randbytes(size)
    assert lib.fp_checksum(data, size) == scapy_checksum(data)


@pytest.mark.parametrize("fill,size", [(0xFF, 65535), (0xFF, 33), (0xFE, 4096), (0x00, 64)])
def test_checksum_carries_on_extreme_data(fill, size):
    data = bytes([fill]) * size
    assert lib.fp_checksum(data, size) == scapy_checksum(data)


def segments_expected(payload: bytes, mss: int, seq0: int, id0: int, flags: str, options) -> list[bytes]:
    out = []
    n = max(1, -(-len(payload) // mss))
    for i in range(n):
        f = flags
        if i < n - 1:
            f = f.replace("P", "").replace("F", "")
        pkt = IP(src=SRC, dst=DST, id=id0 + i, flags="DF", ttl=64) / TCP(
            sport=40000, dport=5201, seq=seq0 + i * mss, ack=777, flags=f, window=501, options=options
        ) / payload[i * mss:(i + 1) * mss]
        out.append(bytes(pkt))
    return out


@pytest.fixture(params=["simd", "portable"])
def copy_loop(request):
    """Run the test with the AVX2 copy+checksum loop (where the CPU has it) and with the portable one."""
    if lib.fp_simd(int(request.param == "simd")) != (request.param == "simd"):
        pytest.skip("this CPU has no AVX2: the portable loop is the only one")
    yield request.param
    lib.fp_simd(1)


@pytest.mark.parametrize("payload_len,mss", [(10_000, 1400), (64_000, 1448), (1400, 1400), (1, 1400), (2801, 1400),
                                             (65_000, 536), (300, 63)])
def test_tso_super_packet_is_cut_into_correct_segments(payload_len, mss, copy_loop):
    options = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]
    payload = random.Random(payload_len).randbytes(payload_len)
    sp = IP(src=SRC, dst=DST, id=1000, flags="DF", ttl=64) / TCP(
        sport=40000, dport=5201, seq=4_000_000_000, ack=777, flags="PA", window=501, options=options) / payload
    raw = bytearray(bytes(sp))
    ihl = 20
    # as the kernel hands it over: CHECKSUM_PARTIAL, TCP check = pseudo-header sum only
    struct.pack_into("!H", raw, ihl + 16, pseudo_partial(SRC, DST, 6, len(raw) - ihl))
    thl = (raw[ihl + 12] >> 4) * 4
    frame = vnet(NEEDS_CSUM, GSO_TCPV4, ihl + thl, mss, ihl, 16) + bytes(raw)
    out, seg_size = tx_prepare(frame)
    expected = segments_expected(payload, mss, 4_000_000_000, 1000, "PA", options)
    assert seg_size == len(expected[0])
    assert out == b"".join(expected)  # seq wraps past 2^32, ids, checksums, flags: all as scapy builds them


def test_every_segment_tail_length_is_copied_and_summed(copy_loop):
    """Segment sizes 1..160 with extreme data (carries): every split between the vector loop and the rest."""
    options = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    for mss in range(1, 161):
        payload = (bytes([0xFF]) * mss + random.Random(mss).randbytes(mss))[: mss * 2 - 1]
        sp = IP(src=SRC, dst=DST, id=5, flags="DF", ttl=64) / TCP(
            sport=40000, dport=5201, seq=9, ack=777, flags="A", window=501, options=options) / payload
        raw = bytearray(bytes(sp))
        struct.pack_into("!H", raw, 36, pseudo_partial(SRC, DST, 6, len(raw) - 20))
        out, _ = tx_prepare(vnet(NEEDS_CSUM, GSO_TCPV4, 52, mss, 20, 16) + bytes(raw))
        assert out == b"".join(segments_expected(payload, mss, 9, 5, "A", options)), f"mss {mss}"


def test_non_gso_frame_with_partial_udp_checksum_is_completed():
    pkt = IP(src=SRC, dst=DST) / UDP(sport=1, dport=2) / b"hello world"
    raw = bytearray(bytes(pkt))
    struct.pack_into("!H", raw, 26, pseudo_partial(SRC, DST, 17, len(raw) - 20))
    out, seg = tx_prepare(vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6) + bytes(raw))
    assert out == bytes(pkt) and seg == len(pkt)


def tx_batch(frames: list[bytes], routes: list[UdpRoute], gso: bool = True) -> tuple[list[tuple], bytes, object]:
    """Frames through the TX thread's code; returns [(peer, port, gso_size, payload)], the stats."""
    blob = ffi.new("uint8_t[]", b"".join(frames) or b"\0")
    lens = ffi.new("uint32_t[]", [len(f) for f in frames] or [0])
    rts = route_array(tuple(routes))
    out = ffi.new("uint8_t[]", 1_000_000)
    dgrams = ffi.new("fp_datagram[]", 512)
    st = ffi.new("fp_stats *")
    n = lib.fp_tx_batch(blob, lens, len(frames), rts, len(routes), int(gso), out, 1_000_000, dgrams, 512, st)
    assert n >= 0
    res, off = [], 0
    for i in range(n):
        d = dgrams[i]
        res.append((str(ipaddress.IPv4Address(d.peer_ip)), d.peer_port, d.gso_size,
                    bytes(ffi.buffer(out + off, d.len))))
        off += d.len
    return res, st


TIMESTAMPS = [("NOP", None), ("NOP", None), ("Timestamp", (7, 8))]


def super_packet(payload: bytes, mss: int, seq: int, dst: str = DST, options=TIMESTAMPS) -> tuple[bytes, list[bytes]]:
    """A TSO4 frame as the TUN hands it over, and the segments it must become."""
    sp = IP(src=SRC, dst=dst, id=1, flags="DF") / TCP(sport=40000, dport=5201, seq=seq, ack=5, flags="PA",
                                                      window=501, options=options) / payload
    raw = bytearray(bytes(sp))
    struct.pack_into("!H", raw, 36, pseudo_partial(SRC, dst, 6, len(raw) - 20))
    segs = []
    for i in range(max(1, -(-len(payload) // mss))):
        flags = "PA" if (i + 1) * mss >= len(payload) else "A"
        segs.append(bytes(IP(src=SRC, dst=dst, id=1 + i, flags="DF") / TCP(
            sport=40000, dport=5201, seq=seq + i * mss, ack=5, flags=flags, window=501, options=options)
            / payload[i * mss:(i + 1) * mss]))
    return vnet(NEEDS_CSUM, GSO_TCPV4, 20 + (raw[32] >> 4) * 4, mss, 20, 16) + bytes(raw), segs


def partial_frame(pkt, proto: int, csum_offset: int) -> tuple[bytes, bytes]:
    """A single packet as the TUN hands it over (checksum left partial), and what must be sent."""
    full = bytes(pkt)
    raw = bytearray(full)
    struct.pack_into("!H", raw, 20 + csum_offset, pseudo_partial(pkt[IP].src, pkt[IP].dst, proto, len(raw) - 20))
    return vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 20, csum_offset) + bytes(raw), full


PEER_A = UdpRoute(ipaddress.IPv4Network("10.5.2.0/24"), ipaddress.IPv4Address("192.0.2.2"), 8285)
PEER_B = UdpRoute(ipaddress.IPv4Network("10.5.3.0/24"), ipaddress.IPv4Address("192.0.2.3"), 8285)


def cut(payload: bytes, gso: int) -> list[bytes]:
    return [payload[i:i + gso] for i in range(0, len(payload), gso)] if gso else [payload]


def test_super_packets_share_full_datagrams(copy_loop):
    """Two 46-segment super-packets: 92 segments in datagrams of at most 64 KB (44 of 1472 bytes),
    the first super-packet's tail riding with the second one's head, every byte as scapy builds it."""
    f1, s1 = super_packet(random.Random(1).randbytes(46 * 1420), 1420, 1000)
    f2, s2 = super_packet(random.Random(2).randbytes(46 * 1420), 1420, 1000 + 46 * 1420)
    dgrams, st = tx_batch([f1, f2], [PEER_A])
    assert [(d[0], d[1], d[2], len(d[3]) // 1472) for d in dgrams] == [
        ("192.0.2.2", 8285, 1472, 44), ("192.0.2.2", 8285, 1472, 44), ("192.0.2.2", 8285, 1472, 4)]
    assert [seg for d in dgrams for seg in cut(d[3], d[2])] == s1 + s2
    assert (st.tx_packets, st.tx_syscalls, st.tx_drop_socket_error) == (92, 1, 0)


def test_a_short_segment_ends_its_datagram():
    """UDP GSO allows only the last segment to be shorter: a super-packet's short tail closes the datagram."""
    f1, s1 = super_packet(random.Random(3).randbytes(3 * 1420 + 100), 1420, 1)
    f2, s2 = super_packet(random.Random(4).randbytes(2 * 1420), 1420, 1 + 3 * 1420 + 100)
    dgrams, _ = tx_batch([f1, f2], [PEER_A])
    assert [(d[2], len(d[3])) for d in dgrams] == [(1472, 3 * 1472 + 152), (1472, 2 * 1472)]
    assert [seg for d in dgrams for seg in cut(d[3], d[2])] == s1 + s2


def test_every_kind_of_frame_in_a_row_comes_out_right(copy_loop):
    """Super-packets of two MSS and header lengths, a pure ACK, single packets small and big, for two
    peers, and IPv6 in one batch: all byte for byte, in order per peer, in valid GSO datagrams."""
    rnd = random.Random(7)
    frames, want = [], {"192.0.2.2": [], "192.0.2.3": []}

    def add(frame: bytes, peer: str | None, packets: list[bytes]) -> None:
        frames.append(frame)
        if peer:
            want[peer] += packets

    seq = 1
    for payload_len in (10 * 1420, 10 * 1420 + 100, 46 * 1420):
        f, segs = super_packet(rnd.randbytes(payload_len), 1420, seq)
        add(f, "192.0.2.2", segs)
        seq += payload_len
    f, full = partial_frame(IP(src=SRC, dst=DST) / TCP(sport=40000, dport=5201, flags="A", seq=seq, ack=9,
                                                       options=TIMESTAMPS), 6, 16)
    add(f, "192.0.2.2", [full])  # a pure ACK
    f, full = partial_frame(IP(src=SRC, dst="10.5.3.11") / UDP(sport=5, dport=6) / rnd.randbytes(1000), 17, 6)
    add(f, "192.0.2.3", [full])  # a single packet for the other peer
    for payload_len in (5000, 7000):  # another MSS and no TCP options
        f, segs = super_packet(rnd.randbytes(payload_len), 1000, seq, options=[])
        add(f, "192.0.2.2", segs)
        seq += payload_len
    f, full = partial_frame(IP(src=SRC, dst=DST) / UDP(sport=5, dport=6) / rnd.randbytes(2500), 17, 6)
    add(f, "192.0.2.2", [full])  # a single packet bigger than an MSS
    add(vnet() + bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP() / rnd.randbytes(3000)), None, [])
    f, segs = super_packet(rnd.randbytes(3 * 1000), 1000, seq, options=[])
    add(f, "192.0.2.2", segs)

    dgrams, st = tx_batch(frames, [PEER_A, PEER_B])
    got = {"192.0.2.2": [], "192.0.2.3": []}
    for peer, _, gso, payload in dgrams:
        pieces = cut(payload, gso)
        assert all(len(p) == gso for p in pieces[:-1]) and len(pieces[-1]) <= (gso or len(payload))
        got[peer] += pieces
    assert got == want
    assert (st.tx_drop_no_route, st.tx_drop_malformed) == (1, 0)
    assert st.tx_packets == sum(len(v) for v in want.values())


def test_packets_keep_their_order_per_peer_across_datagrams():
    fa1, sa1 = super_packet(b"a" * 3000, 1420, 1, dst="10.5.2.11")
    single = bytes(IP(src=SRC, dst="10.5.3.11") / UDP(sport=1, dport=2) / b"to b")
    fa2, sa2 = super_packet(b"c" * 3000, 1420, 3001, dst="10.5.2.11")
    dgrams, st = tx_batch([fa1, vnet() + single, fa2], [PEER_A, PEER_B])
    assert [(d[0], [s for s in cut(d[3], d[2])]) for d in dgrams] == [
        ("192.0.2.2", sa1), ("192.0.2.3", [single]), ("192.0.2.2", sa2)]
    assert st.tx_packets == 7


def test_without_gso_every_segment_is_its_own_datagram():
    f1, s1 = super_packet(random.Random(5).randbytes(10 * 1420), 1420, 1)
    dgrams, st = tx_batch([f1], [PEER_A], gso=False)
    assert [(d[2], d[3]) for d in dgrams] == [(0, s) for s in s1]
    assert st.tx_packets == 10


def test_no_route_and_ipv6_frames_are_counted_not_sent():
    """Without dual-stack leases an IPv6 frame has no peer, nor has an unleased address."""
    v6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=2, flags="A") / (b"x" * 100))
    stray = bytes(IP(src=SRC, dst="10.9.9.9") / UDP(sport=1, dport=2))
    dgrams, st = tx_batch([vnet() + v6, vnet() + stray, b"\x00" * 4, vnet() + v6[:39]], [PEER_A])
    assert dgrams == []
    assert (st.tx_drop_no_route, st.tx_drop_malformed, st.tx_packets) == (2, 2, 0)


SRC6, DST6 = "fd00:5:0:1::b", "fd00:5:0:2::b"
PEER_A6 = UdpRoute(ipaddress.IPv6Network("fd00:5:0:2::/64"), PEER_A.peer_ip, 8285)


def partial6(pkt, csum_offset: int) -> bytes:
    """An IPv6 packet as the TUN hands it over with TUN_F_CSUM: the L4 checksum left partial."""
    raw = bytearray(bytes(pkt))
    l4 = raw[40:]
    pseudo = ipaddress.IPv6Address(pkt[IPv6].src).packed + ipaddress.IPv6Address(pkt[IPv6].dst).packed + \
        struct.pack("!IxxxB", len(l4), pkt[IPv6].nh)
    struct.pack_into("!H", raw, 40 + csum_offset, 0xFFFF - scapy_checksum(pseudo))
    return vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 40, csum_offset) + bytes(raw)


def test_ipv6_frames_go_to_the_peer_leasing_the_destination_with_checksums_completed():
    tcp6 = IPv6(src=SRC6, dst=DST6) / TCP(sport=40000, dport=5201, seq=9, ack=1, flags="PA") / (b"v6" * 600)
    udp6 = IPv6(src=SRC6, dst=DST6) / UDP(sport=5353, dport=5353) / b"hello over IPv6"
    ping = IPv6(src=SRC6, dst=DST6) / b"\x80\x00\x00\x00\x00\x01\x00\x01"  # raw ICMPv6, full checksum
    frames = [partial6(tcp6, 16), partial6(udp6, 6), vnet() + bytes(ping)]
    dgrams, st = tx_batch(frames, [PEER_A, PEER_A6])
    sent = [d[3] for d in dgrams]
    payloads = b"".join(sent)
    assert payloads == bytes(tcp6) + bytes(udp6) + bytes(ping)  # scapy's checksums, byte for byte
    assert {(d[0], d[1]) for d in dgrams} == {("192.0.2.2", 8285)}
    assert (st.tx_packets, st.tx_drop_no_route, st.tx_drop_malformed) == (3, 0, 0)


def test_a_udp6_checksum_that_sums_to_zero_goes_out_as_ffff():
    c0 = IPv6(bytes(IPv6(src=SRC6, dst=DST6) / UDP(sport=1, dport=2) / b"\0\0"))[UDP].chksum
    pkt = IPv6(src=SRC6, dst=DST6) / UDP(sport=1, dport=2) / struct.pack("!H", c0)  # now the sum folds to 0
    assert IPv6(bytes(pkt))[UDP].chksum == 0xFFFF  # as scapy (RFC 8200) sends it
    dgrams, _ = tx_batch([partial6(pkt, 6)], [PEER_A6])
    assert IPv6(dgrams[0][3])[UDP].chksum == 0xFFFF


def rx_accept(routes: list[UdpRoute], outer: str, pkt: bytes) -> tuple[int, object]:
    st = ffi.new("fp_stats *")
    ok = lib.fp_rx_accept(route_array(tuple(routes)), len(routes), int(ipaddress.IPv4Address(outer)), pkt,
                          len(pkt), st)
    return ok, st


def test_ipv6_inner_packets_are_accepted_only_from_the_public_ip_leasing_their_source():
    routes = [PEER_A, PEER_A6]
    good = bytes(IPv6(src=DST6, dst=SRC6) / UDP(sport=1, dport=2) / (b"x" * 100))
    assert rx_accept(routes, "192.0.2.2", good)[0] == 1
    ok, st = rx_accept(routes, "192.0.2.99", good)  # outer source is not the lease's PublicIP
    assert (ok, st.rx_drop_spoofed) == (0, 1)
    unleased = bytes(IPv6(src="fd00:9::1", dst=SRC6) / UDP(sport=1, dport=2))
    ok, st = rx_accept(routes, "192.0.2.2", unleased)
    assert (ok, st.rx_drop_no_route) == (0, 1)
    for bad in (good[:39], good[:-1], good + b"\0", b"\x60"):  # truncated or padded: length field disagrees
        ok, st = rx_accept(routes, "192.0.2.2", bad)
        assert (ok, st.rx_drop_malformed) == (0, 1), len(bad)
    v4 = bytes(IP(src="10.5.2.7", dst=SRC) / UDP(sport=1, dport=2))
    assert rx_accept(routes, "192.0.2.2", v4)[0] == 1
    assert rx_accept(routes, "192.0.2.3", v4)[1].rx_drop_spoofed == 1


def flow_segments(n: int, mss: int = 1400, seq0: int = 1, psh_last: bool = False, options=None) -> list[bytes]:
    options = options if options is not None else [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    out = []
    for i in range(n):
        flags = "PA" if psh_last and i == n - 1 else "A"
        out.append(bytes(IP(src=SRC, dst=DST, id=50 + i, flags="DF") / TCP(
            sport=40000, dport=5201, seq=seq0 + i * mss, ack=9, flags=flags, window=100, options=options)
            / (bytes([i % 256]) * mss)))
    return out


def test_consecutive_segments_coalesce_into_one_tso_frame():
    segs = flow_segments(10, psh_last=True)
    frames = rx_coalesce(segs)
    assert len(frames) == 1
    hdr, pkt = frames[0]
    assert struct.unpack("<BBHHHH", hdr) == (NEEDS_CSUM, GSO_TCPV4, 52, 1400, 20, 16)
    payload = b"".join(bytes([i]) * 1400 for i in range(10))
    expected = bytearray(bytes(IP(src=SRC, dst=DST, id=50, flags="DF") / TCP(
        sport=40000, dport=5201, seq=1, ack=9, flags="PA", window=100,
        options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) / payload))
    struct.pack_into("!H", expected, 36, pseudo_partial(SRC, DST, 6, len(expected) - 20))
    assert pkt == bytes(expected)


def test_gap_other_flow_and_control_segments_are_not_merged():
    a = flow_segments(3)
    gap = flow_segments(2, seq0=1 + 5 * 1400)  # seq jumps: a retransmission boundary
    syn = bytes(IP(src=SRC, dst=DST) / TCP(sport=40000, dport=5201, flags="S"))
    other = bytes(IP(src=SRC, dst="10.5.2.12", flags="DF") / TCP(sport=40000, dport=5201, seq=1, ack=9, flags="A")
                  / (b"z" * 1400))
    frames = rx_coalesce(a + gap + [syn, other])
    kinds = [(struct.unpack("<BB", h[:2])[1], len(p)) for h, p in frames]
    assert kinds == [(GSO_TCPV4, 52 + 3 * 1400), (GSO_TCPV4, 52 + 2 * 1400), (GSO_NONE, len(syn)),
                     (GSO_NONE, len(other))]
    assert frames[2][1] == syn and frames[3][1] == other  # untouched bytes
    short_then_full = flow_segments(1)[0][:-400]  # a short segment ends a super-packet
    frames = rx_coalesce([short_then_full] + flow_segments(2, seq0=1 + 1000))
    assert [len(p) for _, p in frames][0] == len(short_then_full)


def test_route_table_longest_prefix():
    r = [UdpRoute(ipaddress.IPv4Network("10.5.0.0/16"), ipaddress.IPv4Address("192.0.2.1"), 8285),
         UdpRoute(ipaddress.IPv4Network("10.5.3.0/24"), ipaddress.IPv4Address("192.0.2.3"), 8285),
         UdpRoute(ipaddress.IPv4Network("10.5.3.128/25"), ipaddress.IPv4Address("192.0.2.4"), 9000)]
    A = ipaddress.IPv4Address
    assert lookup(r, A("10.5.3.200")).peer_ip == A("192.0.2.4")
    assert lookup(r, A("10.5.3.1")).peer_ip == A("192.0.2.3")
    assert lookup(r, A("10.5.77.1")).peer_ip == A("192.0.2.1")
    assert lookup(r, A("10.6.0.1")) is None
    six = [UdpRoute(ipaddress.IPv6Network("fd00:5::/48"), A("192.0.2.1"), 8285),
           UdpRoute(ipaddress.IPv6Network("fd00:5:0:3::/64"), A("192.0.2.3"), 8285),
           UdpRoute(ipaddress.IPv6Network("fd00:5:0:3:8000::/65"), A("192.0.2.4"), 9000)]
    S = ipaddress.IPv6Address
    assert lookup(r + six, S("fd00:5:0:3:8000::1")).peer_ip == A("192.0.2.4")
    assert lookup(r + six, S("fd00:5:0:3::1")) == six[1]
    assert lookup(r + six, S("fd00:5:0:ffff::1")).peer_ip == A("192.0.2.1")
    assert lookup(r + six, S("fd00:6::1")) is None
    assert lookup(six, A("10.5.3.1")) is None  # the families do not mix
    assert lookup(r + six, A("10.5.3.1")).peer_ip == A("192.0.2.3")
    many = [UdpRoute(ipaddress.IPv4Network((0x0A000000 + (i << 8), 24)), A(0xC0000200 + i % 250), 8285)
            for i in range(5000)]
    for i in (0, 1234, 4999):
        assert lookup(many, A(0x0A000000 + (i << 8) + 7)).subnet.network_address == A(0x0A000000 + (i << 8))
