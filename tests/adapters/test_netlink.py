"""The vxlan and host-gw backends against a real kernel, in a throw-away network namespace."""

from __future__ import annotations

import ipaddress
import subprocess

from pyroute2 import IPRoute

from netd.adapters.netlink import HostGwBackend, VxlanBackend, find_underlay, vtep_mac
from netd.core.dataplane import desired_state, plan_dataplane
from netd.model import Lease, LeaseAttrs, parse_network_config

A = ipaddress.IPv4Address


def lease(subnet: str, ip: str, btype: str, mac: str | None = None) -> Lease:
    data = {"VNI": 1, "VtepMAC": mac} if mac else {}
    return Lease(ipaddress.IPv4Network(subnet), LeaseAttrs(A(ip), btype, data), 1, 1)


def test_vxlan_backend_converges_and_repairs(ns):
    cfg = parse_network_config('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}')
    ipr = IPRoute(netns=ns)
    underlay = find_underlay(ipr, None, None)
    assert (underlay.ifname, str(underlay.address)) == ("eth0", "10.250.0.1")
    backend = VxlanBackend(cfg, underlay, ipr)
    try:
        assert backend.backend_data() == {"VNI": 1, "VtepMAC": vtep_mac(A("10.250.0.1"), 1)}
        assert backend.mtu() == 1450
        own = lease("10.5.1.0/24", "10.250.0.1", "vxlan", backend.mac)
        backend.configure_own(own)
        peers = [own, lease("10.5.2.0/24", "10.250.0.2", "vxlan", "0e:00:00:00:00:02"),
                 lease("10.5.3.0/24", "10.250.0.3", "vxlan", "0e:00:00:00:00:03")]
        desired, _ = desired_state(cfg, "vxlan", own, peers)
        assert backend.apply(plan_dataplane(desired, backend.observe())) == []
        assert backend.observe() == desired
        assert plan_dataplane(desired, backend.observe()).changes == 0
        addr = subprocess.run(["ip", "-n", ns, "-br", "addr", "show", "flannel.1"], capture_output=True,
                              text=True).stdout
        assert "10.5.1.0/32" in addr
        # a peer leaves: everything of it goes, nothing else is touched
        desired2, _ = desired_state(cfg, "vxlan", own, peers[:2])
        plan = plan_dataplane(desired2, backend.observe())
        assert (len(plan.del_routes), len(plan.del_neighbours), len(plan.del_fdb)) == (1, 1, 1)
        assert backend.apply(plan) == []
        assert backend.observe() == desired2
        # a device with the wrong port is replaced, keeping the derived MAC
        subprocess.run(["ip", "-n", ns, "link", "del", "flannel.1"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local",
                        "10.250.0.1", "dstport", "4789"], check=True)
        again = VxlanBackend(cfg, underlay, ipr)
        assert again.mac == backend.mac
        info = subprocess.run(["ip", "-n", ns, "-d", "link", "show", "flannel.1"], capture_output=True,
                              text=True).stdout
        assert "dstport 8472" in info
    finally:
        ipr.close()


def test_host_gw_backend_routes_via_public_ip(ns):
    cfg = parse_network_config('{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}')
    ipr = IPRoute(netns=ns)
    backend = HostGwBackend(cfg, find_underlay(ipr, "eth0", None), ipr)
    try:
        own = lease("10.5.1.0/24", "10.250.0.1", "host-gw")
        desired, _ = desired_state(cfg, "host-gw", own, [own, lease("10.5.2.0/24", "10.250.0.2", "host-gw")])
        assert backend.apply(plan_dataplane(desired, backend.observe())) == []
        routes = subprocess.run(["ip", "-n", ns, "route", "show", "proto", "101"], capture_output=True,
                                text=True).stdout
        assert routes.strip() == "10.5.2.0/24 via 10.250.0.2 dev eth0"
        # a foreign route to the same kind of destination is never ours to delete
        subprocess.run(["ip", "-n", ns, "route", "add", "10.5.9.0/24", "via", "10.250.0.9"], check=True)
        assert plan_dataplane(desired, backend.observe()).changes == 0
    finally:
        ipr.close()
