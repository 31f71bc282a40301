"""A netd host and a flannel host on one etcd (issue 11, item 1).

Host 2 plays the flannel host: its lease is written into etcd byte for byte as flannel's etcd
registry writes it (key ``<prefix>/subnets/10.5.77.0-24``, the LeaseAttrs JSON of flannel's
backend, bound to a 24 h etcd lease), its subnet.env as flannel writes it, and its data path is set
up as flannel's backend sets it up: the kernel vxlan device flannel.1 with flannel's neighbour, FDB
and onlink route for each peer, a host-gw route, or (udp) a TUN and flannel's proxy
(integration.tools flannel-udp). Host 1 runs netd. Containers on both ends ping each other and
move a hashed TCP stream in each direction.
"""

from __future__ import annotations

import json

import pytest

from integration.cluster import Cluster, wait_for, wait_resyncs
from integration.test_udp import stats, tcp_hashed, tool, wait_listening

pytestmark = [pytest.mark.root, pytest.mark.etcd]

FLANNEL_SUBNET = "10.5.77.0/24"
FLANNEL_KEY = "10.5.77.0-24"
FLANNEL_MAC = "5a:8a:d8:d7:c2:ed"


def flannel_value(backend: str, public_ip: str) -> str:
    """flannel's LeaseAttrs as Go's encoding/json writes them (pkg/lease/lease.go): PublicIP,
    PublicIPv6 (a nil pointer without omitempty: null), then BackendType and BackendData only when
    set; the udp backend sets PublicIP alone (pkg/backend/udp)."""
    head = f'{{"PublicIP":"{public_ip}","PublicIPv6":null'
    if backend == "udp":
        return head + "}"
    if backend == "host-gw":
        return head + ',"BackendType":"host-gw"}'
    return head + f',"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{FLANNEL_MAC}"}}}}'


def write_flannel_lease(c: Cluster, backend: str, public_ip: str) -> str:
    granted = c.etcdctl("lease", "grant", "86400")  # flannel's subnetTTL, 24 h
    lease_id = granted.split()[1]
    value = flannel_value(backend, public_ip)
    c.etcdctl("put", f"{c.etcd_prefix}/subnets/{FLANNEL_KEY}", value, f"--lease={lease_id}")
    return value


def flannel_subnet_env(c: Cluster, i: int, mtu: int) -> None:
    with open(c.subnet_file(i), "w") as fh:
        fh.write(f"FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.77.1/24\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n")


def netd_lease(c: Cluster, i: int) -> tuple[str, dict]:
    subnet = c.subnet(i)
    key = f"{c.etcd_prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}"
    return str(subnet), json.loads(c.etcdctl("get", key, "--print-value-only"))


@pytest.mark.parametrize("backend", ["udp", "vxlan", "host-gw"])
def test_netd_and_a_flannel_host_exchange_packets_both_ways(make_cluster, backend):
    c = make_cluster(2)
    c.set_config({"Network": "10.5.0.0/16", "Backend": {"Type": backend}})
    flannel_ip, netd_ip = c.host_ip(2), c.host_ip(1)
    stored = write_flannel_lease(c, backend, flannel_ip)
    c.start_netd(1)
    c.wait_ready(1)
    netd_subnet, netd_attrs = netd_lease(c, 1)
    c.exec(2, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    proxy = None
    if backend == "udp":  # flannel0 and flannel's proxy, routing to every lease whatever its BackendType
        proxy = tool(c.host(2).ns, "flannel-udp", "flannel0", "8285", f"{netd_subnet}={netd_ip}")
        wait_listening(proxy)
        c.exec(2, "ip", "addr", "add", "10.5.77.0/32", "dev", "flannel0")
        c.exec(2, "ip", "link", "set", "flannel0", "mtu", "1472", "up")
        c.exec(2, "ip", "route", "add", "10.5.0.0/16", "dev", "flannel0")
        flannel_subnet_env(c, 2, 1472)
    elif backend == "vxlan":  # flannel's vxlan: device flannel.1, per peer neighbour + FDB + onlink route
        c.exec(2, "ip", "link", "add", "flannel.1", "address", FLANNEL_MAC, "type", "vxlan", "id", "1",
               "local", flannel_ip, "dev", "eth0", "dstport", "8472", "nolearning")
        c.exec(2, "ip", "link", "set", "flannel.1", "mtu", "1450", "up")
        c.exec(2, "ip", "addr", "add", "10.5.77.0/32", "dev", "flannel.1")
        gw, mac = netd_subnet.split("/")[0], netd_attrs["BackendData"]["VtepMAC"]
        c.exec(2, "ip", "neigh", "replace", gw, "lladdr", mac, "dev", "flannel.1", "nud", "permanent")
        c.exec(2, "bridge", "fdb", "append", mac, "dev", "flannel.1", "dst", netd_ip)
        c.exec(2, "ip", "route", "add", netd_subnet, "via", gw, "dev", "flannel.1", "onlink")
        flannel_subnet_env(c, 2, 1450)
    else:  # flannel's host-gw: a route via the peer's PublicIP
        c.exec(2, "ip", "route", "add", netd_subnet, "via", netd_ip)
        flannel_subnet_env(c, 2, 1500)
    try:
        netd_box, flannel_box = c.add_container(1), c.add_container(2)
        wait_for(lambda: c.can_ping(netd_box, flannel_box.ip), 10, f"netd's container cannot reach {flannel_box.ip}")
        assert c.can_ping(flannel_box, netd_box.ip)
        tcp_hashed(netd_box, flannel_box, flannel_box.ip, 5, timeout=120)
        tcp_hashed(flannel_box, netd_box, netd_box.ip, 5, timeout=120)
        # netd read the lease as flannel wrote it and wrote nothing of its own into it
        assert c.etcdctl("get", f"{c.etcd_prefix}/subnets/{FLANNEL_KEY}", "--print-value-only").strip() == stored
        if backend == "udp":
            drops = stats(c, 1)["drops"]
            assert drops["rx/spoofed"] == 0 and drops["rx/no_route"] == 0, drops
        else:
            assert c.routes(1) == {FLANNEL_SUBNET}
    finally:
        if proxy is not None:
            proxy.kill()
            proxy.wait()


def test_a_bogus_lease_never_becomes_a_route_and_is_reported(make_cluster):
    """Keys for the whole network, a foreign network and our own subnet (item 3)."""
    c = make_cluster(2)
    c.set_config({"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}})
    c.start_netd(1)
    c.start_netd(2)
    c.wait_ready()
    own = str(c.subnet(1)).replace("/", "-") + "&fd00:9::-64"  # our subnet under another key form
    bogus = {"10.5.0.0-16": "outside_network", "192.168.77.0-24": "outside_network", own: "overlaps_own"}
    for key in bogus:
        c.etcdctl("put", f"{c.etcd_prefix}/subnets/{key}", '{"PublicIP":"10.250.0.99","BackendType":"host-gw"}')

    def rejected(i: int = 1) -> dict[str, float]:
        _, text = c.http_get(i, "/metrics")
        return {line.split('reason="')[1].split('"')[0]: float(line.split()[-1])
                for line in text.splitlines() if line.startswith("netd_leases_rejected_total{")}

    wait_for(lambda: rejected() == {"outside_network": 2.0, "overlaps_own": 1.0}, 10, lambda: rejected())
    assert c.routes(1) == {str(c.subnet(2))}  # the kernel: only the real peer
    # on host 2 the key for host 1's subnet is an intruder (host 1's key was created first): refused,
    # and host 1 stays its peer (one key written by anyone must not cut a host off from the others)
    wait_for(lambda: rejected(2) == {"outside_network": 2.0, "conflict": 1.0}, 10, lambda: rejected(2))
    assert c.routes(2) == {str(c.subnet(1))}
    log = c.netd_log(1)
    for key in bogus:
        assert log.count(f"lease not routed to: {key}:") == 1, key  # one warning each, not one per resync
    wait_resyncs(c, (1,))
    assert rejected() == {"outside_network": 2.0, "overlaps_own": 1.0}
    assert c.routes(1) == {str(c.subnet(2))}
    assert all(c.netd_log(1).count(f"lease not routed to: {key}:") == 1 for key in bogus)
    assert c.exec(1, "ip", "route", "get", "192.168.77.1", check=False).stdout.split()[2] == "10.250.0.254"
