"""The engine: one leader at a time places units on machines.

Election as etcd's own recipe (clientv3/concurrency): each netd stands with a key
``engine/leader/<lease>`` bound to its machine's lease; the candidate whose key was created first
leads; the others wait for the key just before theirs to go (when its netd stops or its lease
expires), not for the leader's (no herd when a leader goes).

The leader's loop is level-triggered: a watch on ``units/``, ``machines/`` and ``placements/``
wakes it; each pass reads the fleet in one consistent read, plans with netd.core.schedule (pure:
filter, score, seeded tie-break) and writes each task in a transaction of its own that holds only
if what it was decided from still holds; a failed one is left to the next pass. Placements are
bound to the placed machine's lease: a machine whose lease expires takes its placements with it
and the next pass places its units elsewhere. Why a unit waits is written to ``engine/unplaced``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from netd.adapters.fleet import EtcdFleetStore, FleetView
from netd.aio import run_supervised
from netd.core.schedule import Task, plan_reconcile
from netd.errors import CompactedError, RegistryRefused, RegistryUnavailable
from netd.model.units import Unit, UnitError

log = logging.getLogger(__name__)
#: placements written at once (each its own transaction): etcd serves them in parallel
CONCURRENT_TASKS = 32


class EngineMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.leader = Gauge("netd_engine_leader", "1 while this netd's engine leads", registry=r)
        self.passes = Counter("netd_engine_passes", "Reconcile passes run while leading", registry=r)
        self.placements = Counter("netd_engine_placements", "Units placed (schedule tasks written)", registry=r)
        self.unschedules = Counter("netd_engine_unschedules", "Placements removed, by reason", ["reason"],
                                   registry=r)
        self.conflicts = Counter("netd_engine_task_conflicts", "Tasks refused because the fleet changed first",
                                 registry=r)
        self.unplaced = Gauge("netd_engine_unplaced", "Wanted units no machine takes", registry=r)


@dataclass
class EngineStatus:
    leader: str = ""
    leading: bool = False
    unplaced: dict[str, str] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)


class Engine:
    def __init__(self, store: EtcdFleetStore, machine: str, lease: Callable[[], int | None],
                 registry: CollectorRegistry, resync_interval: float = 5.0, rng: random.Random | None = None) -> None:
        self.store = store
        self.machine = machine
        self.lease = lease
        self.metrics = EngineMetrics(registry)
        self.status = EngineStatus()
        self.resync_interval = resync_interval
        self.rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._parsed: dict[str, tuple[int, Unit]] = {}  # name -> (mod_revision, unit): parsed once
        self._leader: tuple[str, int] | None = None

    def readiness(self) -> dict[str, object]:
        return {"leader": self.status.leader, "leading": self.status.leading,
                **({"unplaced": dict(self.status.unplaced)} if self.status.unplaced else {})}

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            await run_supervised("engine", (("", lambda: self._lead(stopping)),
                                            ("-watch", lambda: self._watch(stopping))),
                                 stopping, lambda n, e: None, lambda n: None)
        finally:
            self.metrics.leader.set(0)

    async def _lead(self, stopping: asyncio.Event) -> None:
        mine = None
        while not stopping.is_set():
            lease = self.lease()
            if lease is None:
                await asyncio.sleep(0.2)
                continue
            try:
                mine = await self.store.campaign(lease, self.machine)
                candidates = await self.store.candidates()
            except (RegistryUnavailable, RegistryRefused) as exc:
                log.debug("engine election: %s", exc)
                self._set_leading(False, "")
                await asyncio.sleep(1)
                continue
            if not candidates:
                await asyncio.sleep(0.2)
                continue
            leader = candidates[0]
            if leader[1] != mine:
                self._set_leading(False, leader[2])
                keys = [c[1] for c in candidates]
                ahead = keys.index(mine) if mine in keys else len(keys)
                await self._wait_gone(candidates[max(0, ahead - 1)][1], stopping)  # the one just before ours
                continue
            self._set_leading(True, self.machine)
            await self._reconcile_pass((leader[1], leader[0]))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.resync_interval)
            except TimeoutError:
                pass
            await asyncio.sleep(0.05)

    def _set_leading(self, leading: bool, leader: str) -> None:
        if leading != self.status.leading:
            (log.info if leading else log.debug)("engine: %s", "leading" if leading else f"following {leader}")
        self.status.leading, self.status.leader = leading, leader
        self.metrics.leader.set(1 if leading else 0)

    async def _wait_gone(self, key: str, stopping: asyncio.Event) -> None:
        """Until the candidate before ours goes (or a resync interval passes: the election is read again)."""
        async def gone() -> None:
            async for event in self.store.watch_prefix(self.store.key(key), None):  # type: ignore[arg-type]
                if event.kind == "DELETE":
                    return

        try:
            await asyncio.wait_for(gone(), self.resync_interval)
        except (TimeoutError, CompactedError, RegistryUnavailable, RegistryRefused):
            pass

    async def _watch(self, stopping: asyncio.Event) -> None:
        """Wake the leader's pass on a change of units, machines or placements."""
        async def one(sub: str) -> None:
            while not stopping.is_set():
                try:
                    async for _ in self.store.watch_prefix(self.store.key(sub), None):  # type: ignore[arg-type]
                        if self.status.leading:
                            self._wake.set()
                except (CompactedError, RegistryUnavailable, RegistryRefused):
                    await asyncio.sleep(0.5)

        await asyncio.gather(one("units/"), one("machines/"), one("placements/"))

    async def _reconcile_pass(self, leader: tuple[str, int] | None = None) -> None:
        """One pass; ``leader``: (our election key, its create revision), the fence of every write."""
        try:
            view = await self.store.read_fleet()
        except (RegistryUnavailable, RegistryRefused) as exc:
            log.warning("engine: %s", exc)
            return
        self._leader = leader
        units: dict[str, Unit] = {}
        bad = list(view.bad)
        parsed: dict[str, tuple[int, Unit]] = {}
        for name, (rec, mod) in view.units.items():
            cached = self._parsed.get(name)
            if cached is not None and cached[0] == mod:  # parsed before (10,000 units: 0.8 s each pass)
                units[name] = cached[1]
                parsed[name] = cached
                continue
            try:
                units[name] = rec.unit()
                parsed[name] = (mod, units[name])
            except (UnitError, ValueError) as exc:
                bad.append(f"units/{name}: {exc}")
        self._parsed = parsed
        desired = {name: rec.desired for name, (rec, _) in view.units.items() if name in units}
        # a unit that cannot be read (rules tightened by an upgrade) stays where it is: never taken
        # for destroyed, never placed anew
        placements = {u: m for u, (m, _) in view.placements.items() if u in units or u not in view.units}
        machines = [m for m, _, _ in view.machines.values()]
        tasks, unplaced = await asyncio.to_thread(plan_reconcile, units, desired, placements, machines, self.rng)
        self.metrics.passes.inc()
        by_unit: dict[str, list[Task]] = {}
        for task in tasks:  # a unit's own tasks in order (off its old machine, then onto the new one)
            by_unit.setdefault(task.unit, []).append(task)
        gate = asyncio.Semaphore(CONCURRENT_TASKS)

        async def apply(unit_tasks: list[Task]) -> None:
            async with gate:
                for task in unit_tasks:
                    if not await self._apply(task, view):
                        return

        results = await asyncio.gather(*(apply(t) for t in by_unit.values()), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, RegistryUnavailable | RegistryRefused):
                raise failure
        if failures:
            log.warning("engine: %d units' tasks failed (%s): next pass", len(failures), failures[0])
            self._wake.set()
        await self._refresh(view, tasks)
        if unplaced != self.status.unplaced:
            for name, why in sorted(unplaced.items()):
                if self.status.unplaced.get(name) != why:
                    log.warning("engine: %s has no machine: %s", name, why)
            try:
                await self.store.put_json("engine/unplaced", unplaced)
            except (RegistryUnavailable, RegistryRefused) as exc:
                log.debug("engine: %s", exc)
        self.status.unplaced, self.status.bad = unplaced, bad
        self.metrics.unplaced.set(len(unplaced))

    async def _apply(self, task: Task, view: FleetView) -> bool:
        done = await self.store.apply_task(task, view, self._leader)
        if not done:
            self.metrics.conflicts.inc()
            log.info("engine: %s %s refused (the fleet changed): next pass", task.action, task.unit)
            self._wake.set()
            return False
        if task.action == "schedule":
            self.metrics.placements.inc()
            log.debug("engine: %s placed on %s", task.unit, task.machine)
            view.placements[task.unit] = (task.machine, 0)
        else:
            self.metrics.unschedules.labels(task.reason.split(":")[0].split(" (")[0]).inc()
            log.info("engine: %s taken off %s: %s", task.unit, task.machine, task.reason)
            view.placements.pop(task.unit, None)
        return True

    async def _refresh(self, view: FleetView, tasks: list[Task]) -> None:
        """A placed unit whose record changed since it was placed (started, stopped): its machine's
        copy follows (the machine watches only its own schedule)."""
        copies = await self.store.read_json("schedule/")
        scheduled_now = {t.unit for t in tasks if t.action == "schedule"}
        for key, value in copies.items():
            machine, _, unit = key.partition("/")
            if unit in scheduled_now or unit not in view.units or not isinstance(value, dict):
                continue
            rec = view.units[unit][0]
            changed = value.get("desired") != rec.desired or value.get("text") != rec.text
            if changed and await self.store.refresh_schedule(unit, machine, view, self._leader):
                log.info("engine: %s on %s is now %s", unit, machine, rec.desired)

