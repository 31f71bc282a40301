"""Scenarios written once for any cluster: namespace hosts by default, real VMs with NETD_CLUSTER=vagrant.

On VMs (integration/vagrant/cluster ci) netd runs under systemd from the project's wheel, etcd
on node 1; on namespace hosts the same checks run against netd processes in namespaces.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from integration.cluster import ClusterBase, wait_for

pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.etcd]
ON_VMS = os.environ.get("NETD_CLUSTER") == "vagrant"
TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools.py")


@pytest.fixture(scope="module")
def cluster():
    if ON_VMS:
        from integration.vagrant_cluster import VagrantCluster

        c: ClusterBase = VagrantCluster()
        yield c
        return
    if os.geteuid() != 0 or not shutil.which("etcd"):
        pytest.skip("namespace hosts need root and etcd")
    from integration.cluster import Cluster

    ns = Cluster(2)
    ns.set_config({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}})
    for i in (1, 2):
        ns.start_netd(i)
    yield ns
    ns.close()


def use_backend(c: ClusterBase, backend: str) -> None:
    c.wait_ready(timeout=120)
    ready, body = c.readyz(1)
    if body.get("backend") != backend:
        c.set_config({"Network": "10.5.0.0/16", "Backend": {"Type": backend}})
        for i in range(1, c.size + 1):  # a backend change needs a restart (netd says so on /readyz)
            c.restart_netd(i)
    c.wait_ready(timeout=180)
    c.wait_mesh(timeout=60)


def tcp_transfer_intact(c: ClusterBase, mbytes: int) -> None:
    a, b = c.add_container(1), c.add_container(2)
    assert c.can_ping(a, b.ip) and c.can_ping(b, a.ip)
    for i in (1, 2):
        c.copy_to(i, TOOLS, "/tmp/netd-tools.py")
    rx = c.container_popen(b, "python3", "/tmp/netd-tools.py", "tcp-recv", "5001")
    assert rx.stdout is not None and rx.stdout.readline().strip() == "listening"
    sent = c.container_exec(a, "python3", "/tmp/netd-tools.py", "tcp-send", str(b.ip), "5001", str(mbytes),
                            timeout=600).stdout.split()
    got = rx.communicate(timeout=120)[0].split()
    assert sent == got and sent[0] == str(mbytes << 20)


@pytest.mark.parametrize("backend", ["vxlan", "udp"])
def test_hosts_lease_distinct_subnets_ping_and_move_tcp_intact(cluster, backend):
    c = cluster
    use_backend(c, backend)
    subnets = {c.subnet(i) for i in range(1, c.size + 1)}
    assert None not in subnets and len(subnets) == c.size
    tcp_transfer_intact(c, 20 if ON_VMS else 50)
    if backend == "udp":  # the transfer went through the fast path, not a leftover kernel route
        assert json.loads(c.netctl(1, "stats", "-o", "json").stdout)["packets"]["tx"] > 10_000
        assert c.routes(1) == set() and c.routes(2) == set()
    else:
        assert c.routes(1) == {str(c.subnet(2))}
    rows = json.loads(c.netctl(2, "leases", "-o", "json").stdout)
    assert {r["public_ip"] for r in rows} >= {c.host_ip(1), c.host_ip(2)}
    assert all(r["backend"] == backend for r in rows if r["public_ip"] in (c.host_ip(1), c.host_ip(2)))


def test_restarting_netd_keeps_the_subnet(cluster):
    c = cluster
    c.wait_ready(timeout=120)
    before = c.subnet(2)
    c.restart_netd(2)
    c.wait_ready(2, timeout=120)
    assert c.subnet(2) == before
    c.wait_mesh(timeout=60)


def test_reboot_brings_the_host_back_with_its_subnet(cluster):
    c = cluster
    c.wait_ready(timeout=120)
    before = c.subnet(2)
    c.reboot(2)  # nobody touches the host afterwards: netd starts as at boot and finds its lease
    wait_for(lambda: c.readyz(2)[0], 300, lambda: f"node2 not ready after reboot: {c.readyz(2)[1]}")
    assert c.subnet(2) == before
    c.wait_mesh(timeout=120)
    a, b = c.add_container(1), c.add_container(2)
    assert c.can_ping(a, b.ip) and c.can_ping(b, a.ip)
