"""The udp backend (C fast path) on namespace hosts (issue #3)."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

from integration.cluster import Cluster, Container, capture, in_ns, wait_for, wait_stable

pytestmark = [pytest.mark.root, pytest.mark.etcd]

UDP = {"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}
DUAL = {**UDP, "EnableIPv6": True, "IPv6Network": "fd00:5::/48"}


def tool(ns: str, *args: str, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen(in_ns(ns, sys.executable, "-m", "integration.tools", *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_listening(p: subprocess.Popen[str]) -> None:
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "listening", p.stderr.read() if p.stderr else ""


def stats(c: Cluster, i: int) -> dict:
    return json.loads(c.netctl(i, "stats", "-o", "json").stdout)


def tcp_hashed(src: Container, dst: Container, ip: object, mbytes: int, timeout: float) -> None:
    """mbytes of seeded TCP from src to dst at ip; both ends hash what they saw."""
    rx = tool(dst.name, "tcp-recv", "5001")
    wait_listening(rx)
    tx = tool(src.name, "tcp-send", str(ip), "5001", str(mbytes))
    sent, _ = tx.communicate(timeout=timeout)
    got, _ = rx.communicate(timeout=30)
    assert sent.split() == got.split() and sent.split()[0] == str(mbytes << 20)


def udp_digested(src: Container, dst: Container, ip: object, count: int, sizes: list[str], seconds: int) -> dict:
    """count datagrams of those sizes (cycled), each carrying its digest; what dst received."""
    rx = tool(dst.name, "udp-recv", "6000", str(seconds))
    wait_listening(rx)
    tx = tool(src.name, "udp-send", str(ip), "6000", str(count), *sizes)
    tx.communicate(timeout=60)
    return json.loads(rx.communicate(timeout=30)[0])


def start_udp(c: Cluster, *extra: str, config: dict = UDP) -> None:
    c.set_config(config)
    for h in c.hosts:
        c.start_netd(h.index, *extra)
    c.wait_ready()
    c.wait_mesh()


@pytest.mark.vm
def test_udp_mesh_tcp_200mb_intact_and_mixed_udp_intact(make_cluster):
    c = make_cluster(3)
    start_udp(c)
    boxes = [c.add_container(i) for i in (1, 2, 3)]
    for src in boxes:
        for dst in boxes:
            if src is not dst:
                assert c.can_ping(src, dst.ip), f"{src.name} -> {dst.ip}"
    assert c.exec(1, "ip", "-br", "addr", "show", "flannel0").stdout.split()[2] == f"{c.subnet(1).network_address}/16"
    assert int(c.exec(1, "cat", "/sys/class/net/flannel0/mtu").stdout) == 1500 - 28
    assert c.exec(1, "tc", "qdisc", "show", "dev", "flannel0").stdout.split()[:2] == ["qdisc", "noqueue"]
    # 200 MB of TCP, hashed on both sides
    tcp_hashed(boxes[0], boxes[2], boxes[2].ip, 200, timeout=180)
    # UDP of mixed sizes, up to and beyond the MTU (inner fragments), each datagram checks its digest
    sizes = ["8", "64", "200", "1000", "1443", "1444", "1472", "3000", "8000", "20000"]
    result = udp_digested(boxes[0], boxes[1], boxes[1].ip, 2000, sizes, 6)
    # (lost 23 of 2000 in 2 of ~40 runs in session 5, never since: the counters say where, if again)
    assert result == {"received": 2000, "corrupt": 0}, (stats(c, 1), stats(c, 2))
    s = stats(c, 1)
    assert s["offloads"] == {"tun-tso": True, "udp-gso": True, "udp-gro": True}
    assert all(v == 0 for k, v in s["drops"].items() if k != "tx/no_route"), s["drops"]


def test_plain_mode_is_forced_by_a_setting(make_cluster):
    c = make_cluster(2)
    start_udp(c, "--udp-offloads=off")
    a, b = c.add_container(1), c.add_container(2)
    assert c.can_ping(a, b.ip)
    assert stats(c, 1)["offloads"] == {"tun-tso": False, "udp-gso": False, "udp-gro": False}
    assert "vnet_hdr off" in c.exec(1, "ip", "-d", "link", "show", "flannel0").stdout
    # switching back re-creates the persistent TUN in the other mode
    c.stop_netd(1)
    c.start_netd(1)
    c.wait_ready(1)
    assert "vnet_hdr on" in c.exec(1, "ip", "-d", "link", "show", "flannel0").stdout
    assert c.can_ping(a, b.ip)


def fp_threads(c: Cluster, i: int) -> list[str]:
    task = f"/proc/{c.netd_pid(i)}/task"
    names = (Path(task, t, "comm").read_text().strip() for t in os.listdir(task))
    return sorted(n for n in names if n.startswith("netd-fp"))


def test_one_thread_for_both_directions_is_a_setting(make_cluster):
    c = make_cluster(2)
    start_udp(c, "--udp-threads=1")
    a, b = c.add_container(1), c.add_container(2)
    assert fp_threads(c, 1) == ["netd-fp"]
    assert "one thread for both directions" in c.netd_log(1)
    tcp_hashed(a, b, b.ip, 20, timeout=60)
    # a restart with the default re-attaches in the other layout (the cached one is not adopted)
    c.stop_netd(1)
    c.start_netd(1)
    c.wait_ready(1)
    assert fp_threads(c, 1) == ["netd-fp-rx", "netd-fp-tx"]
    assert c.can_ping(a, b.ip)


def test_route_changes_mid_stream_lose_nothing_for_other_peers(make_cluster):
    c = make_cluster(2)
    start_udp(c)
    a, b = c.add_container(1), c.add_container(2)
    result: dict[str, str] = {}

    def flood() -> None:  # 2000 pings at 2 ms while host 1's table is swapped over and over
        r = subprocess.run(in_ns(a.name, "ping", "-n", "-q", "-i", "0.002", "-c", "2000", "-W", "1", str(b.ip)),
                           capture_output=True, text=True, timeout=120)
        result["out"] = r.stdout

    t = threading.Thread(target=flood)
    t.start()
    swaps = 0
    while t.is_alive() and swaps < 200:  # peers come and go: each one is a table swap on host 1
        key = f"{c.etcd_prefix}/subnets/10.5.{200 + swaps % 50}.0-24"
        c.etcdctl("put", key, json.dumps({"PublicIP": f"10.250.0.{100 + swaps % 50}", "BackendType": "udp"}))
        c.etcdctl("del", key)
        swaps += 2
    t.join()
    assert swaps >= 40, "the stream ended before the table changed often"
    assert " 0% packet loss" in result["out"], result["out"]
    assert stats(c, 1)["drops"]["tx/no_route"] <= 1  # (one stray packet before IPv6 was off)


def send_raw(c: Cluster, ns: str, dst: str, packets: list[bytes]) -> None:
    path = f"{c.workdir}/raw.hex"
    with open(path, "w") as fh:
        fh.write("\n".join(p.hex() for p in packets) + "\n")
    subprocess.run(in_ns(ns, sys.executable, "-m", "integration.tools", "raw-udp", dst, "8285", path),
                   check=True, capture_output=True, timeout=60)


def test_spoofed_packets_are_dropped_and_counted(make_cluster):
    c = make_cluster(3)
    start_udp(c)
    victim = c.add_container(1)
    dst = str(victim.ip)
    h2_addr = str(c.subnet(2).network_address + 9)
    cap = capture(in_ns(victim.name, "tcpdump", "-n", "-l", "-c", "1", "-i", "eth0", "icmp"))
    forged = bytes(IP(src=h2_addr, dst=dst) / ICMP(id=4242))  # claims to come from host 2's subnet
    send_raw(c, c.host(3).ns, c.host(1).ip, [forged] * 5)     # ... but is sent by host 3
    send_raw(c, c.underlay_ns, c.host(1).ip, [forged] * 5)    # ... or by a non-member
    outsider = bytes(IP(src="10.99.0.1", dst=dst) / ICMP())   # from no leased subnet at all
    send_raw(c, c.host(2).ns, c.host(1).ip, [outsider] * 3)
    genuine = bytes(IP(src=h2_addr, dst=dst) / ICMP(id=7))   # the real owner may send it
    send_raw(c, c.host(2).ns, c.host(1).ip, [genuine])
    out, _ = cap.communicate(timeout=10)
    assert f"{h2_addr} > {dst}: ICMP echo request, id 7" in out  # the first packet seen is the genuine one
    drops = stats(c, 1)["drops"]
    assert drops["rx/spoofed"] == 10 and drops["rx/no_route"] == 3


def test_a_million_hostile_datagrams_are_each_counted_and_a_peers_reach_the_tun(make_cluster):
    """A million datagrams from a non-member: random bytes, and (three in four) packets built to pass
    each check in turn (integration.packets.hostile_rx: valid checksums, lying lengths, every IHL,
    fragments, forged sources of host 2's and our own subnets, unleased ones, empty datagrams):
    each one counted as a drop by its reason, none forwarded. Then 100,000 such packets from host
    2 itself, with sources in its subnet: those that pass reach the TUN (the coalescer and the TUN
    write see hostile input too); every datagram is accounted for, and netd keeps forwarding."""
    c = make_cluster(2)
    start_udp(c)
    a, b = c.add_container(1), c.add_container(2)
    pid = c.netd_pid(1)
    own, peer = c.subnet(1), c.subnet(2)
    sources = [str(peer.network_address + 7), str(own.network_address + 9), "10.5.250.1", "10.9.0.1"]

    def snmp() -> dict[str, int]:
        lines = [line.split() for line in c.exec(1, "cat", "/proc/net/snmp").stdout.splitlines()
                 if line.startswith("Udp:")]
        return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))

    def counted() -> tuple[int, dict[str, int]]:
        s = stats(c, 1)
        return s["packets"]["rx"], s["drops"]

    def blast(ns: str, n: int, srcs: list[str], seed: int) -> tuple[int, int, int, dict[str, int]]:
        (before, (rx0, drops0)) = snmp(), counted()
        out = subprocess.run(in_ns(ns, sys.executable, "-m", "integration.tools", "random-udp", c.host(1).ip,
                                   "8285", str(n), str(seed), str(a.ip), *srcs),
                             capture_output=True, text=True, timeout=900)
        assert out.stdout.strip() == str(n), out.stderr
        wait_stable(lambda: (snmp(), counted()), 30)  # everything sent is in
        after, (rx1, drops1) = snmp(), counted()
        by_reason = {k: drops1[k] - drops0.get(k, 0) for k in drops1 if drops1[k] - drops0.get(k, 0)}
        return (after["InDatagrams"] - before["InDatagrams"], after["RcvbufErrors"] - before["RcvbufErrors"],
                rx1 - rx0, by_reason)

    delivered, overflow, forwarded, drops = blast(c.underlay_ns, 1_000_000, sources, 3)
    print(f"from a non-member: delivered {delivered}, socket-buffer overflows {overflow}, drops {drops}")
    assert delivered + overflow >= 1_000_000
    assert forwarded == 0 and sum(drops.values()) == delivered  # each counted once, none forwarded
    for reason in ("rx/spoofed", "rx/no_route", "rx/malformed", "rx/empty"):
        assert drops.get(reason, 0) > 500, (reason, drops)  # the hostile ones got past the early checks

    delivered, overflow, forwarded, drops = blast(c.host(2).ns, 100_000, [str(peer.network_address + 7)], 4)
    print(f"from the peer: delivered {delivered}, overflows {overflow}, to the TUN {forwarded}, drops {drops}")
    assert forwarded > 10_000 and forwarded + sum(drops.values()) == delivered
    assert c.netd_pid(1) == pid and c.can_ping(a, b.ip)
    tcp_hashed(a, b, b.ip, 5, timeout=60)


@pytest.mark.parametrize("family", [4, 6])
def test_restart_during_ping_loses_at_most_10_in_a_row(make_cluster, family):
    """A ping at 20/s across a restart of netd on the sender; IPv6 on a dual-stack network (its
    routes come back from the same cache)."""
    c = make_cluster(2)
    start_udp(c, config=UDP if family == 4 else DUAL)
    a, b = c.add_container(1), c.add_container(2)
    dst = str(b.ip if family == 4 else b.ip6)
    assert c.can_ping(a, dst)
    pinger = subprocess.Popen(in_ns(a.name, "ping", "-n", "-i", "0.05", "-c", "160", "-W", "1", dst),
                              stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    c.stop_netd(1, signal.SIGTERM)
    c.start_netd(1)
    out, _ = pinger.communicate(timeout=60)
    seqs = sorted(int(line.split("icmp_seq=")[1].split()[0]) for line in out.splitlines() if "icmp_seq=" in line)
    gaps = [b - a - 1 for a, b in zip(seqs, seqs[1:], strict=False)]
    worst = max(gaps + [160 - seqs[-1], seqs[0] - 1])
    print(f"received {len(seqs)}/160, longest run lost {worst}")
    assert worst <= 10, out[-2000:]
    wait_for(lambda: c.readyz(1)[0], 10, "host 1 not ready after restart")
    assert ipaddress.IPv4Network(c.readyz(1)[1]["subnet"]) == c.subnet(1)
    assert c.can_ping(a, dst)


def test_netctl_leases_shows_udp_leases_as_flannel_writes_them(make_cluster):
    """netctl leases shows udp leases the way flannel writes them: PublicIP, BackendType, no BackendData."""
    c = make_cluster(2)
    start_udp(c)
    rows = json.loads(c.netctl(2, "leases", "-o", "json").stdout)
    assert {r["public_ip"] for r in rows} == {c.host(1).ip, c.host(2).ip}
    assert all(r["backend"] == "udp" and r["backend_data"] == {} for r in rows)


def test_dual_stack_ipv6_inner_packets_pass_every_way_intact_and_spoofed_ones_are_dropped(make_cluster):
    """EnableIPv6 on the udp backend: IPv6 subnets leased under flannel's dual-stack keys, IPv6
    inner packets carried in the same IPv4 datagrams, checked against the lease like IPv4."""
    c = make_cluster(3)
    start_udp(c, config=DUAL)
    boxes = [c.add_container(i) for i in (1, 2, 3)]
    assert all(b.ip6 is not None for b in boxes)
    env = c.subnet_env(1)
    assert env["FLANNEL_IPV6_NETWORK"] == "fd00:5::/48" and env["FLANNEL_IPV6_SUBNET"].endswith("::1/64")
    keys = [r["subnet"] + "&" + r["ipv6_subnet"] for r in json.loads(c.netctl(2, "leases", "-o", "json").stdout)]
    assert len(keys) == 3 and all(k.split("&")[1].startswith("fd00:5:") for k in keys)
    flannel0 = c.exec(1, "ip", "-6", "-br", "addr", "show", "dev", "flannel0").stdout.split()
    subnet6 = ipaddress.IPv6Interface(env["FLANNEL_IPV6_SUBNET"]).network
    assert flannel0[2:] == [f"{subnet6.network_address}/48"]  # no link-local address: no kernel chatter
    for src in boxes:
        for dst in boxes:
            if src is not dst:
                assert c.can_ping(src, dst.ip6), f"{src.name} -> {dst.ip6}"
                assert c.can_ping(src, dst.ip), f"{src.name} -> {dst.ip}"
    # 20 MB of TCP over IPv6 (the kernel cuts it to MTU-sized packets before the TUN: no TSO6)
    tcp_hashed(boxes[0], boxes[2], boxes[2].ip6, 20, timeout=120)
    # UDP over IPv6 of mixed sizes, beyond the MTU too (IPv6 fragments)
    sizes = ["8", "1000", "1400", "1452", "3000"]
    assert udp_digested(boxes[0], boxes[1], boxes[1].ip6, 500, sizes, 5) == {"received": 500, "corrupt": 0}
    drops = stats(c, 1)["drops"]
    assert {k: v for k, v in drops.items() if v} == {}
    # spoofing: host 3 claims host 2's IPv6 subnet
    h2_src = str(boxes[1].ip6 + 100)
    forged = bytes(IPv6(src=h2_src, dst=str(boxes[0].ip6)) / ICMPv6EchoRequest(id=4242))
    send_raw(c, c.host(3).ns, c.host(1).ip, [forged] * 4)
    genuine = bytes(IPv6(src=h2_src, dst=str(boxes[0].ip6)) / ICMPv6EchoRequest(id=7))
    rx_before = stats(c, 1)["packets"]["rx"]
    send_raw(c, c.host(2).ns, c.host(1).ip, [genuine])
    wait_for(lambda: stats(c, 1)["drops"]["rx/spoofed"] == 4 and stats(c, 1)["packets"]["rx"] > rx_before, 5,
             lambda: f"drops {stats(c, 1)['drops']}, packets {stats(c, 1)['packets']}")
    assert {k: v for k, v in stats(c, 1)["drops"].items() if v} == {"rx/spoofed": 4}


def test_dual_stack_ip_masq_masquerades_ipv6_leaving_the_cluster(make_cluster):
    """--ip-masq on a dual-stack network: the ip6 table does for IPv6 what the ip table does."""
    c = make_cluster(2)
    start_udp(c, "--ip-masq", config=DUAL)
    a, b = c.add_container(1), c.add_container(2)
    assert "netd ip-masq" in c.exec(1, "nft", "list", "table", "ip6", "netd").stdout
    # an IPv6 outside: the underlay gets fd99::/64, host 1 an address on it
    subprocess.run(in_ns(c.underlay_ns, "ip", "addr", "add", "fd99::1/64", "dev", "br0", "nodad"), check=True)
    c.exec(1, "ip", "addr", "add", "fd99::11/64", "dev", "eth0", "nodad")

    def source_seen(ns: str, dev: str, dst: str, src: Container) -> str:
        cap = capture(in_ns(ns, "tcpdump", "-n", "-l", "-c", "1", "-i", dev, "icmp6 and ip6[40] == 128"))
        ok = c.ping(src, dst, count=2).returncode == 0
        try:
            line = cap.communicate(timeout=10)[0]
        finally:
            cap.kill()
        assert ok, f"ping {dst} from {src.name} failed"
        return line.split(" IP6 ", 1)[1].split(" > ", 1)[0]

    assert source_seen(c.underlay_ns, "br0", "fd99::1", a) == "fd99::11"  # masqueraded to the host
    assert source_seen(b.name, "eth0", str(b.ip6), a) == str(a.ip6)  # inside the cluster: kept
    assert c.stop_netd(1, signal.SIGTERM) == 0
    for family in ("ip", "ip6"):
        assert c.exec(1, "nft", "list", "table", family, "netd", check=False).returncode != 0, family
