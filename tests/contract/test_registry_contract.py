"""One contract, two registries: MemoryRegistry and EtcdRegistry on a real etcd.

Every case runs against both; a fake that drifts from etcd's semantics fails here.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from netd.adapters.etcd import EtcdRegistry
from netd.adapters.memory import MemoryRegistry
from netd.errors import CompactedError, ConflictError
from netd.model import LeaseAttrs

NET = ipaddress.IPv4Network("10.5.7.0/24")
ATTRS = LeaseAttrs(ipaddress.IPv4Address("192.0.2.1"), "vxlan", {"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"})
OTHER = LeaseAttrs(ipaddress.IPv4Address("192.0.2.2"), "vxlan", {"VNI": 1, "VtepMAC": "0e:00:00:00:00:02"})


@dataclass
class Subject:
    make: Callable[[], object]
    compact: Callable[[object, int], None]


def _compact_memory(reg: object, revision: int) -> None:
    assert isinstance(reg, MemoryRegistry)
    reg.compact(revision)


@pytest.fixture(params=["memory", "etcd"])
def subject(request, unique_prefix):
    if request.param == "memory":
        return Subject(MemoryRegistry, _compact_memory)
    server = request.getfixturevalue("etcd_server")

    def compact(_: object, revision: int) -> None:
        server.etcdctl("compact", str(revision))

    return Subject(lambda: EtcdRegistry(server.endpoint, prefix=unique_prefix), compact)


def run(subject: Subject, body: Callable[[object], Awaitable[None]]) -> None:
    async def main() -> None:
        reg = subject.make()
        try:
            await body(reg)
        finally:
            await reg.close()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_config_round_trip(subject):
    async def body(reg):
        assert await reg.get_config() is None
        await reg.put_config(b'{"Network":"10.5.0.0/16"}')
        assert await reg.get_config() == b'{"Network":"10.5.0.0/16"}'

    run(subject, body)


def test_create_is_create_if_absent_and_conflict_carries_fresh_list(subject):
    async def body(reg):
        lease = await reg.create_subnet(NET, ATTRS, 60)
        assert lease.subnet == NET and lease.attrs == ATTRS and lease.lease_id != 0
        with pytest.raises(ConflictError) as err:
            await reg.create_subnet(NET, OTHER, 60)
        snap = err.value.current
        assert snap is not None and snap.find(NET) is not None
        assert snap.find(NET).attrs.public_ip == ATTRS.public_ip
        listed = await reg.list_subnets()
        assert [x.attrs for x in listed.leases] == [ATTRS]

    run(subject, body)


def test_reservation_has_no_lease(subject):
    async def body(reg):
        lease = await reg.create_subnet(NET, ATTRS, 0)
        assert lease.is_reservation
        assert (await reg.list_subnets()).find(NET).is_reservation

    run(subject, body)


def test_update_is_compare_and_swap_on_mod_revision(subject):
    async def body(reg):
        first = await reg.create_subnet(NET, ATTRS, 60)
        second = await reg.update_subnet(first, OTHER, None)
        assert second.mod_revision > first.mod_revision
        assert second.lease_id == first.lease_id  # ttl=None keeps the lease
        with pytest.raises(ConflictError, match="expected mod_revision"):
            await reg.update_subnet(first, ATTRS, None)  # stale: never overwrites
        assert (await reg.list_subnets()).find(NET).attrs == OTHER
        third = await reg.update_subnet(second, ATTRS, 60)
        assert third.lease_id not in (0, first.lease_id)

    run(subject, body)


def test_update_of_a_vanished_key_conflicts(subject):
    async def body(reg):
        lease = await reg.create_subnet(NET, ATTRS, 60)
        assert await reg.delete_subnet(NET)
        assert not await reg.delete_subnet(NET)
        with pytest.raises(ConflictError):
            await reg.update_subnet(lease, ATTRS, None)
        assert (await reg.list_subnets()).leases == ()

    run(subject, body)


def test_keepalive_and_ttl(subject):
    async def body(reg):
        lease = await reg.create_subnet(NET, ATTRS, 30)
        assert 0 < await reg.keepalive(lease.lease_id) <= 30
        assert 0 < await reg.time_to_live(lease.lease_id) <= 30
        assert await reg.keepalive(0x7777) == 0
        assert await reg.time_to_live(0x7777) == 0

    run(subject, body)


def test_revoke_and_expiry_delete_the_key(subject):
    async def body(reg):
        a = await reg.create_subnet(NET, ATTRS, 60)
        b = await reg.create_subnet(ipaddress.IPv4Network("10.5.8.0/24"), OTHER, 1)
        await reg.revoke(a.lease_id)
        assert (await reg.list_subnets()).find(NET) is None
        for _ in range(60):
            if (await reg.list_subnets()).find(b.subnet) is None:
                break
            await asyncio.sleep(0.1)
        assert (await reg.list_subnets()).find(b.subnet) is None, "a 1 s lease outlived 6 s"
        assert await reg.keepalive(b.lease_id) == 0

    run(subject, body)


def test_watch_replays_from_a_revision_and_reports_deletes(subject):
    async def body(reg):
        start = (await reg.list_subnets()).revision
        lease = await reg.create_subnet(NET, ATTRS, 60)
        await reg.update_subnet(lease, OTHER, None)
        await reg.delete_subnet(NET)
        seen = []

        async def collect():
            async for events in reg.watch_subnets(start + 1):
                seen.extend(events)
                if len(seen) >= 3:
                    return

        await asyncio.wait_for(collect(), 10)
        assert [(e.deleted, e.lease.attrs if e.lease else None) for e in seen] == [
            (False, ATTRS), (False, OTHER), (True, None)]
        assert all(e.subnet == NET for e in seen)
        assert seen[0].revision < seen[1].revision < seen[2].revision

    run(subject, body)


def test_dual_stack_keys_round_trip_under_flannels_name(subject):
    """A flannel dual-stack host's key (``10.5.7.0-24&fd00:0:0:7::-64``) is listed with both
    subnets, updated in place (CAS on that key, not a new IPv4-only one) and watched."""
    v6 = ipaddress.IPv6Network("fd00:0:0:7::/64")

    async def body(reg):
        start = (await reg.list_subnets()).revision
        lease = await reg.create_subnet(NET, ATTRS, 60, ipv6_subnet=v6)
        assert lease.key == "10.5.7.0-24&fd00:0:0:7::-64" and lease.ipv6_subnet == v6
        with pytest.raises(ConflictError):
            await reg.create_subnet(NET, OTHER, 60, ipv6_subnet=v6)
        updated = await reg.update_subnet(lease, OTHER, None)
        snap = await reg.list_subnets()
        assert not snap.invalid
        assert [(x.subnet, x.ipv6_subnet, x.attrs) for x in snap.leases] == [(NET, v6, OTHER)]
        assert updated.key == lease.key

        async def first_two():
            seen = []
            async for events in reg.watch_subnets(start + 1):
                seen.extend(events)
                if len(seen) >= 2:
                    return seen
            return seen

        seen = await asyncio.wait_for(first_two(), 10)
        assert [(e.subnet, e.lease.ipv6_subnet if e.lease else None) for e in seen] == [(NET, v6), (NET, v6)]

    run(subject, body)


def test_watch_from_a_compacted_revision_raises_compacted(subject):
    async def body(reg):
        start = (await reg.list_subnets()).revision
        lease = await reg.create_subnet(NET, ATTRS, 60)
        await reg.update_subnet(lease, OTHER, None)
        latest = (await reg.list_subnets()).revision
        subject.compact(reg, latest)

        async def first_batch():
            async for _ in reg.watch_subnets(start + 1):
                return

        with pytest.raises(CompactedError):
            await asyncio.wait_for(first_batch(), 10)

    run(subject, body)


@pytest.mark.parametrize("forms", ["v4-only", "both"])
def test_many_racing_creates_of_one_subnet_have_one_winner(subject, forms):
    """20 racers for one IPv4 subnet, all under its v4-only key name or (both) every other one under a
    dual-stack name: one winner, one key."""
    async def body(reg):
        async def attempt(i):
            attrs = LeaseAttrs(ipaddress.IPv4Address(f"192.0.2.{i + 1}"), "udp", {})
            v6 = ipaddress.IPv6Network(f"fd00:0:0:{i}::/64") if forms == "both" and i % 2 else None
            try:
                await reg.create_subnet(NET, attrs, 60, ipv6_subnet=v6)
                return True
            except ConflictError:
                return False

        results = await asyncio.gather(*(attempt(i) for i in range(20)))
        assert results.count(True) == 1
        assert len([x for x in (await reg.list_subnets()).leases if x.subnet == NET]) == 1

    run(subject, body)


def test_etcd_reports_unparseable_keys(etcd_server, unique_prefix):
    etcd_server.etcdctl("put", f"{unique_prefix}/subnets/10.5.9.0-24", "not json")
    etcd_server.etcdctl("put", f"{unique_prefix}/subnets/garbage", '{"PublicIP":"192.0.2.9"}')

    async def main():
        reg = EtcdRegistry(etcd_server.endpoint, prefix=unique_prefix)
        try:
            snap = await reg.list_subnets()
        finally:
            await reg.close()
        assert snap.leases == ()
        assert len(snap.invalid) == 2 and any("not valid JSON" in x for x in snap.invalid)

    asyncio.run(main())


V6 = ipaddress.IPv6Network("fd00:0:0:7::/64")


def test_create_guards_every_key_form_of_the_ipv4_subnet(subject):
    """A v4-only key and a dual-stack key name one IPv4 subnet: whichever exists, the other is a
    conflict, and a neighbour's keys (10.5.70.0/24, 10.5.7.0/25) are not."""

    async def body(reg):
        await reg.create_subnet(NET, ATTRS, 60)
        with pytest.raises(ConflictError):
            await reg.create_subnet(NET, OTHER, 60, ipv6_subnet=V6)
        await reg.create_subnet(ipaddress.IPv4Network("10.5.70.0/24"), OTHER, 60, ipv6_subnet=V6)
        await reg.create_subnet(ipaddress.IPv4Network("10.5.7.0/25"), OTHER, 60)
        other = ipaddress.IPv4Network("10.5.8.0/24")
        await reg.create_subnet(other, ATTRS, 60, ipv6_subnet=ipaddress.IPv6Network("fd00:0:0:8::/64"))
        with pytest.raises(ConflictError):
            await reg.create_subnet(other, OTHER, 60)
        with pytest.raises(ConflictError):
            await reg.create_subnet(other, OTHER, 60, ipv6_subnet=ipaddress.IPv6Network("fd00:0:0:9::/64"))
        assert sorted(x.key for x in (await reg.list_subnets()).leases) == [
            "10.5.7.0-24", "10.5.7.0-25", "10.5.70.0-24&fd00:0:0:7::-64", "10.5.8.0-24&fd00:0:0:8::-64"]

    run(subject, body)


def test_rename_to_dual_stack_is_one_step_and_guarded(subject):
    async def body(reg):
        lease = await reg.create_subnet(NET, ATTRS, 60)
        renamed = await reg.rename_subnet(lease, V6, ATTRS, 60)
        assert renamed.key == "10.5.7.0-24&fd00:0:0:7::-64" and renamed.lease_id
        assert [x.key for x in (await reg.list_subnets()).leases] == [renamed.key]
        with pytest.raises(ConflictError):  # the old key is gone: its revision no longer matches
            await reg.rename_subnet(lease, V6, ATTRS, 60)
        other = ipaddress.IPv4Network("10.5.8.0/24")
        mine = await reg.create_subnet(other, ATTRS, 60)
        await reg.update_subnet(mine, ATTRS, None)
        with pytest.raises(ConflictError):  # changed since read
            await reg.rename_subnet(mine, ipaddress.IPv6Network("fd00:0:0:8::/64"), ATTRS, 60)
        assert sorted(x.key for x in (await reg.list_subnets()).leases) == [renamed.key, "10.5.8.0-24"]

    run(subject, body)
