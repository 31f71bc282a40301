"""MemoryRegistry: an in-process Registry with etcd's semantics, for fast tests.

It is held to the same contract suite as EtcdRegistry (tests/contract), so the agent can be
tested against it without etcd. Lease expiry follows the injected clock and is applied on every
call and by the watch's poll, as etcd's lessor would.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from netd.adapters.registry import Snapshot, SubnetEvent
from netd.errors import CompactedError, ConflictError, RegistryUnavailable
from netd.model import Lease, LeaseAttrs, format_subnet_key, parse_lease_key, parse_subnet_key


@dataclass
class _Key:
    value: bytes
    lease_id: int
    mod_revision: int
    create_revision: int = 0


class MemoryRegistry:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._config: bytes | None = None
        self._subnets: dict[str, _Key] = {}
        self._leases: dict[int, tuple[int, float]] = {}  # id -> (ttl, deadline)
        self._lease_ids = itertools.count(0x1000)
        self._revision = 1
        self._compacted = 0
        self._history: list[SubnetEvent] = []
        self._changed = asyncio.Event()
        self._trips = 0
        self._watch_epoch = 0

    # -- helpers -------------------------------------------------------------------------
    def _tick(self) -> None:
        self._trips += 1
        now = self._clock()
        for lease_id, (_, deadline) in list(self._leases.items()):
            if deadline <= now:
                self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        self._leases.pop(lease_id, None)
        for key, entry in list(self._subnets.items()):
            if entry.lease_id == lease_id:
                self._delete(key)

    def _bump(self) -> int:
        self._revision += 1
        return self._revision

    def _record(self, event: SubnetEvent) -> None:
        self._history.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    def _delete(self, key: str) -> None:
        del self._subnets[key]
        rev = self._bump()
        self._record(SubnetEvent(parse_subnet_key(key), True, rev, None))

    def _lease_of(self, key: str) -> Lease:
        entry = self._subnets[key]
        subnet, ipv6_subnet = parse_lease_key(key)
        return Lease(subnet, LeaseAttrs.from_json(entry.value), entry.lease_id, entry.mod_revision, ipv6_subnet,
                     entry.create_revision)

    def _put(self, key: str, attrs: LeaseAttrs, lease_id: int) -> Lease:
        rev = self._bump()
        old = self._subnets.get(key)
        self._subnets[key] = _Key(attrs.to_json(), lease_id, rev, old.create_revision if old else rev)
        lease = self._lease_of(key)
        self._record(SubnetEvent(lease.subnet, False, rev, lease))
        return lease

    def _grant(self, ttl: int) -> int:
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = (ttl, self._clock() + ttl)
        return lease_id

    def _snapshot(self) -> Snapshot:
        return Snapshot(tuple(self._lease_of(k) for k in sorted(self._subnets)), self._revision)

    # -- Registry ------------------------------------------------------------------------
    async def get_config(self) -> bytes | None:
        self._tick()
        return self._config

    async def put_config(self, value: bytes) -> None:
        self._tick()
        self._config = value
        self._bump()

    async def list_subnets(self) -> Snapshot:
        self._tick()
        return self._snapshot()

    async def create_subnet(
        self, subnet: ipaddress.IPv4Network, attrs: LeaseAttrs, ttl: int,
        ipv6_subnet: ipaddress.IPv6Network | None = None,
    ) -> Lease:
        self._tick()
        key = format_subnet_key(subnet, ipv6_subnet)
        v4_key = format_subnet_key(subnet)
        if any(k == v4_key or k.startswith(v4_key + "&") for k in self._subnets):  # every key form of it
            raise ConflictError(f"subnet {subnet} is already held", current=self._snapshot())
        return self._put(key, attrs, self._grant(ttl) if ttl > 0 else 0)

    def put_key(self, name: str, attrs: LeaseAttrs) -> None:
        """Write subnets/<name> with no guard and no lease, as any etcd client (etcdctl) could: for
        tests of what others write."""
        self._tick()
        self._put(name, attrs, 0)

    async def update_subnet(self, current: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease:
        self._tick()
        key = current.key
        entry = self._subnets.get(key)
        if entry is None or entry.mod_revision != current.mod_revision:
            found = "absent" if entry is None else f"mod_revision {entry.mod_revision}"
            raise ConflictError(
                f"subnet {current.subnet} changed: expected mod_revision {current.mod_revision}, found {found}",
                current=self._snapshot(),
            )
        lease_id = entry.lease_id if ttl is None else self._grant(ttl)
        return self._put(key, attrs, lease_id)

    async def rename_subnet(self, current: Lease, ipv6_subnet: ipaddress.IPv6Network, attrs: LeaseAttrs,
                            ttl: int) -> Lease:
        self._tick()
        entry = self._subnets.get(current.key)
        prefix = format_subnet_key(current.subnet) + "&"
        if entry is None or entry.mod_revision != current.mod_revision or any(
                k.startswith(prefix) for k in self._subnets if k != current.key):
            raise ConflictError(f"subnet {current.subnet} changed or is held under another key since it was read",
                                current=self._snapshot())
        self._delete(current.key)
        return self._put(format_subnet_key(current.subnet, ipv6_subnet), attrs, self._grant(ttl) if ttl > 0 else 0)

    async def delete_subnet(
        self, subnet: ipaddress.IPv4Network, ipv6_subnet: ipaddress.IPv6Network | None = None
    ) -> bool:
        self._tick()
        key = format_subnet_key(subnet, ipv6_subnet)
        if key not in self._subnets:
            return False
        self._delete(key)
        return True

    async def keepalive(self, lease_id: int) -> int:
        self._tick()
        if lease_id not in self._leases:
            return 0
        ttl, _ = self._leases[lease_id]
        self._leases[lease_id] = (ttl, self._clock() + ttl)
        return ttl

    async def time_to_live(self, lease_id: int) -> int:
        self._tick()
        if lease_id not in self._leases:
            return 0
        return max(0, int(self._leases[lease_id][1] - self._clock()))

    async def revoke(self, lease_id: int) -> None:
        self._tick()
        self._drop_lease(lease_id)

    def compact(self, revision: int) -> None:
        """Forget history before ``revision`` (etcd's compaction), for tests."""
        self._compacted = max(self._compacted, revision)
        self._history = [e for e in self._history if e.revision >= revision]

    def break_watches(self) -> None:
        """Make every open watch fail with RegistryUnavailable, as etcd going away does (tests)."""
        self._watch_epoch += 1
        self._changed.set()

    async def watch_subnets(self, start_revision: int) -> AsyncIterator[list[SubnetEvent]]:
        if start_revision < self._compacted:
            raise CompactedError(self._compacted)
        next_rev = start_revision
        epoch = self._watch_epoch
        while True:
            if epoch != self._watch_epoch:
                raise RegistryUnavailable("memory registry: watch broken")
            self._tick()
            batch = [e for e in self._history if e.revision >= next_rev]
            if batch:
                next_rev = batch[-1].revision + 1
                yield batch
                continue
            try:
                await asyncio.wait_for(self._changed.wait(), 0.1)
            except TimeoutError:
                pass

    async def close(self) -> None:
        return None

    @property
    def round_trips(self) -> int:
        return self._trips
