"""The Agent in-process: MemoryRegistry (held to the etcd contract) + the real vxlan backend in a namespace."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess

import pytest
from pyroute2 import IPRoute

from integration.cluster import entered
from netd.adapters.memory import MemoryRegistry
from netd.adapters.netlink import VxlanBackend, find_underlay
from netd.agent.agent import Agent, AgentOptions
from netd.model import LeaseAttrs, NetworkConfig

CONFIG = b'{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'


def peer(i: int) -> LeaseAttrs:
    return LeaseAttrs(ipaddress.IPv4Address(f"10.250.0.{10 + i}"), "vxlan",
                      {"VNI": 1, "VtepMAC": f"0e:00:00:00:00:{i:02x}"})


def routes(ns_name: str) -> set[str]:
    out = subprocess.run(["ip", "-n", ns_name, "route", "show", "proto", "101"], capture_output=True, text=True)
    return {line.split()[0] for line in out.stdout.splitlines()}


def start_agent(reg: MemoryRegistry, ns: str, tmp_path, **options) -> tuple[Agent, asyncio.Task]:
    def make_backend(cfg: NetworkConfig) -> VxlanBackend:
        ipr = IPRoute(netns=ns)
        return VxlanBackend(cfg, find_underlay(ipr, "eth0", None), ipr)

    opts = AgentOptions(public_ip=ipaddress.IPv4Address("10.250.0.1"), subnet_file=str(tmp_path / "subnet.env"),
                        resync_interval=3600, **options)
    agent = Agent(reg, make_backend, opts)
    return agent, asyncio.create_task(agent.run())


async def until(cond, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_watch_resumes_after_a_break_and_relists_after_compaction(ns, tmp_path):
    async def main() -> None:
        reg = MemoryRegistry()
        await reg.put_config(CONFIG)
        agent, task = start_agent(reg, ns, tmp_path)
        try:
            await until(lambda: agent.status.ready)
            p1 = await reg.create_subnet(ipaddress.IPv4Network("10.5.201.0/24"), peer(1), 60)
            await until(lambda: routes(ns) == {"10.5.201.0/24"})

            # the watch breaks; while it is down a peer joins and history is compacted away
            reg.break_watches()
            await reg.create_subnet(ipaddress.IPv4Network("10.5.202.0/24"), peer(2), 60)
            await reg.delete_subnet(p1.subnet)
            reg.compact((await reg.list_subnets()).revision)
            # (a sync already queued may install 10.5.202.0/24 before the watch's back-off ends: what
            # is asserted is that the restarted watch meets the compaction and re-lists)
            restarts = agent.metrics.watch_restarts
            await until(lambda: restarts.labels("compacted")._value.get() == 1)
            await until(lambda: routes(ns) == {"10.5.202.0/24"})
            assert restarts.labels("unavailable")._value.get() >= 1

            # after the re-list the (new) watch delivers events again
            await reg.create_subnet(ipaddress.IPv4Network("10.5.203.0/24"), peer(3), 60)
            await until(lambda: routes(ns) == {"10.5.202.0/24", "10.5.203.0/24"})
            assert (tmp_path / "subnet.env").read_text().startswith("FLANNEL_NETWORK=10.5.0.0/16\n")
        finally:
            agent.stop()
            await asyncio.wait_for(task, 10)
            agent.close()

    asyncio.run(main())


@pytest.mark.parametrize("ttl", [2])
def test_lost_lease_is_reacquired_with_the_same_subnet(ns, tmp_path, ttl):
    async def main() -> None:
        reg = MemoryRegistry()
        await reg.put_config(CONFIG)
        agent, task = start_agent(reg, ns, tmp_path, lease_ttl=ttl)
        try:
            await until(lambda: agent.status.ready)
            first = agent.lease
            assert first is not None
            await reg.revoke(first.lease_id)  # an operator revokes it (or it expired while we were frozen)
            await until(lambda: agent.lease is not None and agent.lease.lease_id != first.lease_id)
            assert agent.lease.subnet == first.subnet
            assert (await reg.list_subnets()).find(first.subnet).attrs.public_ip == agent.opts.public_ip
        finally:
            agent.stop()
            await asyncio.wait_for(task, 10)
            agent.close()

    asyncio.run(main())


class FlakyKeepalive(MemoryRegistry):
    """MemoryRegistry (held to the etcd contract) whose keepalive has a bug the first two times."""

    def __init__(self) -> None:
        super().__init__()
        self.bugs = 2
        self.kept_alive = 0

    async def keepalive(self, lease_id: int) -> int:
        if self.bugs:
            self.bugs -= 1
            raise RuntimeError("a bug in keepalive")
        ttl = await super().keepalive(lease_id)
        self.kept_alive += ttl > 0
        return ttl


def test_a_task_that_dies_is_logged_counted_shown_on_readyz_and_restarted(ns, tmp_path, caplog):
    async def main() -> None:
        reg = FlakyKeepalive()
        await reg.put_config(CONFIG)
        agent, task = start_agent(reg, ns, tmp_path, lease_ttl=2)  # a keepalive every 0.67 s
        seen_down: list[str] = []
        try:
            async def watch_readiness() -> None:
                while True:
                    ready, reason, _ = agent.readiness()
                    if not ready and reason.startswith("task keepalive failed"):
                        seen_down.append(reason)
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch_readiness())
            await until(lambda: reg.bugs == 0 and agent.metrics.task_failures.labels("keepalive")._value.get() == 2,
                        timeout=10)
            await until(lambda: agent.readiness()[0] and "keepalive" not in agent.failed_tasks, timeout=10)
            watcher.cancel()
            assert seen_down and "RuntimeError: a bug in keepalive" in seen_down[0]
            assert agent.readiness()[2]["task_restarts"] == {"keepalive": 2}
            first = agent.lease
            kept = reg.kept_alive
            await until(lambda: reg.kept_alive >= kept + 4, timeout=10)  # 4 x 0.67 s: past the 2 s TTL
            assert agent.lease == first and (await reg.list_subnets()).find_key(first.key) is not None
            assert "task keepalive failed; restarting it" in caplog.text and "a bug in keepalive" in caplog.text
        finally:
            agent.stop()
            await asyncio.wait_for(task, 10)
            agent.close()

    asyncio.run(main())


DUAL = b'{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"udp"}}'


def test_another_key_for_our_subnet_does_not_make_us_think_we_lost_it(ns, tmp_path):
    """Our dual-stack key 10.5.X.0-24&fd00:...; a bogus v4-only key for the same subnet sorts before
    it. The agent looks for its lease by its key: it stays, and the bogus one is refused as a peer."""
    from netd.adapters.udp import UdpBackend

    async def main() -> None:
        reg = MemoryRegistry()
        await reg.put_config(DUAL)

        def make_backend(cfg: NetworkConfig) -> UdpBackend:
            ipr = IPRoute(netns=ns)
            with entered(ns):
                return UdpBackend(cfg, find_underlay(ipr, "eth0", None), ipr)

        opts = AgentOptions(public_ip=ipaddress.IPv4Address("10.250.0.1"), subnet_file=str(tmp_path / "subnet.env"),
                            resync_interval=0.2)
        agent = Agent(reg, make_backend, opts)
        task = asyncio.create_task(agent.run())
        try:
            await until(lambda: agent.status.ready)
            ours = agent.lease
            assert ours is not None and ours.ipv6_subnet is not None
            bogus = f"{ours.subnet.network_address}-{ours.subnet.prefixlen}"
            reg.put_key(bogus, LeaseAttrs(ipaddress.IPv4Address("10.250.0.66"), "udp", {}))
            assert [x.key for x in (await reg.list_subnets()).leases if x.subnet == ours.subnet] == [bogus, ours.key]
            runs = agent.metrics.reconcile_runs._value.get()
            await until(lambda: agent.metrics.reconcile_runs._value.get() >= runs + 3)
            assert agent.lease is not None and agent.lease.key == ours.key and agent.status.ready
            assert agent.metrics.leases_rejected.labels("overlaps_own")._value.get() == 1
        finally:
            agent.stop()
            await asyncio.wait_for(task, 10)
            agent.close()

    asyncio.run(main())


def test_a_refusal_is_cleared_by_the_same_call_succeeding_not_by_another(tmp_path):
    """etcd may let netd read the config (sync) and refuse the keepalive: the keepalive's refusal
    stays on /readyz (logged once) until a keepalive succeeds."""
    from netd.errors import RegistryRefused

    agent = Agent(MemoryRegistry(), lambda cfg: None, AgentOptions(  # type: ignore[arg-type,return-value]
        public_ip=ipaddress.IPv4Address("10.250.0.1"), subnet_file=str(tmp_path / "subnet.env")))
    agent._etcd_error("keepalive", RegistryRefused("etcd refused keepalive: PERMISSION_DENIED", "PERMISSION_DENIED"))
    agent._etcd_ok("sync")
    agent._etcd_ok("watch")
    details = agent.readiness()[2]
    assert details["etcd_refused"] == "keepalive: etcd refused keepalive: PERMISSION_DENIED"
    agent._etcd_ok("keepalive")
    assert "etcd_refused" not in agent.readiness()[2]
