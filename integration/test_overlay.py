"""Scenarios on namespace hosts with real etcd and real netd processes (issue #2)."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import threading
import time

import pytest

from integration.cluster import Cluster, capture, in_ns, reconcile_runs, wait_for, wait_resyncs

pytestmark = [pytest.mark.root, pytest.mark.etcd]

VXLAN = {"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}


def start(cluster: Cluster, config: dict, *extra: str, hosts: tuple[int, ...] | None = None) -> None:
    cluster.set_config(config)
    for i in hosts or range(1, len(cluster.hosts) + 1):
        cluster.start_netd(i, *extra)
    cluster.wait_ready(*(hosts or ()))


@pytest.mark.vm
@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_three_hosts_reach_every_other_hosts_containers(make_cluster, backend):
    c = make_cluster(3)
    start(c, {"Network": "10.5.0.0/16", "Backend": {"Type": backend}})
    subnets = {c.subnet(i) for i in (1, 2, 3)}
    assert len(subnets) == 3
    c.wait_mesh()
    containers = [c.add_container(i) for i in (1, 2, 3)]
    for src in containers:
        for dst in containers:
            if src is not dst:
                assert c.can_ping(src, dst.ip), f"{src.name} -> {dst.ip}"
    if backend == "vxlan":
        # flannel's shape: onlink routes via the peer subnet's .0 on flannel.1
        for r in c.route_details(1):
            assert r["dev"] == "flannel.1" and "onlink" in r.get("flags", []), r
            assert r["gateway"] == r["dst"].split("/")[0]
        neigh = c.exec(1, "ip", "neigh", "show", "dev", "flannel.1").stdout
        assert neigh.count("PERMANENT") == 2
    leases = json.loads(c.netctl(2, "leases", "-o", "json").stdout)
    assert {row["subnet"] for row in leases} == {str(s) for s in subnets}
    assert all(row["backend"] == backend and 0 < row["ttl_seconds"] <= 86400 for row in leases)


def test_sigkill_and_restart_keeps_subnet_and_leaves_peers_untouched(make_cluster):
    c = make_cluster(3)
    start(c, VXLAN)
    c.wait_mesh()
    before_subnet = c.subnet(2)
    key = f"{c.etcd_prefix}/subnets/{before_subnet.network_address}-{before_subnet.prefixlen}"
    before_rev = json.loads(c.etcdctl("get", key, "-w", "json"))["kvs"][0]["mod_revision"]
    peers_before = {i: c.route_details(i) for i in (1, 3)}
    assert c.stop_netd(2, signal.SIGKILL) == -signal.SIGKILL
    c.start_netd(2)
    c.wait_ready(2)
    assert c.subnet(2) == before_subnet
    wait_resyncs(c, (1, 3))  # the peers have seen whatever the restart did
    assert {i: c.route_details(i) for i in (1, 3)} == peers_before
    after_rev = json.loads(c.etcdctl("get", key, "-w", "json"))["kvs"][0]["mod_revision"]
    assert after_rev == before_rev, "the restart rewrote its key (peers would see an event)"
    assert "(reuse)" in c.netd_log(2)


def test_operator_deletes_subnet_key_and_host_reacquires_without_restart(make_cluster):
    c = make_cluster(2)
    start(c, VXLAN)
    subnet = c.subnet(1)
    pid = c.netd_pid(1)
    key = f"{c.etcd_prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}"
    c.etcdctl("del", key)
    t0 = time.monotonic()
    wait_for(lambda: c.etcdctl("get", key, "--print-value-only").strip() != "", 5, "key not re-created in 5 s")
    took = time.monotonic() - t0
    value = json.loads(c.etcdctl("get", key, "--print-value-only"))
    assert value["PublicIP"] == c.host(1).ip
    assert c.netd_pid(1) == pid
    assert c.subnet(1) == subnet
    print(f"re-acquired in {took:.2f}s")


@pytest.mark.slow
def test_etcd_outage_of_30s_loses_no_ping_and_restarts_nothing(make_cluster):
    c = make_cluster(3)
    start(c, VXLAN)
    c.wait_mesh()
    a, b = c.add_container(1), c.add_container(3)
    assert c.can_ping(a, b.ip)
    pids = [c.netd_pid(i) for i in (1, 2, 3)]
    leases_before = c.etcdctl("get", "--prefix", f"{c.etcd_prefix}/subnets/")
    result: dict[str, subprocess.CompletedProcess[str]] = {}

    def pinger() -> None:  # 10/s for 36 s, across the whole outage
        result["ping"] = subprocess.run(in_ns(a.name, "ping", "-n", "-q", "-i", "0.1", "-c", "360", str(b.ip)),
                                        capture_output=True, text=True, timeout=120)

    t = threading.Thread(target=pinger)
    t.start()
    time.sleep(2)
    assert c.etcd is not None
    c.etcd.kill()
    time.sleep(30)
    c.etcd.start()
    t.join()
    out = result["ping"].stdout
    assert " 0% packet loss" in out, out
    assert "360 received" in out, out
    assert c.etcdctl("get", "--prefix", f"{c.etcd_prefix}/subnets/") == leases_before
    assert [c.netd_pid(i) for i in (1, 2, 3)] == pids
    c.wait_ready()
    for i in (1, 2, 3):  # each host saw the outage as an outage, not as a refusal
        _, metrics = c.http_get(i, "/metrics")
        errors = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                  if line.startswith("netd_etcd_errors_total{")}
        assert sum(v for k, v in errors.items() if 'kind="unavailable"' in k) >= 1, (i, errors)
        assert not any('kind="refused"' in k for k in errors), (i, errors)


def test_host_that_goes_away_is_dropped_by_peers(make_cluster):
    c = make_cluster(3)
    c.set_config(VXLAN)
    for i in (1, 2):
        c.start_netd(i)
    c.start_netd(3, "--subnet-lease-ttl=3s")
    c.wait_ready()
    c.wait_mesh()
    gone = str(c.subnet(3))
    c.stop_netd(3, signal.SIGKILL)
    t0 = time.monotonic()
    # the lease expires within its TTL (3 s); peers then drop the routes within one resync (1 s)
    for i in (1, 2):
        wait_for(lambda i=i: gone not in c.routes(i), 3 + 1 + 1.5, lambda i=i: f"host {i} still routes {gone}")
    print(f"peers dropped {gone} {time.monotonic() - t0:.1f}s after the kill")
    assert c.exec(1, "ip", "neigh", "show", "dev", "flannel.1").stdout.count("PERMANENT") == 1


@pytest.mark.parametrize(
    "bad,reason",
    [
        ('{"Network":"10.5.0.0/33","Backend":{"Type":"vxlan"}}', "Network: expected an IPv4 CIDR"),
        ('{"Network":"10.5.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}', "SubnetLen: expected at most 30"),
        ('{"Network":"10.5.0.0/16","Backend":{"Type":"ipsec"}}', "Backend.Type: unknown backend type 'ipsec'"),
        ("Network: 10.5.0.0/16", "not valid JSON"),
    ],
    ids=["bad-cidr", "subnetlen-out-of-range", "unknown-backend", "not-json"],
)
def test_bad_config_is_reported_keeps_routes_and_recovers(make_cluster, bad, reason):
    c = make_cluster(2)
    start(c, VXLAN)
    c.wait_mesh()
    routes = {i: c.route_details(i) for i in (1, 2)}
    a, b = c.add_container(1), c.add_container(2)
    c.set_config(bad)
    for i in (1, 2):
        wait_for(lambda i=i: not c.readyz(i)[0], 5, f"host {i} still ready with a bad config")
        ready, body = c.readyz(i)
        assert reason in str(body["reason"]), body
        status, _ = c.http_get(i, "/readyz")
        assert status == 503
    wait_resyncs(c, (1, 2))
    assert {i: c.route_details(i) for i in (1, 2)} == routes
    assert c.can_ping(a, b.ip)
    assert c.netd_pid(1) and c.netd_pid(2)
    c.set_config(VXLAN)
    c.wait_ready(timeout=10)


def test_fresh_host_with_bad_config_waits_and_starts_when_fixed(make_cluster):
    c = make_cluster(1)
    c.set_config('{"Network":"10.5.0.0/16","Backend":{"Type":"nope"}}')
    c.start_netd(1)
    wait_for(lambda: "Backend.Type" in str(c.readyz(1)[1].get("reason")), 10, lambda: c.readyz(1))
    assert c.subnet(1) is None
    c.set_config(VXLAN)
    c.wait_ready(1, timeout=10)
    assert c.subnet(1) is not None


def test_reconcile_repairs_deleted_routes_and_removes_stale_ones(make_cluster):
    c = make_cluster(2)
    start(c, VXLAN)
    c.wait_mesh()
    peer = str(c.subnet(2))
    c.exec(1, "ip", "route", "del", peer)
    c.exec(1, "ip", "route", "add", "10.5.250.0/24", "via", "10.5.250.0", "dev", "flannel.1", "onlink", "proto", "101")
    wait_for(lambda: c.routes(1) == {peer}, 5, lambda: f"routes on host 1: {c.routes(1)}")
    _, metrics = c.http_get(1, "/metrics")
    repairs = [line for line in metrics.splitlines() if line.startswith("netd_reconcile_repairs_total")]
    assert float(repairs[0].split()[1]) >= 5  # 3 initial + route re-added + stale route removed


def test_ip_masq_masquerades_only_traffic_leaving_the_cluster(make_cluster):
    c = make_cluster(2)
    start(c, VXLAN, "--ip-masq")
    a, b = c.add_container(1), c.add_container(2)
    assert "netd ip-masq" in c.exec(1, "nft", "list", "table", "ip", "netd").stdout

    def source_seen(ns: str, dev: str, send: callable) -> str:
        cap = capture(in_ns(ns, "tcpdump", "-n", "-l", "-c", "1", "-i", dev, "icmp and icmp[0] == 8"))
        send()
        try:
            line = cap.communicate(timeout=10)[0]
        finally:
            cap.kill()
        return line.split(" IP ", 1)[1].split(" > ", 1)[0]

    # to the outside (the underlay gateway): masqueraded to host 1's PublicIP
    outside = source_seen(c.underlay_ns, "br0", lambda: c.ping(a, "10.250.0.254", count=2))
    assert outside == c.host(1).ip
    # inside the cluster network: the container's own address survives
    inside = source_seen(b.name, "eth0", lambda: c.ping(a, b.ip, count=2))
    assert inside == str(a.ip)
    assert c.stop_netd(1, signal.SIGTERM) == 0
    assert c.exec(1, "nft", "list", "table", "ip", "netd", check=False).returncode != 0, "rules left after SIGTERM"


def test_healthz_and_metrics(make_cluster):
    c = make_cluster(2)
    start(c, VXLAN)
    c.wait_mesh()
    assert c.http_get(1, "/healthz") == (200, "ok\n")
    ready, body = c.readyz(1)
    assert ready and body["subnet"] == str(c.subnet(1)) and body["peers"] == 1
    _, metrics = c.http_get(1, "/metrics")
    for expected in ("netd_lease_held 1.0", "netd_peers 1.0", "netd_ready 1.0", "netd_config_valid 1.0",
                     f'netd_lease_info{{backend="vxlan",public_ip="{c.host(1).ip}",subnet="{c.subnet(1)}"}} 1.0'):
        assert expected in metrics, expected
    assert reconcile_runs(c, 1) >= 1
    assert "netd_etcd_errors_total{" not in metrics, "a healthy cluster counted etcd errors"


def test_netctl_config_set_get_and_validation(make_cluster):
    c = make_cluster(1)
    out = c.netctl(1, "config", "set", "--network", "10.7.0.0/16", "--subnet-len", "26", "--backend", "host-gw")
    assert json.loads(out.stdout)["Backend"]["Type"] == "host-gw"
    got = json.loads(c.netctl(1, "config", "get").stdout)
    assert got["SubnetLen"] == 26 and got["SubnetMin"] == "10.7.0.64" and got["SubnetMax"] == "10.7.255.192"
    bad = c.exec(1, "python3", "-m", "netd.cli.netctl_main", f"--etcd-endpoints={c.etcd_endpoint}",
                 "config", "set", "--network", "10.7.0.0/16", "--subnet-len", "17", check=False)
    assert bad.returncode == 2 and "SubnetLen: 17 leaves fewer than four subnets" in bad.stderr
    assert json.loads(c.netctl(1, "config", "get").stdout)["SubnetLen"] == 26  # nothing written
    c.netctl(1, "config", "set", "--network", "10.7.0.0/16", "--backend", "udp", "--ipv6-network", "fd00:7::/48")
    got = json.loads(c.netctl(1, "config", "get").stdout)
    assert (got["EnableIPv6"], got["IPv6SubnetLen"], got["IPv6SubnetMin"]) == (True, 64, "fd00:7:0:1::")
    bad = c.exec(1, "python3", "-m", "netd.cli.netctl_main", f"--etcd-endpoints={c.etcd_endpoint}", "config", "set",
                 "--network", "10.7.0.0/16", "--ipv6-network", "fd00:7::/48", check=False)  # vxlan: IPv4 only
    assert bad.returncode == 2 and "EnableIPv6: needs Backend.Type udp" in bad.stderr


def test_reservation_is_used_by_its_host_and_never_by_others(make_cluster):
    c = make_cluster(2)
    c.set_config({"Network": "10.5.0.0/16", "SubnetMin": "10.5.1.0", "SubnetMax": "10.5.2.0",
                  "Backend": {"Type": "vxlan"}})
    c.etcdctl("put", f"{c.etcd_prefix}/subnets/10.5.2.0-24", json.dumps({"PublicIP": c.host(2).ip}))
    c.start_netd(1)
    c.wait_ready(1)
    assert c.subnet(1) == ipaddress.IPv4Network("10.5.1.0/24")
    c.start_netd(2)
    c.wait_ready(2)
    assert c.subnet(2) == ipaddress.IPv4Network("10.5.2.0/24")
    got = json.loads(c.etcdctl("get", f"{c.etcd_prefix}/subnets/10.5.2.0-24", "-w", "json"))["kvs"][0]
    assert "lease" not in got or got["lease"] == 0, "a reservation must stay lease-less"
