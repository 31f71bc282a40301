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

from netd.adapters.etcd import EtcdRegistry
from netd.agent.leases import SubnetLeaser
from netd.errors import NetdError
from netd.model import Lease, LeaseAttrs, parse_network_config


@dataclass
class Outcome:
    public_ip: ipaddress.IPv4Address
    lease: Lease | None
    error: str | None
    seconds: float
    round_trips: int


async def race(endpoint: str, prefix: str, config: str, n: int, seed: int = 1,
               configs: list[str] | None = None) -> list[Outcome]:
    """Write ``config``, then let ``n`` acquirers race, each on its own etcd connection (as
    separate hosts would be), so each one's RPC count is exact. ``configs``: the config each
    acquirer acts on, where they differ (hosts that read the config at different times)."""
    cfgs = [parse_network_config(c) for c in (configs or [config] * n)]
    connections = [EtcdRegistry(endpoint, prefix=prefix, timeout=30) for _ in range(n)]
    await connections[0].put_config(config.encode())
    start = asyncio.Event()

    async def one(i: int) -> Outcome:
        reg = connections[i]
        ip = ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.0.1")) + i)
        leaser = SubnetLeaser(reg, ip, 600, random.Random(seed * 100_000 + i))
        cfg = cfgs[i]
        attrs = LeaseAttrs(ip, cfg.backend.type, {})
        await start.wait()
        t0 = time.perf_counter()
        trips0 = reg.round_trips
        lease: Lease | None = None
        error: str | None = None
        try:
            snap = await reg.list_subnets()
            lease = await leaser.acquire(cfg, snap, attrs, None)
        except NetdError as exc:
            error = str(exc)
        return Outcome(ip, lease, error, time.perf_counter() - t0, reg.round_trips - trips0)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0.05)
    start.set()
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for conn in connections:
            await conn.close()
