"""flannel's config rules, table-driven."""

import ipaddress
import json

import pytest

from netd.errors import ConfigError
from netd.model import parse_network_config

ok_cases = [
    # raw, (subnet_len, subnet_min, subnet_max, backend, port, vni)
    ('{"Network":"10.5.0.0/16"}', (24, "10.5.1.0", "10.5.255.0", "udp", 8285, 0)),
    ('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}', (24, "10.5.1.0", "10.5.255.0", "vxlan", 8472, 1)),
    ('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":42,"Port":4789}}',
     (24, "10.5.1.0", "10.5.255.0", "vxlan", 4789, 42)),
    ('{"Network":"10.0.0.0/8","SubnetLen":20,"Backend":{"Type":"host-gw"}}',
     (20, "10.0.16.0", "10.255.240.0", "host-gw", 0, 0)),
    ('{"Network":"10.5.0.0/23"}', (25, "10.5.0.128", "10.5.1.128", "udp", 8285, 0)),
    ('{"Network":"10.5.0.0/28"}', (30, "10.5.0.4", "10.5.0.12", "udp", 8285, 0)),
    ('{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.20.0"}',
     (24, "10.5.10.0", "10.5.20.0", "udp", 8285, 0)),
]


@pytest.mark.parametrize("raw,expected", ok_cases)
def test_valid_configs_get_flannels_defaults(raw, expected):
    cfg = parse_network_config(raw)
    got = (cfg.subnet_len, str(cfg.subnet_min), str(cfg.subnet_max), cfg.backend.type, cfg.backend.port,
           cfg.backend.vni)
    assert got == expected


bad_cases = [
    ("not json", "not valid JSON"),
    ('["a"]', "expected a JSON object"),
    ("{}", "Network: missing"),
    ('{"Network":"10.5.0.0/33"}', "Network: expected an IPv4 CIDR"),
    ('{"Network":"banana"}', "Network: expected an IPv4 CIDR"),
    ('{"Network":"10.5.0.0/29"}', "Network: 10.5.0.0/29 is too small"),
    ('{"Network":"10.5.0.0/16","SubnetLen":17}', "SubnetLen: 17 leaves fewer than four subnets"),
    ('{"Network":"10.5.0.0/16","SubnetLen":31}', "SubnetLen: expected at most 30"),
    ('{"Network":"10.5.0.0/16","SubnetLen":"24"}', "SubnetLen: expected an integer"),
    ('{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}', "SubnetMin: 10.6.0.0 is not in the Network"),
    ('{"Network":"10.5.0.0/16","SubnetMax":"10.5.3.7"}', "SubnetMax: 10.5.3.7 is not on a /24 boundary"),
    ('{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.3.0"}', "is above SubnetMax"),
    ('{"Network":"10.5.0.0/16","Backend":{"Type":"gre"}}', "Backend.Type: unknown backend type 'gre'"),
    ('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":0}}', "Backend.VNI: expected a VNI"),
    ('{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":70000}}', "Backend.Port: expected a port"),
    ('{"Network":"10.5.0.0/16","Backend":"vxlan"}', "Backend: expected an object"),
]


@pytest.mark.parametrize("raw,message", bad_cases)
def test_invalid_configs_name_the_field(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_network_config(raw, source="/coreos.com/network/config")
    assert message in str(err.value)
    assert str(err.value).startswith("/coreos.com/network/config: ")


def test_to_json_round_trips():
    cfg = parse_network_config('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}')
    again = parse_network_config(json.dumps(cfg.to_json()))
    assert again == cfg
    assert cfg.subnet_count == 255
    assert cfg.network == ipaddress.IPv4Network("10.5.0.0/16")


v6_ok = [
    # IPv6 fields, (IPv6SubnetLen, IPv6SubnetMin, IPv6SubnetMax): flannel's defaults
    ('"IPv6Network":"fd00:5::/48"', (64, "fd00:5:0:1::", "fd00:5:0:ffff::")),
    ('"IPv6Network":"fd00:5::/63"', (65, "fd00:5:0:0:8000::", "fd00:5:0:1:8000::")),
    ('"IPv6Network":"fd00:5::/124"', (126, "fd00:5::4", "fd00:5::c")),
    ('"IPv6Network":"fd00:5::/48","IPv6SubnetLen":56', (56, "fd00:5:0:100::", "fd00:5:0:ff00::")),
    ('"IPv6Network":"fd00:5::/48","IPv6SubnetMin":"fd00:5:0:10::","IPv6SubnetMax":"fd00:5:0:20::"',
     (64, "fd00:5:0:10::", "fd00:5:0:20::")),
]


@pytest.mark.parametrize("fields,expected", v6_ok)
def test_dual_stack_configs_get_flannels_ipv6_defaults(fields, expected):
    cfg = parse_network_config('{"Network":"10.5.0.0/16","EnableIPv6":true,' + fields + "}")
    assert cfg.ipv6 is not None
    assert (cfg.ipv6.subnet_len, str(cfg.ipv6.subnet_min), str(cfg.ipv6.subnet_max)) == expected
    assert cfg.subnet_len == 24  # the IPv4 half is unchanged
    assert parse_network_config(json.dumps(cfg.to_json())) == cfg


def test_ipv6_fields_without_enable_ipv6_are_ignored_as_flannel_does():
    assert parse_network_config('{"Network":"10.5.0.0/16","IPv6Network":"fd00:5::/48"}').ipv6 is None


v6_bad = [
    ('"EnableIPv6":true', "IPv6Network: missing"),
    ('"EnableIPv6":"yes","IPv6Network":"fd00:5::/48"', "EnableIPv6: expected true or false"),
    ('"EnableIPv6":true,"IPv6Network":"10.6.0.0/16"', "IPv6Network: expected an IPv6 CIDR"),
    ('"EnableIPv6":true,"IPv6Network":"fd00:5::/125"', "IPv6Network: fd00:5::/125 is too small"),
    ('"EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetLen":49', "IPv6SubnetLen: 49 leaves fewer"),
    ('"EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetLen":127', "IPv6SubnetLen: expected at most 126"),
    ('"EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetMin":"fd00:6::"',
     "IPv6SubnetMin: fd00:6:: is not in the IPv6Network"),
    ('"EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetMax":"fd00:5::1"',
     "IPv6SubnetMax: fd00:5::1 is not on a /64 boundary"),
    ('"EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetMin":"10.5.1.0"',
     "IPv6SubnetMin: expected an IPv6 address"),
    ('"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48"', "EnableIPv4: false is not supported"),
    ('"EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}',
     "EnableIPv6: needs Backend.Type udp"),
]


@pytest.mark.parametrize("fields,message", v6_bad)
def test_invalid_dual_stack_configs_name_the_field(fields, message):
    with pytest.raises(ConfigError) as err:
        parse_network_config('{"Network":"10.5.0.0/16",' + fields + "}", source="cfg")
    assert message in str(err.value)


def test_the_topmost_network_gets_its_last_subnet_as_subnet_max():
    """Found by the property tests: SubnetMax's default overflowed past 255.255.255.255."""
    cfg = parse_network_config('{"Network":"255.0.0.0/8","Backend":{"Type":"udp"}}')
    assert str(cfg.subnet_max) == "255.255.255.0"
    dual = parse_network_config('{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"ffff::/16",'
                                '"Backend":{"Type":"udp"}}')
    assert dual.ipv6 is not None and str(dual.ipv6.subnet_max) == "ffff:ffff:ffff:ffff::"
