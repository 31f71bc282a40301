"""N hosts acquiring subnets at once against one etcd, through the agent's own SubnetLeaser.

Used by tests (correctness: distinct subnets, one clear error when the range is full) and by
bench/lease.py (latency and etcd round trips per acquire).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from dataclasses import dataclass
from typing import Any

from netd.adapters.etcd import EtcdRegistry
from netd.agent.leases import SubnetLeaser
from netd.errors import NetdError
from netd.model import Lease, LeaseAttrs, parse_network_config


class CountingRegistry:
    """Counts one acquirer's calls (each is one etcd round trip) on a shared connection."""

    def __init__(self, inner: EtcdRegistry) -> None:
        self._inner = inner
        self.round_trips = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.round_trips += 1
            return await attr(*args, **kwargs)

        return counted


@dataclass
class Outcome:
    public_ip: ipaddress.IPv4Address
    lease: Lease | None
    error: str | None
    seconds: float
    round_trips: int


async def race(endpoint: str, prefix: str, config: str, n: int, clients: int = 20, seed: int = 1) -> list[Outcome]:
    """Write ``config``, then let ``n`` acquirers (sharing ``clients`` etcd connections) race."""
    cfg = parse_network_config(config)
    connections = [EtcdRegistry(endpoint, prefix=prefix, timeout=30) for _ in range(clients)]
    await connections[0].put_config(config.encode())
    start = asyncio.Event()

    async def one(i: int) -> Outcome:
        reg = CountingRegistry(connections[i % clients])
        ip = ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.0.1")) + i)
        leaser = SubnetLeaser(reg, ip, 600, random.Random(seed * 100_000 + i))  # type: ignore[arg-type]
        attrs = LeaseAttrs(ip, cfg.backend.type, {})
        await start.wait()
        t0 = time.perf_counter()
        lease: Lease | None = None
        error: str | None = None
        try:
            snap = await reg.list_subnets()
            lease = await leaser.acquire(cfg, snap, attrs, None)
        except NetdError as exc:
            error = str(exc)
        return Outcome(ip, lease, error, time.perf_counter() - t0, reg.round_trips)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0.05)
    start.set()
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for conn in connections:
            await conn.close()
