"""The ObjectStore role: netd's own objects (netd/v1) in etcd under --netd-prefix (default /netd).

Layout (one key per object, JSON values carrying their apiVersion):
  * ``<prefix>/objects/<Kind>/<name>``: the document as the operator wrote it;
  * ``<prefix>/ipam/<tenant>/<ip>``: ``{"endpoint": name}``, the claim that keeps an address to one
    endpoint.
  * ``<prefix>/generation``: written by every commit; ``read`` returns its mod_revision.
Contract (tests/contract/test_object_store_contract.py runs it on both implementations):
  * ``read`` is one consistent snapshot of all three (one etcd transaction) with its revision;
  * ``commit(plan, stored)`` writes a plan in one transaction, all or nothing, and only if no other
    commit came since ``stored`` was read (the generation key unchanged) and none of the keys it
    touches changed (a new key: absent; an old one: its mod_revision), else ConflictError and
    nothing is written. The generation matters because the rules between objects were checked
    against the whole read: two applies from one read that each add a tenant with VNI 100, or a
    delete of a tenant and an attach to it, touch different keys, and both would commit.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any, Protocol

import aetcd.rpc as arpc
import aetcd.transactions as atx
import aetcd.utils as autils

from netd.adapters.etcd import EtcdConnection, EtcdTLS
from netd.core.specplan import ClaimKey, ObjKey, Plan, Stored
from netd.errors import ConflictError, RegistryRefused
from netd.model.specs import SpecObject, parse_object, to_document

#: etcd's default --max-txn-ops: more operations than this in one transaction are refused.
MAX_TXN_OPS = 128


class ObjectStore(Protocol):
    async def read(self) -> tuple[Stored, list[str]]:
        """The objects and claims, and the keys that could not be read (with why)."""
        ...

    async def commit(self, plan: Plan, stored: Stored) -> int:
        """Apply ``plan`` if nothing it touches changed since ``stored``; the new revision."""
        ...

    async def close(self) -> None: ...


def _decode(kind_name: str, raw: bytes) -> tuple[SpecObject | None, str | None]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        return None, f"{kind_name}: not valid JSON ({exc})"
    obj, issues = parse_object(value)
    if obj is None:
        return None, f"{kind_name}: " + "; ".join(f"{i.field}: {i.message}" for i in issues)
    if f"{obj.kind}/{obj.metadata.name}" != kind_name:
        return None, f"{kind_name}: holds {obj.kind} {obj.metadata.name}"
    return obj, None


def stored_from(objects: Sequence[tuple[str, bytes, int]], claims: Sequence[tuple[str, bytes, int]],
                revision: int, generation: int = 0) -> tuple[Stored, list[str]]:
    """Stored from (key below objects/, value, mod_revision) and (key below ipam/, ...) triples."""
    out: dict[ObjKey, tuple[SpecObject, int]] = {}
    bad: list[str] = []
    for name, raw, rev in objects:
        obj, why = _decode(name, raw)
        if obj is None:
            bad.append(f"objects/{why}")
        else:
            out[(obj.kind, obj.metadata.name)] = (obj, rev)
    held: dict[ClaimKey, tuple[str, int]] = {}
    for name, raw, rev in claims:
        try:
            tenant, ip = name.split("/", 1)
            owner = json.loads(raw)["endpoint"]
            held[(tenant, ipaddress.IPv4Address(ip))] = (str(owner), rev)
        except (ValueError, KeyError, TypeError) as exc:
            bad.append(f"ipam/{name}: {exc}")
    return Stored(out, held, revision, generation), bad


def encode(obj: SpecObject) -> bytes:
    return json.dumps(to_document(obj), sort_keys=True).encode()


def claim_value(endpoint: str) -> bytes:
    return json.dumps({"endpoint": endpoint}).encode()


class EtcdObjectStore(EtcdConnection):
    def __init__(self, endpoints: str | Sequence[str], prefix: str = "/netd", tls: EtcdTLS | None = None,
                 timeout: float = 5.0) -> None:
        super().__init__(endpoints, tls, timeout)
        self.prefix = prefix.rstrip("/")
        self._objects = f"{self.prefix}/objects/".encode()
        self._ipam = f"{self.prefix}/ipam/".encode()
        self._generation = f"{self.prefix}/generation".encode()

    def object_key(self, key: ObjKey) -> bytes:
        return self._objects + f"{key[0]}/{key[1]}".encode()

    def claim_key(self, claim: ClaimKey) -> bytes:
        return self._ipam + f"{claim[0]}/{claim[1]}".encode()

    async def _txn(self, what: str, compare: list[Any], success: list[Any]) -> Any:
        """One transaction, answered with etcd's own response (its header has the revision, which
        aetcd's transaction() drops)."""

        async def run(c: Any) -> Any:
            await c.connect()  # (aetcd's own calls connect lazily too)
            request = arpc.TxnRequest(compare=[x.build_message() for x in compare],
                                      success=c._ops_to_requests(success), failure=[])
            return await c.kvstub.Txn(request, timeout=self._timeout, metadata=c.metadata)

        return await self._call(what, run)

    async def read(self) -> tuple[Stored, list[str]]:
        response = await self._txn("read objects", [], [
            atx.Get(self._objects, autils.prefix_range_end(self._objects)),
            atx.Get(self._ipam, autils.prefix_range_end(self._ipam)), atx.Get(self._generation)])
        rows = [[(bytes(kv.key)[len(start):].decode(errors="replace"), bytes(kv.value), int(kv.mod_revision))
                 for kv in r.response_range.kvs]
                for start, r in zip((self._objects, self._ipam, self._generation), response.responses, strict=True)]
        generation = rows[2][0][2] if rows[2] else 0
        return stored_from(rows[0], rows[1], int(response.header.revision), generation)

    async def commit(self, plan: Plan, stored: Stored) -> int:
        compare: list[Any] = []
        ops: list[Any] = []
        for c in plan.changes:
            key = self.object_key(c.key)
            held = stored.objects.get(c.key)
            compare.append(atx.Mod(key) == held[1] if held else atx.Version(key) == 0)
            ops.append(atx.Delete(key) if c.after is None else atx.Put(key, encode(c.after)))
        for claim, endpoint in sorted(plan.add_claims.items()):
            key = self.claim_key(claim)
            held_claim = stored.claims.get(claim)
            compare.append(atx.Mod(key) == held_claim[1] if held_claim else atx.Version(key) == 0)
            ops.append(atx.Put(key, claim_value(endpoint)))
        for claim in plan.drop_claims:
            key = self.claim_key(claim)
            compare.append(atx.Mod(key) == stored.claims[claim][1])
            ops.append(atx.Delete(key))
        if ops:
            compare.append(atx.Mod(self._generation) == stored.generation if stored.generation
                           else atx.Version(self._generation) == 0)
            ops.append(atx.Put(self._generation, str(stored.revision).encode()))
        if len(ops) > MAX_TXN_OPS:
            raise RegistryRefused(f"this change writes {len(ops)} keys, more than etcd's default --max-txn-ops "
                                  f"({MAX_TXN_OPS}) lets one transaction write: split it (apply the files in parts; "
                                  "detach a tenant's endpoints in groups before deleting it), or raise "
                                  "--max-txn-ops on the etcd members", code="INVALID_ARGUMENT")
        if not ops:
            return stored.revision
        response = await self._txn("commit objects", compare, ops)
        if not response.succeeded:
            raise ConflictError("another apply changed these objects since they were read; nothing was written "
                                "(run it again)")
        return int(response.header.revision)


    # -- presence and status (the switch loop): keys bound to a host's kept-alive etcd lease -------
    async def grant(self, ttl: int) -> int:
        return int((await self._call("grant lease", lambda c: c.lease(ttl))).id)

    async def keepalive(self, lease_id: int) -> int:
        reply = await self._call("keepalive", lambda c: c.refresh_lease(lease_id))
        return max(0, int(reply.TTL)) if reply is not None else 0

    async def revoke(self, lease_id: int) -> None:
        try:
            await self._call("revoke lease", lambda c: c.revoke_lease(lease_id))
        except RegistryRefused as exc:
            if exc.code != "NOT_FOUND":
                raise

    async def put_bound(self, sub: str, value: bytes, lease_id: int) -> None:
        """``<prefix>/<sub>`` = value, bound to lease_id (it goes when the lease does)."""
        key = f"{self.prefix}/{sub}".encode()
        await self._call("put " + sub, lambda c: c.put(key, value, lease_id))

    async def delete_key(self, sub: str) -> None:
        key = f"{self.prefix}/{sub}".encode()
        await self._call("delete " + sub, lambda c: c.delete(key))

    async def read_prefix(self, sub: str) -> dict[str, bytes]:
        """Every key under ``<prefix>/<sub>`` (sub ends with "/"), by the rest of its name."""
        start = f"{self.prefix}/{sub}".encode()
        got = await self._call("list " + sub, lambda c: c.get_prefix(start))
        return {bytes(kv.key)[len(start):].decode(errors="replace"): bytes(kv.value) for kv in got}

    def watch_all(self, start_revision: int) -> Any:
        """Events under the whole prefix (objects, claims, hosts, status)."""
        return self.watch_prefix(f"{self.prefix}/".encode(), start_revision)

    def key_of(self, event: Any) -> str:
        return bytes(event.kv.key)[len(self.prefix) + 1:].decode(errors="replace")


class MemoryObjectStore:
    """The same contract in memory (tests; held to it by tests/contract/test_object_store_contract.py)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[bytes, int]] = {}  # "objects/Kind/name" | "ipam/tenant/ip" -> (value, mod_rev)
        self.revision = 1

    async def read(self) -> tuple[Stored, list[str]]:
        def rows(prefix: str) -> list[tuple[str, bytes, int]]:
            return [(k[len(prefix):], v, rev) for k, (v, rev) in sorted(self.keys.items()) if k.startswith(prefix)]

        return stored_from(rows("objects/"), rows("ipam/"), self.revision, self.keys.get("generation", (b"", 0))[1])

    async def commit(self, plan: Plan, stored: Stored) -> int:
        writes: dict[str, bytes | None] = {}
        expect: dict[str, int] = {}  # 0: absent
        for c in plan.changes:
            key = f"objects/{c.key[0]}/{c.key[1]}"
            held = stored.objects.get(c.key)
            expect[key] = held[1] if held else 0
            writes[key] = None if c.after is None else encode(c.after)
        for claim, endpoint in plan.add_claims.items():
            key = f"ipam/{claim[0]}/{claim[1]}"
            held_claim = stored.claims.get(claim)
            expect[key] = held_claim[1] if held_claim else 0
            writes[key] = claim_value(endpoint)
        for claim in plan.drop_claims:
            key = f"ipam/{claim[0]}/{claim[1]}"
            expect[key] = stored.claims[claim][1]
            writes[key] = None
        if not writes:
            return stored.revision
        expect["generation"] = stored.generation
        writes["generation"] = str(stored.revision).encode()
        if any(self.keys.get(k, (b"", 0))[1] != rev for k, rev in expect.items()):
            raise ConflictError("another apply changed these objects since they were read; nothing was written "
                                "(run it again)")
        self.revision += 1
        for key, value in writes.items():
            if value is None:
                self.keys.pop(key, None)
            else:
                self.keys[key] = (value, self.revision)
        return self.revision

    async def close(self) -> None:
        return None
