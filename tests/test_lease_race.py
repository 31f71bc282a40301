"""Hundreds of hosts acquiring at once on one real etcd."""

import asyncio

from integration.leaserace import race


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
