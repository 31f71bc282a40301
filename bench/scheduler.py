"""The scheduler's placement rate: 10,000 units on 1,000 machines with mixed constraints.

Part 1, the pure engine (netd.core.schedule.plan_reconcile): every unit placed in one reconcile,
placements/s; then one machine lost (its units placed again) and a second reconcile with nothing to
do, timed too.
Part 2, end to end through a real etcd (single member, loopback): the machines as records on
leases, the units submitted, then one pass of the engine (netd.agent.engine: one consistent read,
the plan, a transaction per placement, 32 at once) timed: placements/s written and committed.

Mixed constraints (per unit, by its index): a fiftieth pinned (MachineID), a twentieth following a
unit of another service (MachineOf), of the rest a third in a region (MachineMetadata) and a tenth
with Conflicts against its siblings; every one asking CPU and memory; 50 services, so siblings
spread. Machines: 4 cores, 8 GiB, one of three regions and two disk kinds.

Anchors (the issue's): Nomad placed 3,750 containers/s (C1M), Kubernetes 100-300 pods/s, fleet
topped out near 1,000 units. Run: python bench/scheduler.py [--units 10000] [--machines 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netd.core.schedule import plan_reconcile  # noqa: E402
from netd.model.units import Machine, Unit, unit_from_file  # noqa: E402


def machines(n: int) -> list[Machine]:
    return [Machine(f"{i:032x}", f"10.{i >> 8 & 255}.{i & 255}.1", {"region": f"r{i % 3}", "disk": "ssd" if i % 2
                                                                     else "hdd"}, cpu=4000, memory=8 << 30)
            for i in range(n)]


def units(n: int, fleet: list[Machine]) -> dict[str, Unit]:
    out: dict[str, Unit] = {}
    for i in range(n):
        svc = f"svc{i % 50}"
        x = []
        if i % 50 == 3:  # pinned: only that
            x.append(f"MachineID={fleet[i % len(fleet)].id}")
        elif i % 20 == 2 and i > 2:  # next to a unit of another service: only that
            x.append(f"MachineOf=svc{(i - 1) % 50}@{i - 1}.service")
        else:
            if i % 3 == 0:
                x.append(f"MachineMetadata=region=r{i % 3}")
            if i % 10 == 1:
                x.append(f"Conflicts={svc}@*.service")
        name = f"{svc}@{i}.service"
        out[name] = unit_from_file(name, "[Service]\nExecStart=/bin/run %i\n[X-Fleet]\n" + "\n".join(x) +
                                   f"\n[X-Netd]\nCPU={100 + i % 4 * 50}m\nMemory={32 + i % 8 * 16}M\n")
    return out


async def through_etcd(fleet: list[Machine], us: dict[str, Unit]) -> tuple[int, float]:
    from prometheus_client import CollectorRegistry

    from integration.etcd import EtcdServer
    from netd.adapters.fleet import EtcdFleetStore, UnitRecord, machine_record
    from netd.agent.engine import Engine

    with EtcdServer() as server:
        store = EtcdFleetStore(server.endpoint, prefix="/bench", timeout=30)
        try:
            lease = await store.grant(600)
            for m in fleet:  # the machines' records (one lease for all: what matters here is the engine)
                await store.put_bound(f"machines/{m.id}", machine_record(m), lease)
            view = await store.read_fleet()
            records = [UnitRecord(u.name, "fleet", u.text, "launched") for u in us.values()]
            for k in range(0, len(records), 100):
                await store.submit(records[k:k + 100], view)
            engine = Engine(store, fleet[0].id, lambda: lease, CollectorRegistry(), rng=random.Random(1))
            t0 = time.perf_counter()
            await engine._reconcile_pass()  # noqa: SLF001 - the pass itself is what is timed
            took = time.perf_counter() - t0
            placed = len((await store.read_fleet()).placements)
            return placed, took
        finally:
            await store.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--units", type=int, default=10_000)
    p.add_argument("--machines", type=int, default=1_000)
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} CPUs")
    fleet = machines(args.machines)
    us = units(args.units, fleet)
    desired = {n: "launched" for n in us}
    rng = random.Random(1)
    t0 = time.perf_counter()
    tasks, unplaced = plan_reconcile(us, desired, {}, fleet, rng)
    took = time.perf_counter() - t0
    placed = {t.unit: t.machine for t in tasks if t.action == "schedule"}
    print(f"{args.units} units on {args.machines} machines: {len(placed)} placed, {len(unplaced)} unplaced in "
          f"{took:.2f} s: {len(placed) / took:,.0f} placements/s (pure engine; Nomad's C1M: 3,750/s)")
    lost = fleet[0].id
    on_lost = [n for n, m in placed.items() if m == lost]
    t0 = time.perf_counter()
    tasks2, _ = plan_reconcile(us, desired, placed, fleet[1:], rng)
    took2 = time.perf_counter() - t0
    moved = [t for t in tasks2 if t.action == "schedule"]
    print(f"machine lost ({len(on_lost)} units on it): {len(moved)} placed again, {len(tasks2)} tasks, {took2:.2f} s")
    after = {**{n: m for n, m in placed.items() if m != lost}, **{t.unit: t.machine for t in moved}}
    t0 = time.perf_counter()
    tasks3, _ = plan_reconcile(us, desired, after, fleet[1:], rng)
    print(f"reconcile with nothing to do: {len(tasks3)} tasks in {time.perf_counter() - t0:.2f} s")
    placed2, took_etcd = asyncio.run(through_etcd(fleet, us))
    print(f"through etcd: {placed2} placements committed in {took_etcd:.2f} s: {placed2 / took_etcd:,.0f} "
          "placements/s (read, plan, a transaction each; target >= 1,000/s)")
    per_machine = {}
    for m in after.values():
        per_machine[m] = per_machine.get(m, 0) + 1
    print(f"units per machine: min {min(per_machine.values())}, max {max(per_machine.values())}, "
          f"machines used {len(per_machine)} of {len(fleet) - 1}")
    return 0 if placed and not tasks3 and placed2 == len(placed) else 1


if __name__ == "__main__":
    sys.exit(main())
