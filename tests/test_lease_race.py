"""Hundreds of hosts acquiring at once on one real etcd."""

import asyncio
import ipaddress
import random

from integration.leaserace import race
from netd.adapters.etcd import EtcdRegistry
from netd.agent.leases import SubnetLeaser
from netd.model import LeaseAttrs, parse_network_config


def test_200_concurrent_acquirers_get_200_distinct_subnets(etcd_server, unique_prefix):
    outcomes = asyncio.run(race(etcd_server.endpoint, unique_prefix,
                                '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}', 200))
    errors = [o.error for o in outcomes if o.error]
    assert errors == []
    subnets = {o.lease.subnet for o in outcomes}
    assert len(subnets) == 200
    listed = etcd_server.etcdctl("get", "--prefix", "--keys-only", f"{unique_prefix}/subnets/").split()
    assert len(listed) == 200


def test_254_acquirers_for_253_subnets_exactly_one_clear_error(etcd_server, unique_prefix):
    config = '{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.253.0","Backend":{"Type":"vxlan"}}'
    outcomes = asyncio.run(race(etcd_server.endpoint, unique_prefix, config, 254))
    errors = [o.error for o in outcomes if o.error]
    assert len(errors) == 1, errors[:3]
    assert errors[0].startswith(
        "no free subnet: all 253 /24 subnets between SubnetMin 10.5.1.0 and SubnetMax 10.5.253.0")
    assert len({o.lease.subnet for o in outcomes if o.lease}) == 253


def test_100_concurrent_dual_stack_acquirers_get_distinct_pairs(etcd_server, unique_prefix):
    """Create-if-absent guards one key name; the IPv6 subnet paired with the IPv4 one keeps
    racing hosts from both winning one IPv6 subnet under two names."""
    config = '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"udp"}}'
    outcomes = asyncio.run(race(etcd_server.endpoint, unique_prefix, config, 100))
    assert [o.error for o in outcomes if o.error] == []
    leases = [o.lease for o in outcomes if o.lease]
    assert len({x.subnet for x in leases}) == len({x.ipv6_subnet for x in leases}) == 100
    assert all(x.ipv6_subnet is not None and x.ipv6_subnet.prefixlen == 64 for x in leases)
    listed = etcd_server.etcdctl("get", "--prefix", "--keys-only", f"{unique_prefix}/subnets/").split()
    assert len(listed) == 100 and all("&fd00:5:" in k for k in listed)


def test_enable_ipv6_renames_our_lease_under_a_dual_stack_key(etcd_server, unique_prefix):
    async def main() -> None:
        reg = EtcdRegistry(etcd_server.endpoint, prefix=unique_prefix)
        try:
            ip = ipaddress.IPv4Address("198.18.0.1")
            attrs = LeaseAttrs(ip, "udp", {})
            leaser = SubnetLeaser(reg, ip, 60, random.Random(0))
            v4 = parse_network_config('{"Network":"10.5.0.0/16"}')
            before = await leaser.acquire(v4, await reg.list_subnets(), attrs, None)
            assert before.ipv6_subnet is None
            dual = parse_network_config('{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48"}')
            after = await leaser.acquire(dual, await reg.list_subnets(), attrs, before.subnet)
            assert after.subnet == before.subnet and after.ipv6_subnet is not None
            keys = [(x.key, x.attrs.public_ip) for x in (await reg.list_subnets()).leases]
            assert keys == [(after.key, ip)]  # the IPv4-only key is gone
        finally:
            await reg.close()

    asyncio.run(main())


def test_racing_acquirers_of_both_key_forms_never_hold_one_ipv4_subnet_twice(etcd_server, unique_prefix):
    """Half the hosts lease v4-only keys, half dual-stack keys, for 30 subnets (40 hosts): create-
    if-absent guards every key form of an IPv4 subnet, so each one is under one key at most."""
    v4 = '{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.30.0","Backend":{"Type":"udp"}}'
    dual = v4[:-1] + ',"EnableIPv6":true,"IPv6Network":"fd00:5::/48"}'
    outcomes = asyncio.run(race(etcd_server.endpoint, unique_prefix, v4, 40, configs=[v4, dual] * 20))
    won = [o.lease for o in outcomes if o.lease]
    assert len(won) == 30 and len([o for o in outcomes if o.error]) == 10
    assert {x.ipv6_subnet is None for x in won} == {True, False}
    listed = etcd_server.etcdctl("get", "--prefix", "--keys-only", f"{unique_prefix}/subnets/").split()
    ipv4 = [key.rsplit("/", 1)[1].split("&")[0] for key in listed]
    assert len(ipv4) == 30 and len(set(ipv4)) == 30, sorted(ipv4)
