"""Subnet choice: reuse, reservations, previous subnet, random window; seeded RNG."""

import ipaddress
import random

import pytest

from netd.core.allocate import (
    RANDOM_WINDOW,
    ChoiceKind,
    choose_subnet,
    free_subnets,
    iter_subnets,
    paired_ipv6_subnet,
)
from netd.errors import ConfigError, NoFreeSubnetError
from netd.model import Lease, LeaseAttrs, format_subnet_key, parse_lease_key, parse_network_config, parse_subnet_key

CFG = parse_network_config('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}')
ME = ipaddress.IPv4Address("192.0.2.1")
OTHER = ipaddress.IPv4Address("192.0.2.2")


def lease(subnet: str, ip=OTHER, lease_id=7, rev=1) -> Lease:
    return Lease(ipaddress.IPv4Network(subnet), LeaseAttrs(ip, "vxlan", {}), lease_id, rev)


def net(s: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(s)


cases = [
    # name, leases, previous, expected kind, expected subnet (None: any free)
    ("own lease is reused", [lease("10.5.9.0/24", ME)], None, ChoiceKind.REUSE, "10.5.9.0/24"),
    ("own reservation beats own lease", [lease("10.5.9.0/24", ME), lease("10.5.4.0/24", ME, lease_id=0)],
     None, ChoiceKind.RESERVATION, "10.5.4.0/24"),
    ("own lease matching previous first", [lease("10.5.9.0/24", ME), lease("10.5.3.0/24", ME)],
     net("10.5.9.0/24"), ChoiceKind.REUSE, "10.5.9.0/24"),
    ("previous subnet if free", [lease("10.5.1.0/24")], net("10.5.77.0/24"), ChoiceKind.PREVIOUS,
     "10.5.77.0/24"),
    ("previous subnet taken -> random", [lease("10.5.77.0/24")], net("10.5.77.0/24"), ChoiceKind.RANDOM, None),
    ("previous subnet out of range -> random", [], net("10.9.0.0/24"), ChoiceKind.RANDOM, None),
    ("other host's reservation is not reused", [lease("10.5.9.0/24", OTHER, lease_id=0)], None,
     ChoiceKind.RANDOM, None),
    ("own lease out of range is ignored", [lease("10.5.0.0/24", ME)], None, ChoiceKind.RANDOM, None),
]


@pytest.mark.parametrize("name,leases,previous,kind,subnet", cases, ids=[c[0] for c in cases])
def test_choose_subnet(name, leases, previous, kind, subnet):
    choice = choose_subnet(CFG, leases, ME, previous, random.Random(1))
    assert choice.kind is kind
    if subnet is not None:
        assert choice.subnet == net(subnet)
    else:
        assert choice.subnet not in {lease.subnet for lease in leases}
        assert CFG.subnet_min <= choice.subnet.network_address <= CFG.subnet_max


def test_random_choice_stays_in_first_window_of_free_subnets():
    taken = [lease(str(s)) for s in list(iter_subnets(CFG))[:50]]
    window = set(free_subnets(CFG, taken, RANDOM_WINDOW))
    rng = random.Random(42)
    picks = {choose_subnet(CFG, taken, ME, None, rng).subnet for _ in range(500)}
    assert picks <= window
    assert len(picks) > 50  # spread, so racing hosts rarely collide


def test_seeded_rng_is_deterministic():
    a = choose_subnet(CFG, [], ME, None, random.Random(7)).subnet
    b = choose_subnet(CFG, [], ME, None, random.Random(7)).subnet
    assert a == b


def test_full_range_is_a_clear_error():
    small = parse_network_config('{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.3.0"}')
    taken = [lease(str(s)) for s in iter_subnets(small)]
    with pytest.raises(NoFreeSubnetError, match=r"no free subnet: all 3 /24 subnets between SubnetMin 10.5.1.0"):
        choose_subnet(small, taken, ME, None, random.Random(0))


def test_subnet_keys_are_flannels():
    assert format_subnet_key(net("10.5.52.0/24")) == "10.5.52.0-24"
    assert parse_subnet_key("10.5.52.0-24") == net("10.5.52.0/24")
    with pytest.raises(ValueError):
        parse_subnet_key("10.5.52.0")


V6 = ipaddress.IPv6Network


@pytest.mark.parametrize("name, v4, v6", [
    ("10.5.52.0-24", "10.5.52.0/24", None),
    ("10.5.52.0-24&fd00:0:0:34::-64", "10.5.52.0/24", "fd00:0:0:34::/64"),  # flannel's dual stack
    ("10.5.52.0-24&fd00::-48", "10.5.52.0/24", "fd00::/48"),
])
def test_dual_stack_keys_are_flannels(name, v4, v6):
    ipv6 = V6(v6) if v6 else None
    assert parse_lease_key(name) == (net(v4), ipv6)
    assert parse_subnet_key(name) == net(v4)  # watch events carry the IPv4 subnet
    assert format_subnet_key(net(v4), ipv6) == name
    assert Lease(net(v4), LeaseAttrs(OTHER), ipv6_subnet=ipv6).key == name


@pytest.mark.parametrize("name", [
    "10.5.52.0-24&", "10.5.52.0-24&fd00::", "10.5.52.0-24&fd00::-129", "10.5.52.0-24&fd00::1-64",
    "10.5.52.1-24", "10.5.52.0-24&fd00::-64x", "x10.5.52.0-24", "10.5.52.0-33",
])
def test_malformed_keys_are_refused(name):
    with pytest.raises(ValueError, match="not a subnet key"):
        parse_lease_key(name)


def test_a_dual_stack_hosts_ipv4_subnet_is_taken():
    """flannel's dual-stack hosts name their keys ``<v4>&<v6>``: their IPv4 subnet is held."""
    dual = Lease(net("10.5.1.0/24"), LeaseAttrs(OTHER), 7, 1, V6("fd00:0:0:1::/64"))
    assert net("10.5.1.0/24") not in free_subnets(CFG, [dual], 3)
    assert choose_subnet(CFG, [dual], ME, net("10.5.1.0/24"), random.Random(0)).subnet != net("10.5.1.0/24")


DUAL = parse_network_config(
    '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"udp"}}')


def lease6(subnet: str, v6: str | None, ip=OTHER, lease_id=7) -> Lease:
    return Lease(net(subnet), LeaseAttrs(ip, "udp", {}), lease_id, 1, V6(v6) if v6 else None)


dual_cases = [
    # name, leases, previous (v4, v6), expected kind, subnet, ipv6 subnet (None: any free one)
    ("own dual lease is reused", [lease6("10.5.9.0/24", "fd00:5:0:9::/64", ME)], (None, None),
     ChoiceKind.REUSE, "10.5.9.0/24", "fd00:5:0:9::/64"),
    ("own dual lease beats own IPv4-only lease", [lease6("10.5.3.0/24", None, ME),
                                                  lease6("10.5.9.0/24", "fd00:5:0:9::/64", ME)],
     (None, None), ChoiceKind.REUSE, "10.5.9.0/24", "fd00:5:0:9::/64"),
    ("own IPv4-only lease is upgraded to its paired IPv6 subnet", [lease6("10.5.9.0/24", None, ME)],
     (None, "fd00:5:0:77::/64"), ChoiceKind.UPGRADE, "10.5.9.0/24", "fd00:5:0:9::/64"),
    ("upgrade: the pair is held by another host -> previous", [lease6("10.5.9.0/24", None, ME),
                                                                lease6("10.5.200.0/24", "fd00:5:0:9::/64")],
     (None, "fd00:5:0:77::/64"), ChoiceKind.UPGRADE, "10.5.9.0/24", "fd00:5:0:77::/64"),
    ("own lease with an out-of-range IPv6 subnet is upgraded", [lease6("10.5.9.0/24", "fd00:6:0:1::/64", ME)],
     (None, None), ChoiceKind.UPGRADE, "10.5.9.0/24", None),
    ("previous IPv4 subnet, with its pair (the n-th IPv6 subnet for the n-th IPv4 one)",
     [lease6("10.5.1.0/24", "fd00:5:0:1::/64")], ("10.5.77.0/24", "fd00:5:0:77::/64"), ChoiceKind.PREVIOUS,
     "10.5.77.0/24", "fd00:5:0:4d::/64"),
    ("pair held by a flannel host -> previous IPv6 subnet", [lease6("10.5.1.0/24", "fd00:5:0:4d::/64")],
     ("10.5.77.0/24", "fd00:5:0:77::/64"), ChoiceKind.PREVIOUS, "10.5.77.0/24", "fd00:5:0:77::/64"),
    ("previous IPv6 subnet held by another host -> another", [lease6("10.5.1.0/24", "fd00:5:0:77::/64")],
     ("10.5.77.0/24", "fd00:5:0:77::/64"), ChoiceKind.PREVIOUS, "10.5.77.0/24", None),
    ("fresh pair", [lease6("10.5.1.0/24", "fd00:5:0:1::/64")], (None, None), ChoiceKind.RANDOM, None, None),
]


@pytest.mark.parametrize("name,leases,previous,kind,subnet,v6", dual_cases, ids=[c[0] for c in dual_cases])
def test_choose_dual_stack_subnets(name, leases, previous, kind, subnet, v6):
    prev4, prev6 = (net(previous[0]) if previous[0] else None), (V6(previous[1]) if previous[1] else None)
    choice = choose_subnet(DUAL, leases, ME, prev4, random.Random(1), prev6)
    assert choice.kind is kind
    if subnet is not None:
        assert choice.subnet == net(subnet)
    assert choice.ipv6_subnet is not None and choice.ipv6_subnet.prefixlen == 64
    if v6 is not None:
        assert choice.ipv6_subnet == V6(v6)
    else:
        assert choice.ipv6_subnet not in {x.ipv6_subnet for x in leases}
        assert DUAL.ipv6 is not None and DUAL.ipv6.subnet_min <= choice.ipv6_subnet.network_address


def test_pairs_are_distinct_and_in_range():
    pairs = [paired_ipv6_subnet(DUAL, s) for s in iter_subnets(DUAL)]
    assert pairs[0] == V6("fd00:5:0:1::/64") and pairs[-1] == V6("fd00:5:0:ff::/64")
    assert len(set(pairs)) == len(pairs) == 255
    small = parse_network_config('{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/60"}')
    assert paired_ipv6_subnet(small, net("10.5.15.0/24")) == V6("fd00:5:0:f::/64")
    assert paired_ipv6_subnet(small, net("10.5.16.0/24")) is None  # past IPv6SubnetMax: a free one is chosen


def test_ipv6_subnets_of_other_hosts_are_never_taken():
    held = [lease6(f"10.5.{i}.0/24", f"fd00:5:0:{i:x}::/64") for i in range(1, 101)]
    picks = {choose_subnet(DUAL, held, ME, None, random.Random(s)).ipv6_subnet for s in range(200)}
    assert not picks & {x.ipv6_subnet for x in held}


def test_a_reservation_without_ipv6_subnet_is_the_operators_to_fix():
    with pytest.raises(ConfigError, match=r"EnableIPv6: the reservation 10.5.4.0-24 for 192.0.2.1 has no IPv6 "
                                          r"subnet in fd00:5::/48.*10.5.4.0-24&<IPv6 subnet, e.g. fd00:5:0:1::>-64"):
        choose_subnet(DUAL, [lease6("10.5.4.0/24", None, ME, lease_id=0)], ME, None, random.Random(0))


def test_a_full_ipv6_range_is_a_clear_error():
    small = parse_network_config('{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/62"}')
    held = [lease6("10.5.1.0/24", "fd00:5:0:1::/64"), lease6("10.5.2.0/24", "fd00:5:0:2::/64"),
            lease6("10.5.3.0/24", "fd00:5:0:3::/64")]
    with pytest.raises(NoFreeSubnetError, match="no free IPv6 subnet: all /64 subnets between IPv6SubnetMin"):
        choose_subnet(small, held, ME, None, random.Random(0))
