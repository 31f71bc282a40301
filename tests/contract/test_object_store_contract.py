"""One contract, two object stores: MemoryObjectStore and EtcdObjectStore on a real etcd."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from netd.adapters.objects import EtcdObjectStore, MemoryObjectStore
from netd.core.specplan import plan_apply, plan_delete
from netd.errors import ConflictError
from netd.model.specs import parse_object

A = ipaddress.IPv4Address


def obj(kind, name, **spec):
    o, issues = parse_object({"apiVersion": "netd/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})
    assert o is not None, issues
    return o


BLUE = obj("TenantNetwork", "blue", vni=5001, subnet="10.20.0.0/24")


@pytest.fixture(params=["memory", "etcd"])
def make_store(request, unique_prefix):
    if request.param == "memory":
        store = MemoryObjectStore()
        return lambda: store
    server = request.getfixturevalue("etcd_server")
    prefix = unique_prefix.replace("/network", "/netd")
    return lambda: EtcdObjectStore(server.endpoint, prefix=prefix)


def run(make_store, body):
    async def main():
        store = make_store()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_apply_reads_back_and_a_second_apply_changes_nothing(make_store):
    async def body(store):
        stored, bad = await store.read()
        assert bad == [] and stored.objects == {}
        web = obj("Endpoint", "web1", tenant="blue", host="h1", netns="web1")
        rev = await store.commit(plan_apply([BLUE, web], stored), stored)
        again, _ = await store.read()
        assert again.revision >= rev > stored.revision
        assert {k: o for k, (o, _) in again.objects.items()} == {("TenantNetwork", "blue"): BLUE,
                                                                ("Endpoint", "web1"): web}
        assert again.address_of("web1") == A("10.20.0.1")
        assert plan_apply([BLUE, web], again).empty

    run(make_store, body)


def test_an_apply_from_a_stale_read_is_refused_and_writes_nothing(make_store):
    async def body(store):
        first, _ = await store.read()
        await store.commit(plan_apply([BLUE], first), first)
        stale, _ = await store.read()
        other = obj("TenantNetwork", "blue", vni=6000, subnet="10.20.0.0/24")
        await store.commit(plan_apply([other], stale), stale)  # someone else's apply
        with pytest.raises(ConflictError, match="another apply changed these objects since they were read"):
            await store.commit(plan_apply([obj("TenantNetwork", "blue", vni=7000, subnet="10.20.0.0/24"),
                                           obj("TenantNetwork", "red", vni=7001, subnet="10.20.0.0/24")], stale),
                               stale)
        now, _ = await store.read()
        assert {k: o for k, (o, _) in now.objects.items()} == {("TenantNetwork", "blue"): other}  # not red either

    run(make_store, body)


def test_two_applies_from_one_read_never_both_commit_even_on_different_keys(make_store):
    """Each was valid against the read (VNI 100 free; tenant blue there), together they are not: two
    tenants with one VNI (merged on the wire), or an endpoint of a deleted tenant."""
    async def body(store):
        s0, _ = await store.read()
        await store.commit(plan_apply([BLUE], s0), s0)
        s1, _ = await store.read()
        await store.commit(plan_apply([obj("TenantNetwork", "red", vni=100, subnet="10.30.0.0/24")], s1), s1)
        with pytest.raises(ConflictError):
            await store.commit(plan_apply([obj("TenantNetwork", "green", vni=100, subnet="10.31.0.0/24")], s1), s1)
        s2, _ = await store.read()
        await store.commit(plan_delete([("TenantNetwork", "blue")], s2), s2)
        with pytest.raises(ConflictError):
            await store.commit(plan_apply([obj("Endpoint", "a", tenant="blue", host="h1", netns="a")], s2), s2)
        s3, _ = await store.read()
        assert sorted(k[1] for k in s3.objects) == ["red"] and s3.claims == {}

    run(make_store, body)


def test_two_attaches_racing_for_one_address_one_wins(make_store):
    async def body(store):
        s0, _ = await store.read()
        await store.commit(plan_apply([BLUE], s0), s0)
        s1, _ = await store.read()
        a = plan_apply([obj("Endpoint", "a", tenant="blue", host="h1", netns="a")], s1)
        b = plan_apply([obj("Endpoint", "b", tenant="blue", host="h2", netns="b")], s1)
        assert set(a.add_claims) == set(b.add_claims)  # both chose 10.20.0.1 from the same read
        await store.commit(a, s1)
        with pytest.raises(ConflictError):
            await store.commit(b, s1)
        s2, _ = await store.read()
        assert [o.metadata.name for o in s2.endpoints_of("blue")] == ["a"]
        retry = plan_apply([obj("Endpoint", "b", tenant="blue", host="h2", netns="b")], s2)
        await store.commit(retry, s2)
        s3, _ = await store.read()
        assert (s3.address_of("a"), s3.address_of("b")) == (A("10.20.0.1"), A("10.20.0.2"))
        await store.commit(plan_delete([("TenantNetwork", "blue")], s3, force=True), s3)
        s4, _ = await store.read()
        assert s4.objects == {} and s4.claims == {}

    run(make_store, body)
