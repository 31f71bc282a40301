"""Desired routes per backend and the minimal diff."""

import ipaddress

from netd.core.dataplane import (
    DataplaneState,
    FdbEntry,
    Neighbour,
    Route,
    desired_state,
    plan_dataplane,
)
from netd.model import Lease, LeaseAttrs

A = ipaddress.IPv4Address


def lease(subnet, ip, btype="vxlan", mac="0e:00:00:00:00:02"):
    data = {"VNI": 1, "VtepMAC": mac} if btype == "vxlan" and mac else {}
    return Lease(ipaddress.IPv4Network(subnet), LeaseAttrs(A(ip), btype, data), 1, 1)


OWN = lease("10.5.1.0/24", "192.0.2.1", mac="0e:00:00:00:00:01")


def test_vxlan_desired_state_is_flannels():
    peers = [OWN, lease("10.5.2.0/24", "192.0.2.2"), lease("10.5.3.0/24", "192.0.2.3", mac="0E:00:00:00:00:03")]
    state, skipped = desired_state("vxlan", OWN, peers)
    assert skipped == ()
    assert state.routes == {
        Route(ipaddress.IPv4Network("10.5.2.0/24"), A("10.5.2.0"), True),
        Route(ipaddress.IPv4Network("10.5.3.0/24"), A("10.5.3.0"), True),
    }
    assert state.neighbours == {Neighbour(A("10.5.2.0"), "0e:00:00:00:00:02"),
                                Neighbour(A("10.5.3.0"), "0e:00:00:00:00:03")}
    assert state.fdb == {FdbEntry("0e:00:00:00:00:02", A("192.0.2.2")), FdbEntry("0e:00:00:00:00:03", A("192.0.2.3"))}


def test_other_backends_and_broken_peers_are_skipped():
    peers = [lease("10.5.2.0/24", "192.0.2.2", btype="host-gw"), lease("10.5.4.0/24", "192.0.2.4", mac="zz")]
    state, skipped = desired_state("vxlan", OWN, peers)
    assert state == DataplaneState()
    assert skipped == ("10.5.4.0-24: BackendData.VtepMAC missing or malformed",)


def test_host_gw_routes_via_public_ip():
    own = lease("10.5.1.0/24", "192.0.2.1", btype="host-gw")
    state, _ = desired_state("host-gw", own, [own, lease("10.5.2.0/24", "192.0.2.2", btype="host-gw")])
    assert state.routes == {Route(ipaddress.IPv4Network("10.5.2.0/24"), A("192.0.2.2"))}


def test_plan_adds_missing_deletes_stale_and_replaces_changed_without_a_gap():
    r = lambda s, gw: Route(ipaddress.IPv4Network(s), A(gw), True)  # noqa: E731
    desired = DataplaneState(
        routes=frozenset({r("10.5.2.0/24", "10.5.2.0"), r("10.5.3.0/24", "10.5.3.0")}),
        neighbours=frozenset({Neighbour(A("10.5.2.0"), "0e:00:00:00:00:22")}),
        fdb=frozenset({FdbEntry("0e:00:00:00:00:22", A("192.0.2.2"))}),
    )
    actual = DataplaneState(
        routes=frozenset({r("10.5.2.0/24", "10.5.2.0"), r("10.5.9.0/24", "10.5.9.0")}),
        neighbours=frozenset({Neighbour(A("10.5.2.0"), "0e:00:00:00:00:02"), Neighbour(A("10.5.9.0"), "0e:09")}),
        fdb=frozenset({FdbEntry("0e:00:00:00:00:02", A("192.0.2.2"))}),
    )
    plan = plan_dataplane(desired, actual)
    assert plan.add_routes == (r("10.5.3.0/24", "10.5.3.0"),)
    assert plan.del_routes == (r("10.5.9.0/24", "10.5.9.0"),)
    # the MAC change of 10.5.2.0 is a replace, not a delete of that IP
    assert plan.add_neighbours == (Neighbour(A("10.5.2.0"), "0e:00:00:00:00:22"),)
    assert plan.del_neighbours == (Neighbour(A("10.5.9.0"), "0e:09"),)
    assert plan.add_fdb == (FdbEntry("0e:00:00:00:00:22", A("192.0.2.2")),)
    assert plan.del_fdb == (FdbEntry("0e:00:00:00:00:02", A("192.0.2.2")),)
    assert plan.changes == 6
    assert plan_dataplane(desired, desired).changes == 0


def dual(subnet, v6, ip, btype="udp"):
    return Lease(ipaddress.IPv4Network(subnet), LeaseAttrs(A(ip), btype, {}), 1, 1,
                 ipaddress.IPv6Network(v6) if v6 else None)


def test_udp_dual_stack_routes_each_peers_ipv6_subnet_to_its_public_ip():
    own = dual("10.5.1.0/24", "fd00:5:0:1::/64", "192.0.2.1")
    peers = [own, dual("10.5.2.0/24", "fd00:5:0:2::/64", "192.0.2.2"), dual("10.5.3.0/24", None, "192.0.2.3")]
    state, skipped = desired_state("udp", own, peers)
    assert skipped == ()
    assert state.routes == {
        Route(ipaddress.IPv4Network("10.5.2.0/24"), A("192.0.2.2")),
        Route(ipaddress.IPv6Network("fd00:5:0:2::/64"), A("192.0.2.2")),  # same PublicIP: anti-spoofing too
        Route(ipaddress.IPv4Network("10.5.3.0/24"), A("192.0.2.3")),  # an IPv4-only peer
    }
    v4_only_own = dual("10.5.1.0/24", None, "192.0.2.1")  # we carry no IPv6: no IPv6 routes
    assert all(r.dst.version == 4 for r in desired_state("udp", v4_only_own, peers)[0].routes)
    plan = plan_dataplane(state, DataplaneState())  # both families sort together
    assert [str(r.dst) for r in plan.add_routes] == ["10.5.2.0/24", "10.5.3.0/24", "fd00:5:0:2::/64"]
