"""Tenant networks on Open vSwitch across namespace hosts (issue 12): every host runs its own
ovsdb-server + ovs-vswitchd (userspace datapath) and netd's switch loop; endpoints are network
namespaces attached with netctl."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from integration.cluster import Cluster, capture, in_ns, metric, sh, wait_for, wait_resyncs
from integration.tenants import TENANTS, apply_specs, attach, endpoint_states, spec_path, wait_wired
from integration.test_udp import tcp_hashed

pytestmark = [pytest.mark.root, pytest.mark.etcd]

def tenant_cluster(make_cluster, n: int = 3) -> Cluster:
    c = make_cluster(n, ovs=True)
    c.set_config({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}})
    for i in range(1, n + 1):
        c.start_netd(i)
    c.wait_ready(timeout=60)
    apply_specs(c, TENANTS)
    return c


def flows(c: Cluster, i: int) -> list[str]:
    return [line for line in c.ovs_servers[i].ofctl("netd-int", "dump-flows").splitlines() if "cookie=" in line]


def test_two_tenants_with_overlapping_subnets_reach_their_own_and_nothing_else(make_cluster):
    c = tenant_cluster(make_cluster)
    blue = {i: attach(c, i, "blue", f"10.20.0.{10 + i}") for i in (1, 2, 3)}
    red = {i: attach(c, i, "red", f"10.20.0.{10 + i}") for i in (1, 2, 3)}  # the same addresses, in red
    only_red = attach(c, 2, "red", "10.20.0.50", "red-only")
    only_blue = attach(c, 3, "blue", "10.20.0.60", "blue-only")
    everyone = [*blue.values(), *red.values(), only_red, only_blue]
    wait_wired(c, *(b.endpoint for b in everyone))
    for group in (list(blue.values()) + [only_blue], list(red.values()) + [only_red]):
        for src in group:
            for dst in group:
                if src is not dst:
                    assert src.ping(dst.ip, count=2), f"{src.name} -> {dst.ip}"
    tcp_hashed(blue[1], blue[3], blue[3].ip, 20, timeout=180)  # 20 MB across the tunnel, hashed both ends
    # nothing crosses, either way: an address only the other tenant has is unreachable
    for src in blue.values():
        assert not src.ping(only_red.ip), src.name
    for src in red.values():
        assert not src.ping(only_blue.ip), src.name
    # frames crafted in blue's namespace with red's addresses go nowhere: one to red-only's MAC
    # (blue's forwarding has no such destination), one with red-only's MAC and address as its source
    # (a broadcast: admitted, it would reach every blue port, blue3's among them)
    red_mac = "0a:58:0a:14:00:32"  # red-only's (0a:58:<10.20.0.50>)

    def drops() -> dict[int, int]:  # table -> its drop flow's packets on host 1
        return {(10 if "table=10" in line else 0): int(line.split("n_packets=")[1].split(",")[0])
                for line in flows(c, 1) if "priority=0 actions=drop" in line}

    before = drops()
    caps = [capture(in_ns(only_red.name, "tcpdump", "-n", "-l", "-i", "t-red", "icmp")),
            capture(in_ns(blue[3].name, "tcpdump", "-n", "-l", "-i", "t-blue", "icmp"))]
    frame = bytes(Ether(src="0a:58:0a:14:00:0b", dst=red_mac) /  # blue1's own MAC and address
                  IP(src="10.20.0.11", dst="10.20.0.50") / ICMP(id=4242))
    spoof = bytes(Ether(src=red_mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="10.20.0.50", dst="10.20.0.13") /
                  ICMP(id=4343))
    send = ("import socket,sys\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\ns.bind(('t-blue',0))\n"
            f"s.send(bytes.fromhex('{frame.hex()}'))\ns.send(bytes.fromhex('{spoof.hex()}'))\n")
    subprocess.run(in_ns(blue[1].name, sys.executable, "-c", send), check=True, timeout=30)
    # each was dropped where it must be: the spoofed one at admission (table 0), the other in blue's
    # forwarding (table 10)
    wait_for(lambda: drops()[0] > before[0] and drops()[10] > before[10], 10, lambda: (before, drops()))
    time.sleep(0.5)  # (then nothing may arrive: there is no condition to wait for)
    for cap in caps:
        cap.terminate()
        out, _ = cap.communicate(timeout=10)
        assert "id 4242" not in out and "id 4343" not in out and "10.20.0.50" not in out, out


def test_a_vswitchd_killed_and_restarted_is_reprogrammed_at_once(make_cluster):
    c = tenant_cluster(make_cluster, 2)
    a, b = attach(c, 1, "blue", "10.20.0.11"), attach(c, 2, "blue", "10.20.0.12")
    wait_wired(c, "blue1", "blue2")
    assert a.ping(b.ip, count=2)
    server = c.ovs_servers[2]
    server.kill_vswitchd()
    assert not a.ping(b.ip, wait=1)
    server.start_vswitchd()
    t0 = time.monotonic()
    wait_for(lambda: a.ping(b.ip, wait=0.2), 10, "tenant traffic did not come back")
    took = time.monotonic() - t0
    print(f"tenant traffic back {took:.2f}s after ovs-vswitchd restarted")
    assert took < 2.0
    _, metrics = c.http_get(2, "/metrics")
    assert any(line.startswith("netd_ovs_reinstalls_total 1") for line in metrics.splitlines()), metrics
    # no flood: the broadcast flows moved a handful of frames at most
    floods = [line for line in flows(c, 2) if "01:00:00:00:00:00/01:00:00:00:00:00" in line]
    assert floods and all(int(line.split("n_packets=")[1].split(",")[0]) < 20 for line in floods), floods


def test_with_etcd_down_a_restarted_vswitchd_is_reprogrammed_from_the_last_specs(make_cluster):
    c = tenant_cluster(make_cluster, 2)
    a, b = attach(c, 1, "blue", "10.20.0.11"), attach(c, 2, "blue", "10.20.0.12")
    wait_wired(c, "blue1", "blue2")
    assert a.ping(b.ip, count=2)
    assert c.etcd is not None
    c.etcd.kill()
    try:
        server = c.ovs_servers[2]
        server.kill_vswitchd()
        assert not a.ping(b.ip, wait=1)
        server.start_vswitchd()
        wait_for(lambda: a.ping(b.ip, wait=0.2), 10, lambda: c.readyz(2))
        assert c.readyz(2)[1]["tenant_networks"]["ovs"] == "connected"  # type: ignore[index]
    finally:
        c.etcd.start()


def test_a_change_to_one_tenant_touches_only_its_flows(make_cluster):
    c = tenant_cluster(make_cluster, 2)
    r1, r2 = attach(c, 1, "red", "10.20.0.11"), attach(c, 2, "red", "10.20.0.12")
    wait_wired(c, "red1", "red2")
    assert r1.ping(r2.ip, count=3)

    def red_flows() -> dict[str, str]:  # match -> counters; durations grow, counts stay
        out = {}
        for line in flows(c, 1):
            if "cookie=0x4e4554440000138a" in line:
                parts = line.split(", ")
                key = line.split("idle_age=")[1].split(",", 1)[1] if "idle_age=" in line else line
                out[key] = next(p for p in parts if p.startswith("n_packets="))
        return out

    before = red_flows()
    attach(c, 1, "blue", "10.20.0.21")
    wait_wired(c, "blue1")
    wait_for(lambda: any("cookie=0x4e45544400001389" in line for line in flows(c, 1)), 10, "no blue flows")
    assert red_flows() == before  # red's flows untouched: same flows, same counters
    _, metrics = c.http_get(1, "/metrics")
    assert "netd_ovs_flows{table=\"10\"}" in metrics and "netd_spec_revision" in metrics


def test_a_detached_or_vanished_endpoint_loses_its_port(make_cluster):
    c = tenant_cluster(make_cluster, 1)
    a = attach(c, 1, "blue", "10.20.0.11", "a")
    b = attach(c, 1, "blue", "10.20.0.12", "b")
    wait_wired(c, "a", "b")
    assert a.ping(b.ip)
    assert len(c.ovs_servers[1].vsctl("list-ports", "netd-int").split()) == 3  # a, b and the tunnel
    sh(["ip", "netns", "del", b.name])  # the 'container' is gone

    def state(name: str) -> str:
        return endpoint_states(c).get(name, "")

    wait_for(lambda: state("b").startswith("target gone"), 20, lambda: c.readyz(1))
    status = json.loads(c.etcdctl("get", "/netd/status/endpoints/b", "--print-value-only"))
    assert status["state"].startswith("target gone") and status["host"] == "h1"
    assert len(c.ovs_servers[1].vsctl("list-ports", "netd-int").split()) == 2  # its port removed
    c.netctl(1, "detach", "a")
    wait_for(lambda: state("a") == "", 10, lambda: c.readyz(1))
    assert c.ovs_servers[1].vsctl("list-ports", "netd-int").split() == ["netd-vx"]


def test_a_docker_container_on_a_tenant_is_reached_from_another_host(make_cluster, dockerd):
    from integration.docker import IMAGE

    c = make_cluster(2, ovs=True)
    c.set_config({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}})
    for i in (1, 2):
        c.start_netd(i, f"--docker-host={dockerd.host}")
    c.wait_ready(timeout=60)
    apply_specs(c, TENANTS)
    cli = dockerd.client()
    try:
        container = cli.containers.run(IMAGE, "sleep 600", name=f"{c.tag}-web", network_mode="none", detach=True)
        out = c.netctl(1, "attach", "--tenant", "blue", "--host", "h1", "--container", f"{c.tag}-web",
                       "--ip", "10.20.0.31", "--name", "web").stdout
        assert "endpoint web: 10.20.0.31" in out
        peer = attach(c, 2, "blue", "10.20.0.32", "client")
        wait_wired(c, "web", "client")
        assert peer.ping("10.20.0.31", count=3)
        back = container.exec_run("ping -c 2 -W 2 10.20.0.32")
        assert back.exit_code == 0, back.output
        assert b"10.20.0.31/24" in container.exec_run("ip addr show t-blue").output
        container.remove(force=True)  # the container goes: reported, its port removed
        wait_for(lambda: endpoint_states(c).get("web", "").startswith("target gone"), 20, lambda: c.readyz(1))
        wait_for(lambda: c.ovs_servers[1].vsctl("list-ports", "netd-int").split() == ["netd-vx"], 10,
                 lambda: c.ovs_servers[1].vsctl("list-ports", "netd-int"))
    finally:
        cli.close()


def test_the_readme_demo_runs_as_written_and_keeps_the_tenants_apart(make_cluster):
    """scripts/demo's cluster part (scripts/demo itself runs bootstrap first): it exits 0 only if the
    overlay ping and the tenant pings came out as they must. (make_cluster: its prerequisite checks.)"""
    from integration.conftest import _require
    from integration.ovs import ovs_installed

    _require(ovs_installed(), "Open vSwitch not installed (apt-get install openvswitch-switch)")
    out = subprocess.run([sys.executable, "-m", "integration.demo", "--hosts", "2", "--no-wait"],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "ping blue1 (host 1) -> 10.20.0.12: replies" in out.stdout, out.stdout
    assert "ping red1 (host 1) -> 10.20.0.60: no reply" in out.stdout, out.stdout
    assert "demo OK" in out.stdout


def test_a_refused_apply_changes_no_flow_on_any_host(make_cluster):
    """Every class of bad file (tests/test_netctl_specs.py's, beside the good file) is refused while the
    agents run: after two whole syncs on each host since, its flows are the same flows, and no bundle
    was written."""
    import textwrap

    from tests.test_netctl_specs import BAD, GOOD

    c = tenant_cluster(make_cluster, 2)
    a, b = attach(c, 1, "blue", "10.20.0.11"), attach(c, 2, "blue", "10.20.0.12")
    wait_wired(c, "blue1", "blue2")

    def bridge(i: int) -> list[str]:
        return sorted(c.ovs_servers[i].ofctl("netd-int", "dump-flows", "--no-stats").splitlines())

    def etcd_revision() -> int:
        return int(json.loads(c.etcdctl("get", "/", "-w", "json"))["header"]["revision"])

    apply_specs(c, GOOD, "good.yaml")  # blue gets a gateway: applied, so the agents have synced it below
    wait_for(lambda: all(c.readyz(i)[1]["tenant_networks"]["spec_revision"] == etcd_revision()  # type: ignore[index]
                         for i in (1, 2)), 20, "the good apply did not reach both hosts")
    before = {i: bridge(i) for i in (1, 2)}
    applies = {i: metric(c, i, "netd_ovs_flow_applies_total") for i in (1, 2)}
    revision = etcd_revision()
    for case, (text, want) in BAD.items():
        with open(spec_path(c, "bad.yaml"), "w") as fh:
            fh.write(textwrap.dedent(text))
        r = c.netctl(1, "apply", "-f", spec_path(c, "good.yaml"), "-f", spec_path(c, "bad.yaml"), check=False)
        assert r.returncode == 2 and all(f"{c.tag}-bad.yaml{line}" in r.stderr for line in want), (case, r.stderr)
    assert etcd_revision() == revision
    wait_resyncs(c, (1, 2), counter="netd_ovs_apply_seconds_count")
    assert {i: bridge(i) for i in (1, 2)} == before
    assert {i: metric(c, i, "netd_ovs_flow_applies_total") for i in (1, 2)} == applies
    assert a.ping(b.ip, count=2)


def test_a_tenant_spec_change_reprograms_and_rewires_it_once(make_cluster):
    """red's VNI and gateway change: its flows move to the new cookie (a modify cannot change one),
    its endpoints are wired again with the new default route, traffic flows, and the bridge then
    stays put (no bundle on every sync)."""
    c = tenant_cluster(make_cluster, 2)
    r1, r2 = attach(c, 1, "red", "10.20.0.11"), attach(c, 2, "red", "10.20.0.12")
    wait_wired(c, "red1", "red2")
    assert r1.ping(r2.ip, count=2)
    apply_specs(c, TENANTS.replace("spec: {vni: 5002, subnet: 10.20.0.0/24}",
                                   "spec: {vni: 5003, subnet: 10.20.0.0/24, gateway: 10.20.0.1}"))

    def cookies(i: int) -> set[str]:
        return {line.split(",")[0].strip() for line in flows(c, i)}

    for i in (1, 2):
        wait_for(lambda i=i: "cookie=0x4e4554440000138b" in cookies(i)
                 and "cookie=0x4e4554440000138a" not in cookies(i), 20, lambda i=i: cookies(i))
    for box in (r1, r2):
        wait_for(lambda box=box: "default via 10.20.0.1 dev t-red" in box.run("ip", "route").stdout, 20,
                 lambda box=box: box.run("ip", "route").stdout)
    assert r1.ping(r2.ip, count=2) and r2.ping(r1.ip, count=2)

    def ifindexes() -> list[str]:  # the inside interfaces: re-wiring makes new ones
        return [box.run("cat", "/sys/class/net/t-red/ifindex").stdout.strip() for box in (r1, r2)]

    applies = {i: metric(c, i, "netd_ovs_flow_applies_total") for i in (1, 2)}
    wired = ifindexes()
    wait_resyncs(c, (1, 2), counter="netd_ovs_apply_seconds_count")
    assert {i: metric(c, i, "netd_ovs_flow_applies_total") for i in (1, 2)} == applies
    assert ifindexes() == wired and all(wired), wired  # wired once, not on every sync
