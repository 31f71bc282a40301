"""Desired routes per backend and the minimal diff."""

import dataclasses
import ipaddress

import pytest

from netd.core.dataplane import (
    DataplaneState,
    FdbEntry,
    Neighbour,
    Route,
    desired_state,
    peer_backend_matches,
    plan_dataplane,
    select_peers,
)
from netd.model import Lease, LeaseAttrs, parse_network_config

A = ipaddress.IPv4Address
CFG = parse_network_config('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}')
DUAL = parse_network_config('{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48",'
                            '"Backend":{"Type":"udp"}}')


def lease(subnet, ip, btype="vxlan", mac="0e:00:00:00:00:02"):
    data = {"VNI": 1, "VtepMAC": mac} if btype == "vxlan" and mac else {}
    return Lease(ipaddress.IPv4Network(subnet), LeaseAttrs(A(ip), btype, data), 1, 1)


OWN = lease("10.5.1.0/24", "192.0.2.1", mac="0e:00:00:00:00:01")


def test_vxlan_desired_state_is_flannels():
    peers = [OWN, lease("10.5.2.0/24", "192.0.2.2"), lease("10.5.3.0/24", "192.0.2.3", mac="0E:00:00:00:00:03")]
    state, skipped = desired_state(CFG, "vxlan", OWN, peers)
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
    state, skipped = desired_state(CFG, "vxlan", OWN, peers)
    assert state == DataplaneState()
    assert [str(s) for s in skipped] == ["10.5.4.0-24: BackendData.VtepMAC missing or malformed"]
    assert [s.reason for s in skipped] == ["bad_backend_data"]


def test_host_gw_routes_via_public_ip():
    own = lease("10.5.1.0/24", "192.0.2.1", btype="host-gw")
    state, _ = desired_state(CFG, "host-gw", own, [own, lease("10.5.2.0/24", "192.0.2.2", btype="host-gw")])
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
    state, skipped = desired_state(DUAL, "udp", own, peers)
    assert skipped == ()
    assert state.routes == {
        Route(ipaddress.IPv4Network("10.5.2.0/24"), A("192.0.2.2")),
        Route(ipaddress.IPv6Network("fd00:5:0:2::/64"), A("192.0.2.2")),  # same PublicIP: anti-spoofing too
        Route(ipaddress.IPv4Network("10.5.3.0/24"), A("192.0.2.3")),  # an IPv4-only peer
    }
    v4_only_own = dual("10.5.1.0/24", None, "192.0.2.1")  # we carry no IPv6: no IPv6 routes
    assert all(r.dst.version == 4 for r in desired_state(DUAL, "udp", v4_only_own, peers)[0].routes)
    plan = plan_dataplane(state, DataplaneState())  # both families sort together
    assert [str(r.dst) for r in plan.add_routes] == ["10.5.2.0/24", "10.5.3.0/24", "fd00:5:0:2::/64"]


# -- which leases are peers (select_peers) -------------------------------------------------------
# Values byte for byte as flannel's LeaseAttrs marshal (pkg/lease: PublicIP, PublicIPv6 with no
# omitempty, then BackendType/BackendData with omitempty); flannel's udp backend sets PublicIP only.
FLANNEL_UDP = b'{"PublicIP":"192.0.2.7","PublicIPv6":null}'
FLANNEL_VXLAN = b'{"PublicIP":"192.0.2.8","PublicIPv6":null,"BackendType":"vxlan",' \
                b'"BackendData":{"VNI":1,"VtepMAC":"5a:8a:d8:d7:c2:ed"}}'
FLANNEL_HOSTGW = b'{"PublicIP":"192.0.2.9","PublicIPv6":null,"BackendType":"host-gw"}'
#: an older flannel's udp lease (LeaseAttrs before PublicIPv6), as the issue quotes it
FLANNEL_UDP_OLD = b'{"PublicIP":"192.0.2.7"}'
UDP4 = parse_network_config('{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}')
HOSTGW = parse_network_config('{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}')


def flannel_lease(key: str, value: bytes) -> Lease:
    from netd.model import parse_lease_key

    v4, v6 = parse_lease_key(key)
    return Lease(v4, LeaseAttrs.from_json(value), 7, 3, v6)


@pytest.mark.parametrize("cfg,backend,value,routed", [
    (UDP4, "udp", FLANNEL_UDP, True),        # flannel udp: no BackendType, a udp peer all the same
    (UDP4, "udp", FLANNEL_UDP_OLD, True),
    (UDP4, "udp", FLANNEL_VXLAN, False),
    (UDP4, "udp", FLANNEL_HOSTGW, False),
    (CFG, "vxlan", FLANNEL_VXLAN, True),
    (CFG, "vxlan", FLANNEL_UDP, False),     # as flannel's vxlan: only BackendType vxlan
    (HOSTGW, "host-gw", FLANNEL_HOSTGW, True),
    (HOSTGW, "host-gw", FLANNEL_UDP, False),
])
def test_leases_as_flannel_writes_them_are_peers_of_their_own_backend(cfg, backend, value, routed):
    own = lease("10.5.1.0/24", "192.0.2.1", btype=backend)
    peer = flannel_lease("10.5.9.0-24", value)
    state, skipped = desired_state(cfg, backend, own, [own, peer])
    assert skipped == ()
    assert {str(r.dst) for r in state.routes} == ({"10.5.9.0/24"} if routed else set())
    if routed and backend == "vxlan":
        assert state.fdb == {FdbEntry("5a:8a:d8:d7:c2:ed", A("192.0.2.8"))}
    elif routed:
        assert state.routes == {Route(ipaddress.IPv4Network("10.5.9.0/24"), peer.attrs.public_ip)}


def test_a_dual_stack_flannel_lease_is_a_peer_of_both_families():
    """Key and value as a flannel dual-stack udp host writes them (PublicIPv6 set, no BackendType)."""
    own = dual("10.5.1.0/24", "fd00:5:0:1::/64", "192.0.2.1")
    peer = flannel_lease("10.5.9.0-24&fd00:5:0:9::-64", b'{"PublicIP":"192.0.2.7","PublicIPv6":"2001:db8::7"}')
    state, skipped = desired_state(DUAL, "udp", own, [own, peer])
    assert skipped == ()
    assert state.routes == {Route(ipaddress.IPv4Network("10.5.9.0/24"), A("192.0.2.7")),
                            Route(ipaddress.IPv6Network("fd00:5:0:9::/64"), A("192.0.2.7"))}


def test_peer_backend_matches():
    assert peer_backend_matches("udp", "udp") and peer_backend_matches("udp", "")
    assert not peer_backend_matches("vxlan", "") and not peer_backend_matches("host-gw", "")
    assert not peer_backend_matches("udp", "vxlan") and peer_backend_matches("vxlan", "vxlan")


OWN_UDP = lease("10.5.1.0/24", "192.0.2.1", btype="udp")


@pytest.mark.parametrize("key,reason", [
    ("10.5.0.0-16", "outside_network"),      # the whole network
    ("10.5.0.0-17", "outside_network"),
    ("192.168.77.0-24", "outside_network"),  # outside it
    ("10.4.255.0-24", "outside_network"),    # just below
    ("10.6.0.0-24", "outside_network"),      # just above
    ("10.5.9.0-25", "outside_network"),      # inside, but not a /SubnetLen
    ("10.5.8.0-23", "outside_network"),
    ("10.5.1.0-24", "overlaps_own"),         # another host claims our subnet
])
def test_leases_that_cannot_be_ones_are_never_routed(key, reason):
    bad = flannel_lease(key, b'{"PublicIP":"192.0.2.66","BackendType":"udp"}')
    good = flannel_lease("10.5.2.0-24", b'{"PublicIP":"192.0.2.2","BackendType":"udp"}')
    state, skipped = desired_state(UDP4, "udp", OWN_UDP, [OWN_UDP, bad, good])
    assert state.routes == {Route(ipaddress.IPv4Network("10.5.2.0/24"), A("192.0.2.2"))}
    assert [(s.key, s.reason) for s in skipped] == [(key, reason)]


@pytest.mark.parametrize("key", ["10.5.0.0-24", "10.5.255.0-24"])  # the edges of the network are fine
def test_the_first_and_last_subnet_of_the_network_are_peers(key):
    peer = flannel_lease(key, b'{"PublicIP":"192.0.2.2","BackendType":"udp"}')
    state, skipped = desired_state(UDP4, "udp", OWN_UDP, [OWN_UDP, peer])
    assert skipped == () and {str(r.dst) for r in state.routes} == {key.replace("-", "/")}


def dual_created(subnet, v6, ip, created):
    return dataclasses.replace(dual(subnet, v6, ip), create_revision=created)


def test_of_two_hosts_claiming_one_subnet_the_key_created_first_holds_it_one_host_with_two_keys_is_one_peer():
    own = dual("10.5.1.0/24", "fd00:5:0:1::/64", "192.0.2.1")
    a = dual_created("10.5.9.0/24", None, "192.0.2.2", 10)
    b = dual_created("10.5.9.0/24", "fd00:5:0:9::/64", "192.0.2.3", 20)  # a's IPv4 subnet, later, a dual-stack key
    c = dual_created("10.5.7.0/24", "fd00:5:0:7::/64", "192.0.2.4", 31)
    d = dual_created("10.5.8.0/24", "fd00:5:0:7::/64", "192.0.2.5", 30)  # c's IPv6 subnet, earlier
    e_old = dual_created("10.5.6.0/24", None, "192.0.2.6", 5)
    e_new = dual_created("10.5.6.0/24", "fd00:5:0:6::/64", "192.0.2.6", 6)
    for order in (1, -1):  # whatever order the keys are read in
        peers, skipped = select_peers(DUAL, own, [own, a, b, c, d, e_old, e_new][::order], "udp")
        assert sorted(peers, key=lambda p: p.subnet) == [e_new, d, a]  # the renamed host once: its dual-stack key
        assert {(s.key, s.reason) for s in skipped} == {(b.key, "conflict"), (c.key, "conflict")}
        why = {s.key: s.detail for s in skipped}
        assert why[b.key] == "10.5.9.0/24 is held by 192.0.2.2 (10.5.9.0-24, created first)"
        assert why[c.key] == "fd00:5:0:7::/64 is held by 192.0.2.5 (10.5.8.0-24&fd00:5:0:7::-64, created first)"


def test_one_key_written_for_a_held_subnet_does_not_cut_its_host_off():
    """The intruder's key is refused on every host; the real holder stays everyone's peer."""
    real = dataclasses.replace(flannel_lease("10.5.2.0-24", b'{"PublicIP":"192.0.2.2","BackendType":"udp"}'),
                               create_revision=40)
    intruder = dataclasses.replace(flannel_lease("10.5.2.0-24&fd00:9::-64", b'{"PublicIP":"192.0.2.66"}'),
                                   create_revision=41)
    for own in (OWN_UDP, lease("10.5.3.0/24", "192.0.2.3", btype="udp")):
        state, skipped = desired_state(UDP4, "udp", own, [own, real, intruder])
        assert state.routes == {Route(ipaddress.IPv4Network("10.5.2.0/24"), A("192.0.2.2"))}
        assert [(s.key, s.reason) for s in skipped] == [(intruder.key, "conflict")]


@pytest.mark.parametrize("ip", ["10.5.9.1", "10.5.200.7", "10.5.0.0"])
def test_a_public_ip_inside_the_overlay_network_is_refused(ip):
    bad = flannel_lease("10.5.9.0-24", f'{{"PublicIP":"{ip}"}}'.encode())
    state, skipped = desired_state(UDP4, "udp", OWN_UDP, [OWN_UDP, bad])
    assert state.routes == frozenset()
    assert [(s.key, s.reason) for s in skipped] == [("10.5.9.0-24", "bad_public_ip")]
    assert "inside the overlay's Network 10.5.0.0/16" in skipped[0].detail


@pytest.mark.parametrize("v6,reason", [
    ("fd00:6:0:9::/64", "outside_network"),   # outside the IPv6Network
    ("fd00:5::/48", "outside_network"),       # the whole IPv6Network
    ("fd00:5:0:9::/80", "outside_network"),   # not a /IPv6SubnetLen
    ("fd00:5:0:1::/64", "overlaps_own"),      # our own IPv6 subnet
])
def test_ipv6_subnets_are_checked_too_on_dual_stack(v6, reason):
    own = dual("10.5.1.0/24", "fd00:5:0:1::/64", "192.0.2.1")
    bad = dual("10.5.9.0/24", v6, "192.0.2.9")
    state, skipped = desired_state(DUAL, "udp", own, [own, bad])
    assert state.routes == frozenset() and [(s.key, s.reason) for s in skipped] == [(bad.key, reason)]
    v4_only_own = dual("10.5.1.0/24", None, "192.0.2.1")  # not dual stack here: the IPv6 half is not ours to judge
    state, skipped = desired_state(DUAL, "udp", v4_only_own, [v4_only_own, bad])
    assert skipped == () and {str(r.dst) for r in state.routes} == {"10.5.9.0/24"}
