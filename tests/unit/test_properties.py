"""Property-based tests (hypothesis) of the parsers of external shapes: lease keys, lease values,
the network config, subnet.env and flag values (issue 11, item 13). Whatever the input, a parser
returns a value or raises its one documented error, and what netd writes reads back the same."""

from __future__ import annotations

import ipaddress
import json

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from netd.core.subnetenv import previous_ipv6_subnet, previous_subnet, render_subnet_env
from netd.errors import ConfigError
from netd.model import LeaseAttrs, format_subnet_key, parse_lease_key, parse_network_config
from netd.model.config import network_config_from_json
from netd.model.flags import parse_bool, parse_duration, parse_endpoints, parse_port, parse_seconds

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

v4_nets = st.builds(lambda a, p: ipaddress.IPv4Network((a, p), strict=False), st.integers(0, 2**32 - 1),
                    st.integers(0, 32))
v6_nets = st.builds(lambda a, p: ipaddress.IPv6Network((a, p), strict=False), st.integers(0, 2**128 - 1),
                    st.integers(0, 128))
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)


@SETTINGS
@given(v4_nets, st.none() | v6_nets)
def test_lease_keys_round_trip(v4, v6):
    assert parse_lease_key(format_subnet_key(v4, v6)) == (v4, v6)


@SETTINGS
@given(st.text(alphabet="0123456789.-&:abcdefx/ ", max_size=60))
def test_any_key_name_parses_or_is_a_value_error(name):
    try:
        parse_lease_key(name)
    except ValueError as exc:
        assert "not a subnet key" in str(exc)  # the one documented error, naming the key


def _other_spellings(name: str) -> list[str]:
    """Names for the same subnets that flannel and netd never write: create-if-absent, which
    compares names, could not see a lease written under one of them."""
    v4, _, v6 = name.partition("&")
    addr, _, plen = v4.rpartition("-")
    out = [f"{addr}-0{plen}", "0" + name, name + " ", name.upper() if v6 else name + "&",
           f"{addr.split('.', 1)[0]}.0{addr.split('.', 1)[1]}-{plen}" + (f"&{v6}" if v6 else "")]
    if v6:
        a6, _, p6 = v6.rpartition("-")
        out += [f"{v4}&{ipaddress.IPv6Address(a6).exploded}-{p6}", f"{v4}&{a6}-0{p6}", f"{v4}&&{v6}"]
    return [o for o in out if o != name]


@SETTINGS
@given(v4_nets, st.none() | v6_nets)
def test_other_spellings_of_a_key_are_refused(v4, v6):
    name = format_subnet_key(v4, v6)
    assert parse_lease_key(name) == (v4, v6)
    for other in _other_spellings(name):
        try:
            parsed = parse_lease_key(other)
        except ValueError:
            continue
        raise AssertionError(f"{other!r} (for {name!r}) parsed as {parsed}")


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from(["", "udp", "vxlan", "host-gw"]),
       st.dictionaries(st.sampled_from(["VNI", "VtepMAC", "x"]), st.integers(0, 99) | st.text(max_size=8),
                       max_size=3),
       st.dictionaries(st.sampled_from(["PublicIPv6", "BackendV6Data", "Other"]), json_values, max_size=2))
def test_lease_values_round_trip(ip, btype, data, extra):
    attrs = LeaseAttrs(ipaddress.IPv4Address(ip), btype, data, extra)
    back = LeaseAttrs.from_json(attrs.to_json())
    assert (back.public_ip, back.backend_type, dict(back.backend_data)) == (attrs.public_ip, btype, data)
    assert {k: v for k, v in back.extra.items()} == extra  # what netd does not interpret survives a rewrite


@SETTINGS
@given(json_values)
def test_any_lease_value_parses_or_is_a_config_error(value):
    try:
        LeaseAttrs.from_json(json.dumps(value))
    except ConfigError:
        pass


@SETTINGS
@given(st.binary(max_size=64))
def test_any_lease_bytes_parse_or_are_a_config_error(raw):
    try:
        LeaseAttrs.from_json(raw)
    except ConfigError:
        pass


configs = st.builds(
    lambda net, extra_len, backend, fields: {"Network": str(net), **({"SubnetLen": net.prefixlen + extra_len}
                                                                    if extra_len else {}),
                                             "Backend": {"Type": backend}, **fields},
    st.builds(lambda a, p: ipaddress.IPv4Network((a, p), strict=False), st.integers(0, 2**32 - 1),
              st.integers(8, 28)),
    st.integers(0, 8), st.sampled_from(["udp", "vxlan", "host-gw"]),
    st.dictionaries(st.sampled_from(["SubnetMin", "SubnetMax", "Foo"]), st.text(max_size=12), max_size=1))


@SETTINGS
@given(configs)
def test_a_config_netd_accepts_reads_back_the_same_from_what_netd_writes(obj):
    try:
        cfg = network_config_from_json(obj)
    except ConfigError:
        return
    again = parse_network_config(json.dumps(cfg.to_json()))
    assert again == cfg and again.to_json() == cfg.to_json()
    assert cfg.subnet_count >= 1 and cfg.subnet_min in cfg.network and cfg.subnet_max in cfg.network


@SETTINGS
@given(st.dictionaries(st.sampled_from(["Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "EnableIPv6",
                                        "IPv6Network", "IPv6SubnetLen", "EnableIPv4"]), json_values, max_size=6))
def test_any_config_object_parses_or_is_a_config_error_naming_a_field(obj):
    try:
        network_config_from_json(obj)
    except ConfigError as exc:
        assert str(exc)


@SETTINGS
@given(st.binary(max_size=80))
def test_any_config_bytes_parse_or_are_a_config_error(raw):
    try:
        parse_network_config(raw)
    except ConfigError:
        pass


@SETTINGS
@given(v4_nets, st.integers(0, 9000), st.booleans(), st.none() | v6_nets)
def test_subnet_env_reads_back_the_subnets_it_was_written_with(subnet, mtu, masq, v6):
    assume(subnet.num_addresses > 1 and (v6 is None or v6.num_addresses > 1))
    text = render_subnet_env(ipaddress.IPv4Network("0.0.0.0/0"), subnet, mtu, masq,
                             (ipaddress.IPv6Network("::/0"), v6) if v6 else None)
    assert previous_subnet(text) == subnet and previous_ipv6_subnet(text) == v6


@SETTINGS
@given(st.text(max_size=20))
def test_flag_values_parse_or_are_a_value_error(text):
    for parse in (parse_bool, parse_duration, parse_port, parse_seconds, parse_endpoints):
        try:
            parse(text)
        except ValueError:
            pass


@SETTINGS
@given(st.integers(1, 10**7), st.sampled_from(["", "s"]))
def test_durations_in_seconds_read_back(n, unit):
    assert parse_duration(f"{n}{unit}") == n
