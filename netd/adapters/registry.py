"""The Registry role: where leases and the network config live (etcd, or memory in tests).

Contract (proven for every implementation by tests/contract):
  * ``create_subnet`` is create-if-absent over every key form naming the IPv4 subnet (the v4-only
    ``10.5.9.0-24`` and any dual-stack ``10.5.9.0-24&...``): a lost race raises ConflictError,
    whose ``current`` is a fresh Snapshot when the implementation could read it in the same round
    trip; ``rename_subnet`` is one atomic step under the same guard;
  * ``update_subnet`` is compare-and-swap on the key's mod_revision; a lost race raises
    ConflictError; it never writes a key that changed since it was read;
  * a key bound to an etcd lease disappears when the lease expires or is revoked, and the
    watch reports that as a delete;
  * ``watch_subnets(start_revision)`` replays every change from that revision; a revision
    that was compacted raises CompactedError; an unreachable store raises RegistryUnavailable.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from netd.model import Lease, LeaseAttrs


@dataclass(frozen=True)
class Snapshot:
    leases: tuple[Lease, ...]
    revision: int
    #: Keys under subnets/ that could not be parsed, with the reason (shown to operators).
    invalid: tuple[str, ...] = ()

    def find(self, subnet: ipaddress.IPv4Network) -> Lease | None:
        for lease in self.leases:
            if lease.subnet == subnet:
                return lease
        return None

    def find_key(self, key: str) -> Lease | None:
        """The lease under exactly this key name (``10.5.9.0-24`` or a dual-stack name)."""
        return next((lease for lease in self.leases if lease.key == key), None)


@dataclass(frozen=True)
class SubnetEvent:
    subnet: ipaddress.IPv4Network
    deleted: bool
    revision: int
    lease: Lease | None  # None for deletes and for values that do not parse


class Registry(Protocol):
    async def get_config(self) -> bytes | None: ...

    async def put_config(self, value: bytes) -> None: ...

    async def list_subnets(self) -> Snapshot: ...

    async def create_subnet(
        self, subnet: ipaddress.IPv4Network, attrs: LeaseAttrs, ttl: int,
        ipv6_subnet: ipaddress.IPv6Network | None = None,
    ) -> Lease:
        """Create-if-absent of the key naming ``subnet`` (and ``ipv6_subnet``: flannel's
        dual-stack key)."""
        ...

    async def update_subnet(self, current: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease:
        """CAS on ``current.mod_revision``. ttl=None keeps the key's lease (or reservation);
        otherwise the key is bound to a newly granted lease of that TTL."""
        ...

    async def rename_subnet(self, current: Lease, ipv6_subnet: ipaddress.IPv6Network, attrs: LeaseAttrs,
                            ttl: int) -> Lease:
        """Our v4-only key ``current`` becomes the dual-stack key naming ``ipv6_subnet`` too, in
        one step (EnableIPv6 turned on): CAS on ``current.mod_revision``, and no other key may
        name the IPv4 subnet; the new key is bound to a new lease of ``ttl``."""
        ...

    async def delete_subnet(
        self, subnet: ipaddress.IPv4Network, ipv6_subnet: ipaddress.IPv6Network | None = None
    ) -> bool: ...

    async def keepalive(self, lease_id: int) -> int:
        """Refresh an etcd lease; returns the TTL now left, 0 if the lease no longer exists."""
        ...

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds left on a lease (0 if gone); never refreshes it."""
        ...

    async def revoke(self, lease_id: int) -> None: ...

    def watch_subnets(self, start_revision: int) -> AsyncIterator[list[SubnetEvent]]: ...

    async def close(self) -> None: ...

    @property
    def round_trips(self) -> int: ...
