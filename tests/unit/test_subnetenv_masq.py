import ipaddress

from netd.core.masq import render_masq_ruleset, ruleset_digest
from netd.core.subnetenv import parse_subnet_env, previous_ipv6_subnet, previous_subnet, render_subnet_env

NET = ipaddress.IPv4Network("10.5.0.0/16")
SUB = ipaddress.IPv4Network("10.5.52.0/24")


def test_subnet_env_is_flannels_format():
    text = render_subnet_env(NET, SUB, 1450, True)
    assert text == ("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\n"
                    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    assert parse_subnet_env(text)["FLANNEL_MTU"] == "1450"
    assert previous_subnet(text) == SUB


def test_dual_stack_subnet_env_is_flannels_format():
    v6net, v6sub = ipaddress.IPv6Network("fd00:5::/48"), ipaddress.IPv6Network("fd00:5:0:34::/64")
    text = render_subnet_env(NET, SUB, 1472, False, (v6net, v6sub))
    assert text == ("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\n"
                    "FLANNEL_IPV6_NETWORK=fd00:5::/48\nFLANNEL_IPV6_SUBNET=fd00:5:0:34::1/64\n"
                    "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
    assert (previous_subnet(text), previous_ipv6_subnet(text)) == (SUB, v6sub)
    assert previous_ipv6_subnet(render_subnet_env(NET, SUB, 1450, True)) is None


def test_previous_subnet_of_garbage_is_none():
    assert previous_subnet("") is None
    assert previous_subnet("FLANNEL_SUBNET=nonsense\n") is None
    assert previous_ipv6_subnet("FLANNEL_IPV6_SUBNET=10.5.1.1/24\n") is None


def test_masq_rules_have_flannels_meaning_and_a_stable_digest():
    script = render_masq_ruleset(NET, SUB)
    assert "ip saddr 10.5.0.0/16 ip daddr 10.5.0.0/16 return" in script
    assert "ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade" in script
    assert "ip saddr != 10.5.0.0/16 ip daddr 10.5.52.0/24 return" in script
    assert "ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade" in script
    assert ruleset_digest(script) == ruleset_digest(render_masq_ruleset(NET, SUB))
    assert ruleset_digest(script) != ruleset_digest(render_masq_ruleset(NET, ipaddress.IPv4Network("10.5.53.0/24")))


def test_dual_stack_masq_rules_add_an_ip6_table_in_the_same_transaction():
    v6 = (ipaddress.IPv6Network("fd00:5::/48"), ipaddress.IPv6Network("fd00:5:0:34::/64"))
    script = render_masq_ruleset(NET, SUB, v6)
    assert "ip6 saddr fd00:5::/48 ip6 daddr fd00:5::/48 return" in script
    assert "ip6 saddr fd00:5::/48 ip6 daddr != ff00::/8 masquerade" in script
    assert "ip6 saddr != fd00:5::/48 ip6 daddr fd00:5:0:34::/64 return" in script
    assert "ip6 saddr != fd00:5::/48 ip6 daddr fd00:5::/48 masquerade" in script
    assert script.count(f'comment "netd ip-masq {ruleset_digest(script)}"') == 2  # both tables carry it
    assert ruleset_digest(script) != ruleset_digest(render_masq_ruleset(NET, SUB))
    assert "delete table ip6 netd" in render_masq_ruleset(NET, SUB)  # turning IPv6 off removes its rules
    assert "table ip6 netd {\n" not in render_masq_ruleset(NET, SUB)


import pytest  # noqa: E402

from netd.core.subnetenv import overlay_of, units_side  # noqa: E402


@pytest.mark.parametrize("text,want", [
    ("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.9.1/24\nFLANNEL_MTU=1450\n", ("10.5.9.1/24", 1450)),
    ("FLANNEL_SUBNET=10.5.9.1/24\n", ("10.5.9.1/24", 1450)),          # flannel's default MTU then
    ("FLANNEL_SUBNET=10.5.9.1/24\nFLANNEL_MTU=8951\n", ("10.5.9.1/24", 8951)),
    ("FLANNEL_SUBNET=10.5.9.1/24\nFLANNEL_MTU=575\n", None),           # no IPv4 link has that
    ("FLANNEL_SUBNET=10.5.9.1/24\nFLANNEL_MTU=65536\n", None),
    ("FLANNEL_SUBNET=10.5.9.1/24\nFLANNEL_MTU=big\n", None),
    ("FLANNEL_SUBNET=10.5.9.1/31\n", None),                            # no room for units
    ("FLANNEL_SUBNET=bad\n", None),
    ("", None),                                                         # before the lease
])
def test_overlay_of_subnet_env(text, want):
    import ipaddress

    got = overlay_of(text)
    assert got == (None if want is None else (ipaddress.IPv4Interface(want[0]), want[1]))


@pytest.mark.parametrize("subnet,want", [
    ("10.5.9.1/24", "10.5.9.129/25"),
    ("10.5.8.1/23", "10.5.9.1/24"),
    ("10.5.9.1/29", "10.5.9.5/30"),
    ("10.5.9.1/30", "10.5.9.1/30"),  # too small to halve: the whole
])
def test_units_take_the_upper_half_of_the_host_subnet(subnet, want):
    import ipaddress

    assert units_side((ipaddress.IPv4Interface(subnet), 1400)) == (ipaddress.IPv4Interface(want), 1400)
    assert units_side(None) is None
