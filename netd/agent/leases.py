"""Acquiring a subnet lease: the pure choice (netd.core.allocate) applied through a Registry.

Round trips per acquire on etcd: one list (done by the caller), one lease grant and one
transaction. A lost race costs one more transaction: its failure branch returns the fresh subnet
list (no re-list), and the adapter keeps the lease it granted for the retry (flannel re-reads
everything).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random

from netd.adapters.registry import Registry, Snapshot
from netd.agent.metrics import AgentMetrics
from netd.core.allocate import ChoiceKind, SubnetChoice, choose_subnet
from netd.errors import ConflictError, NetdError
from netd.model import Lease, LeaseAttrs, NetworkConfig

log = logging.getLogger(__name__)

MAX_ACQUIRE_ATTEMPTS = 50


class SubnetLeaser:
    def __init__(
        self,
        registry: Registry,
        public_ip: ipaddress.IPv4Address,
        ttl: int,
        rng: random.Random,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.registry = registry
        self.public_ip = public_ip
        self.ttl = ttl
        self.rng = rng
        self.metrics = metrics

    async def acquire(
        self, cfg: NetworkConfig, snap: Snapshot, attrs: LeaseAttrs, previous: ipaddress.IPv4Network | None,
        previous_ipv6: ipaddress.IPv6Network | None = None,
    ) -> Lease:
        """Take a subnet; a lost race retries (bounded) with the fresh list the conflict carried.

        Raises NoFreeSubnetError when the range is full, NetdError after too many lost races.
        """
        for attempt in range(MAX_ACQUIRE_ATTEMPTS):
            choice = choose_subnet(cfg, snap.leases, self.public_ip, previous, self.rng, previous_ipv6)
            try:
                lease = await self._take(choice, attrs)
            except ConflictError as exc:
                if self.metrics:
                    self.metrics.conflicts.inc()
                log.debug("lost the race for %s (attempt %d): %s", choice.subnet, attempt + 1, exc)
                snap = exc.current if isinstance(exc.current, Snapshot) else await self.registry.list_subnets()
                await asyncio.sleep(self.rng.uniform(0, 0.01 * min(attempt + 1, 10)))
                continue
            if self.metrics:
                self.metrics.acquisitions.labels(choice.kind.value).inc()
            log.info("acquired subnet %s%s (%s) for %s, %s", lease.subnet,
                     f" and {lease.ipv6_subnet}" if lease.ipv6_subnet else "", choice.kind.value, self.public_ip,
                     "reservation" if lease.is_reservation else f"lease {lease.lease_id:x}")
            return lease
        raise NetdError(f"could not acquire a subnet: lost {MAX_ACQUIRE_ATTEMPTS} races in a row")

    async def update(self, current: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease:
        log.info("updating lease %s attributes to %s", current.subnet, attrs.to_json().decode())
        return await self.registry.update_subnet(current, attrs, ttl)

    async def _take(self, choice: SubnetChoice, attrs: LeaseAttrs) -> Lease:
        kind, existing = choice.kind, choice.existing
        if existing is not None and kind is ChoiceKind.UPGRADE:
            # Our lease from before EnableIPv6: the same IPv4 subnet under a dual-stack key, the old
            # key deleted in the same transaction.
            assert choice.ipv6_subnet is not None
            lease = await self.registry.rename_subnet(existing, choice.ipv6_subnet, attrs, self.ttl)
            log.info("renamed lease %s to %s (EnableIPv6)", existing.key, lease.key)
            return lease
        if existing is not None and kind is ChoiceKind.RESERVATION:
            return existing if existing.attrs == attrs else await self.update(existing, attrs, None)
        if existing is not None and kind is ChoiceKind.REUSE:
            # Adopt the etcd lease our previous run held: no write at all if nothing changed,
            # so peers see no event across a restart.
            if await self.registry.keepalive(existing.lease_id) > 0:
                return existing if existing.attrs == attrs else await self.update(existing, attrs, None)
            return await self.update(existing, attrs, self.ttl)
        return await self.registry.create_subnet(choice.subnet, attrs, self.ttl, ipv6_subnet=choice.ipv6_subnet)
