"""Boundaries and exact words of the pure parsers (what mutation testing found untested): range
edges of flannel's config rules, the errors an operator reads (field and message), the JSON netd
writes (key spelling, byte for byte), subnet.env quoting and the nft script."""

from __future__ import annotations

import ipaddress
import json

import pytest

from netd.core.dataplane import DataplaneState, Route, desired_state, normalise_mac, plan_dataplane, select_peers
from netd.core.masq import render_masq_ruleset, ruleset_digest
from netd.core.subnetenv import parse_subnet_env, previous_ipv6_subnet, previous_subnet
from netd.errors import ConfigError
from netd.model import Lease, LeaseAttrs, parse_lease_key, parse_network_config
from netd.model.config import network_config_from_json
from netd.model.flags import env_name, parse_endpoints

A, N = ipaddress.IPv4Address, ipaddress.IPv4Network


def config_error(obj: object) -> str:
    with pytest.raises(ConfigError) as exc:
        network_config_from_json(obj)
    return str(exc.value)


# -- the config: flannel's rules at their edges ----------------------------------------------------
def test_to_json_spells_every_key_as_flannel_does():
    cfg = parse_network_config('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","Port":4789,"VNI":7,"X":1}}')
    assert cfg.to_json() == {"Network": "10.5.0.0/16", "SubnetLen": 24, "SubnetMin": "10.5.1.0",
                             "SubnetMax": "10.5.255.0", "Backend": {"Type": "vxlan", "Port": 4789, "VNI": 7, "X": 1}}
    assert cfg.backend.raw == {"Type": "vxlan", "Port": 4789, "VNI": 7, "X": 1}


@pytest.mark.parametrize("network,subnet_len", [("10.0.0.0/22", 24), ("10.0.0.0/23", 25), ("10.0.0.0/28", 30)])
def test_default_subnet_len_edges(network, subnet_len):
    assert parse_network_config(json.dumps({"Network": network})).subnet_len == subnet_len


def test_network_with_host_bits_is_its_network():
    assert str(parse_network_config('{"Network":"10.5.1.7/16"}').network) == "10.5.0.0/16"


@pytest.mark.parametrize("obj,message", [
    ({"Network": "10.0.0.0/29"}, "Network: 10.0.0.0/29 is too small; the minimum useful network is a /28"),
    ({"Network": "10.5.0.0/16", "SubnetLen": 17}, "SubnetLen: 17 leaves fewer than four subnets in 10.5.0.0/16 "
                                                  "(expected at least /18)"),
    ({"Network": "10.5.0.0/16", "SubnetMax": "10.6.0.0"}, "SubnetMax: 10.6.0.0 is not in the Network 10.5.0.0/16"),
    ({"Network": "10.5.0.0/16", "SubnetMin": "10.4.0.0"}, "SubnetMin: 10.4.0.0 is not in the Network 10.5.0.0/16"),
    ({"Network": "10.5.0.0/16", "SubnetMin": "x"}, "SubnetMin: expected an IPv4 address, found 'x'"),
    ({"Network": "10.5.0.0/16", "SubnetMin": "10.5.2.0", "SubnetMax": "10.5.1.0"},
     "SubnetMin: SubnetMin 10.5.2.0 is above SubnetMax 10.5.1.0"),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": "ipsec"}},
     "Backend.Type: unknown backend type 'ipsec' (known: host-gw, udp, vxlan)"),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": "udp", "Port": "x"}},
     "Backend.Port: expected an integer, found 'x'"),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": "x"}},
     "Backend.VNI: expected an integer, found 'x'"),
    ({"Network": "10.5.0.0/16", "EnableIPv4": False},
     "EnableIPv4: false is not supported: netd's leases and backends are IPv4 first (IPv6 comes with EnableIPv6, "
     "alongside)"),
    ([], "expected a JSON object, found list"),
])
def test_config_errors_name_the_field_and_say_what_was_found(obj, message):
    assert config_error(obj) == message


def test_parse_errors_name_the_source():
    with pytest.raises(ConfigError) as exc:
        parse_network_config('{"Network":"x"}')
    assert str(exc.value) == "config: Network: expected an IPv4 CIDR, found 'x'" and exc.value.field is None


@pytest.mark.parametrize("value", ["", "0.0.0.0"])
def test_empty_or_zero_subnet_min_and_max_mean_the_default(value):
    cfg = network_config_from_json({"Network": "10.5.0.0/16", "SubnetMin": value, "SubnetMax": value})
    assert (str(cfg.subnet_min), str(cfg.subnet_max)) == ("10.5.1.0", "10.5.255.0")
    dual = network_config_from_json({"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:5::/48",
                                     "IPv6SubnetMin": "::" if value else "", "Backend": {"Type": "udp"}})
    assert dual.ipv6 is not None and str(dual.ipv6.subnet_min) == "fd00:5:0:1::"


def test_one_subnet_range_is_fine():
    cfg = network_config_from_json({"Network": "10.5.0.0/16", "SubnetMin": "10.5.9.0", "SubnetMax": "10.5.9.0"})
    assert cfg.subnet_count == 1


@pytest.mark.parametrize("backend,field,good,bad", [
    ("udp", "Port", [1, 65535], [0, 65536, -1]),
    ("vxlan", "Port", [1, 65535], [0, 65536]),
    ("vxlan", "VNI", [1, (1 << 24) - 1], [0, 1 << 24]),
])
def test_port_and_vni_range_edges(backend, field, good, bad):
    for v in good:
        cfg = network_config_from_json({"Network": "10.5.0.0/16", "Backend": {"Type": backend, field: v}})
        assert getattr(cfg.backend, field.lower()) == v
    for v in bad:
        assert config_error({"Network": "10.5.0.0/16", "Backend": {"Type": backend, field: v}}).startswith(
            f"Backend.{field}: expected a")


# -- lease values and keys -----------------------------------------------------------------------------
def test_lease_json_is_sorted_and_complete():
    attrs = LeaseAttrs(A("192.0.2.1"), "vxlan", {"VtepMAC": "0e:00:00:00:00:01", "VNI": 1}, {"PublicIPv6": None})
    assert attrs.to_json() == (b'{"BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"}, "BackendType": "vxlan", '
                               b'"PublicIP": "192.0.2.1", "PublicIPv6": null}')
    assert LeaseAttrs(A("192.0.2.1")).to_json() == b'{"PublicIP": "192.0.2.1"}'
    # equal attrs hash alike whatever the order of BackendData's keys
    same = LeaseAttrs(A("192.0.2.1"), "vxlan", {"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"})
    assert hash(same) == hash(LeaseAttrs(A("192.0.2.1"), "vxlan", dict(reversed(list(same.backend_data.items())))))
    assert hash(same) != hash(LeaseAttrs(A("192.0.2.1"), "vxlan", {"VNI": 2, "VtepMAC": "0e:00:00:00:00:01"}))


@pytest.mark.parametrize("raw,message", [
    (b"nope", "lease: not valid JSON"),
    (b"[1]", "lease: expected a JSON object, found list"),
    (b'{"PublicIP":"x"}', "lease: PublicIP: expected an IPv4 address"),
    (b"{}", "lease: PublicIP: expected an IPv4 address"),
    (b'{"PublicIP":"192.0.2.1","BackendData":[1]}', "lease: BackendData: expected an object, found [1]"),
    (b'{"PublicIP":5}', "lease: PublicIP: expected an IPv4 address, found 5"),  # not 0.0.0.5
    (b'{"PublicIP":"192.0.2.1","BackendType":5}', "lease: BackendType: expected a string, found 5"),
    (b'{"PublicIP":"192.0.2.1","BackendType":false}', "lease: BackendType: expected a string, found False"),
    (b'{"PublicIP":"192.0.2.1","BackendData":[]}', "lease: BackendData: expected an object, found []"),
])
def test_lease_value_errors(raw, message):
    with pytest.raises(ConfigError) as exc:
        LeaseAttrs.from_json(raw)
    assert str(exc.value).startswith(message)


def test_null_backend_fields_are_empty():
    attrs = LeaseAttrs.from_json(b'{"PublicIP":"192.0.2.1","BackendType":null,"BackendData":null}')
    assert (attrs.backend_type, dict(attrs.backend_data), dict(attrs.extra)) == ("", {}, {})


def test_a_dual_stack_key_needs_both_halves():
    with pytest.raises(ValueError):
        parse_lease_key("10.5.9.0-24&fd00::")
    assert parse_lease_key("10.5.9.0-24&fd00::-64")[1] == ipaddress.IPv6Network("fd00::/64")


# -- subnet.env ---------------------------------------------------------------------------------------
def test_subnet_env_parsing_is_flannels_shell_syntax():
    text = ('# written by flannel\n\nFLANNEL_NETWORK=10.5.0.0/16\nnot a line\nFLANNEL_SUBNET="10.5.9.1/24"\n'
            'FLANNEL_MTU = 1450 \nFLANNEL_X=a=b\n')
    assert parse_subnet_env(text) == {"FLANNEL_NETWORK": "10.5.0.0/16", "FLANNEL_SUBNET": "10.5.9.1/24",
                                      "FLANNEL_MTU": "1450", "FLANNEL_X": "a=b"}
    assert previous_subnet(text) == N("10.5.9.0/24")
    assert previous_subnet("FLANNEL_SUBNET=\n") is None and previous_ipv6_subnet("FLANNEL_IPV6_SUBNET=\n") is None
    assert previous_subnet("FLANNEL_SUBNET=nonsense\n") is None


# -- nft script ---------------------------------------------------------------------------------------
def test_masq_script_and_its_digest():
    script = render_masq_ruleset(N("10.5.0.0/16"), N("10.5.9.0/24"))
    digest = ruleset_digest(script)
    assert len(digest) == 16 and f'comment "netd ip-masq {digest}"' in script
    assert script.startswith("table ip netd {}\ndelete table ip netd\ntable ip6 netd {}\ndelete table ip6 netd\n")
    for rule in ("ip saddr 10.5.0.0/16 ip daddr 10.5.0.0/16 return",
                 "ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
                 "ip saddr != 10.5.0.0/16 ip daddr 10.5.9.0/24 return",
                 "ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random",
                 "type nat hook postrouting priority srcnat; policy accept;"):
        assert f"    {rule}\n" in script, rule
    assert "table ip6 netd {\n" not in script  # no IPv6 table off dual stack
    dual = render_masq_ruleset(N("10.5.0.0/16"), N("10.5.9.0/24"),
                               (ipaddress.IPv6Network("fd00:5::/48"), ipaddress.IPv6Network("fd00:5:0:9::/64")))
    assert "ip6 saddr fd00:5::/48 ip6 daddr != ff00::/8 masquerade fully-random" in dual
    assert ruleset_digest(dual) != digest
    assert ruleset_digest("table ip netd {\n}\n") == ""


# -- peers and MACs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mac,want", [("0E:00:00:00:00:02", "0e:00:00:00:00:02"), ("0e:00:00:00:00", None),
                                      ("0e:0:00:00:00:02", None), ("0e:00:00:00:00:0g", None), (7, None),
                                      ("0e:00:00:00:00:02:03", None)])
def test_normalise_mac(mac, want):
    assert normalise_mac(mac) == want


CFG = parse_network_config('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}')


def vx(subnet: str, ip: str, mac: str | None) -> Lease:
    return Lease(N(subnet), LeaseAttrs(A(ip), "vxlan", {"VtepMAC": mac} if mac else {}), 1, 1)


def test_a_broken_peer_does_not_hide_the_ones_after_it():
    own = vx("10.5.1.0/24", "192.0.2.1", "0e:00:00:00:00:01")
    state, skipped = desired_state(CFG, "vxlan", own, [own, vx("10.5.2.0/24", "192.0.2.2", None),
                                                       vx("10.5.3.0/24", "192.0.2.3", "0e:00:00:00:00:03")])
    assert {str(r.dst) for r in state.routes} == {"10.5.3.0/24"}
    assert [(s.key, s.reason) for s in skipped] == [("10.5.2.0-24", "bad_backend_data")]


def test_an_unknown_backend_routes_nothing_and_says_so():
    own = vx("10.5.1.0/24", "192.0.2.1", None)
    peer = Lease(N("10.5.2.0/24"), LeaseAttrs(A("192.0.2.2"), "ipsec", {}), 1, 1)
    state, skipped = desired_state(CFG, "ipsec", own, [own, peer])
    assert state == DataplaneState()
    assert [str(s) for s in skipped] == ["10.5.2.0-24: backend 'ipsec' has no kernel routes"]
    assert [s.reason for s in skipped] == ["bad_backend_data"]


def test_skip_messages_say_what_is_wrong():
    own = Lease(N("10.5.1.0/24"), LeaseAttrs(A("192.0.2.1"), "udp", {}), 1, 1,
                ipaddress.IPv6Network("fd00:5:0:1::/64"))
    dual = parse_network_config('{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48",'
                                '"Backend":{"Type":"udp"}}')
    def udp(subnet: str, ip: str, v6: str | None = None) -> Lease:
        return Lease(N(subnet), LeaseAttrs(A(ip), "udp", {}), 1, 1, ipaddress.IPv6Network(v6) if v6 else None)

    leases = [own, udp("10.6.0.0/24", "192.0.2.2"), udp("10.5.3.0/24", "192.0.2.3", "fd00:6::/64"),
              udp("10.5.1.0/24", "192.0.2.4", "fd00:5:0:4::/64")]
    _, skipped = select_peers(dual, own, leases, "udp")
    assert sorted(str(s) for s in skipped) == [
        "10.5.1.0-24&fd00:5:0:4::-64: 192.0.2.4 claims our own subnet (we hold 10.5.1.0-24&fd00:5:0:1::-64)",
        "10.5.3.0-24&fd00:6::-64: fd00:6::/64 is not a /64 inside the IPv6Network fd00:5::/48",
        "10.6.0.0-24: 10.6.0.0/24 is not a /24 inside the Network 10.5.0.0/16"]


def test_ipv6_subnets_of_peers_are_not_compared_off_dual_stack():
    own = Lease(N("10.5.1.0/24"), LeaseAttrs(A("192.0.2.1"), "udp", {}), 1, 1)
    v6 = ipaddress.IPv6Network("fd00:5:0:9::/64")
    a = Lease(N("10.5.2.0/24"), LeaseAttrs(A("192.0.2.2"), "udp", {}), 1, 1, v6)
    b = Lease(N("10.5.3.0/24"), LeaseAttrs(A("192.0.2.3"), "udp", {}), 1, 1, v6)
    udp = parse_network_config('{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}')
    peers, skipped = select_peers(udp, own, [own, a, b], "udp")
    assert peers == [a, b] and skipped == []


def test_routes_to_delete_come_in_address_order():
    r = [Route(N(f"10.5.{i}.0/24"), A("192.0.2.9")) for i in (9, 3, 200, 10)]
    plan = plan_dataplane(DataplaneState(), DataplaneState(routes=frozenset(r)))
    assert [str(x.dst) for x in plan.del_routes] == ["10.5.3.0/24", "10.5.9.0/24", "10.5.10.0/24", "10.5.200.0/24"]


# -- flags ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ip", ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"])
def test_a_peer_needs_a_public_ip_a_host_can_have(ip):
    own = vx("10.5.1.0/24", "192.0.2.1", "0e:00:00:00:00:01")
    bad = vx("10.5.2.0/24", ip, "0e:00:00:00:00:02")
    peers, skipped = select_peers(CFG, own, [own, bad], "vxlan")
    assert peers == [] and [(str(s), s.reason) for s in skipped] == [
        (f"10.5.2.0-24: PublicIP {ip} is no address a host can be reached at", "bad_public_ip")]


@pytest.mark.parametrize("key", ["10.5.9.0-024", "10.5.9.0-24&fd00:0::-64", "10.5.9.0-24&FD00::-64"])
def test_only_the_spelling_flannel_writes_is_a_key(key):
    with pytest.raises(ValueError, match=f"not a subnet key: {key!r}"):
        parse_lease_key(key)


def test_endpoints_skip_empty_items_anywhere():
    assert parse_endpoints(" ,http://a:1, ,https://b") == [("a", 1, False), ("b", 2379, True)]


def test_env_names_of_flags_with_dashes():
    assert env_name("--udp-threads") == "NETD_UDP_THREADS" and env_name("-x") == "NETD_X"
