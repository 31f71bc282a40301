"""The scheduler's decisions, pure: where each unit runs (filter -> score -> random tie-break), and
what the engine must do to make what is placed match what is desired.

Filter (fleet's AbleToRun, plus resources): MachineID, every MachineMetadata key (one of its
values), MachineOf (the peers are on that machine, placed earlier or in this pass), Conflicts both
ways (glob on the other's name), Replaces (a machine holding a unit this one replaces, or that
replaces this one, stays eligible: that unit is evicted and placed again elsewhere), CPU and memory
left (0 on a machine: not limited).

Score, lowest first: siblings already there (units of the same service: spread them), then the
share of the machine allocated after placing (least allocated; by unit count where a machine sets
no capacity). Like Nomad's scheduler, a unit scores a random sample of ``sample(n)`` eligible
machines (all of them in a small cluster), not every machine: placement stays O(units), and ties
and near-ties spread by the seeded RNG, which the caller passes in (no RNG or clock of its own).

Global units are not placed by the engine: every machine whose metadata matches runs them
(``global_units_for``), as in fleet.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from netd.model.units import Machine, Unit, matches


def sample(n: int) -> int:
    """How many eligible machines a unit scores, of ``n``: all of a small cluster, 2 log2 n of a big one."""
    return n if n <= 16 else max(16, 2 * math.ceil(math.log2(n)))


def metadata_fits(unit: Unit, machine: Machine) -> bool:
    return all(machine.metadata.get(key) in values for key, values in unit.spec.placement.machineMetadata.items())


def global_units_for(machine: Machine, units: Iterable[Unit]) -> list[Unit]:
    """The global units this machine runs: those whose MachineMetadata it matches."""
    return sorted((u for u in units if u.is_global and not u.is_template and metadata_fits(u, machine)),
                  key=lambda u: u.name)


def sibling_key(unit: Unit) -> str:
    """Units that should spread: one service (``web@1`` and ``web@2``, or units naming one service)."""
    return unit.service


def _picky(u: Unit) -> bool:
    return bool(u.spec.placement.conflicts or u.spec.placement.replaces)


@dataclass
class _MachineLoad:
    machine: Machine
    units: dict[str, Unit] = field(default_factory=dict)
    cpu: int = 0
    memory: int = 0
    siblings: dict[str, int] = field(default_factory=dict)
    #: its units with Conflicts or Replaces: the only ones a unit without either must be checked against
    picky: dict[str, Unit] = field(default_factory=dict)

    def add(self, u: Unit) -> None:
        self.units[u.name] = u
        if _picky(u):
            self.picky[u.name] = u
        self.cpu += u.spec.resources.cpu
        self.memory += u.spec.resources.memory
        self.siblings[sibling_key(u)] = self.siblings.get(sibling_key(u), 0) + 1

    def remove(self, name: str) -> Unit | None:
        self.picky.pop(name, None)
        u = self.units.pop(name, None)
        if u is not None:
            self.cpu -= u.spec.resources.cpu
            self.memory -= u.spec.resources.memory
            self.siblings[sibling_key(u)] -= 1
        return u

    def share(self, extra_cpu: int = 0, extra_memory: int = 0, extra_units: int = 0) -> float:
        m = self.machine
        shares = [(self.cpu + extra_cpu) / m.cpu if m.cpu else None,
                  (self.memory + extra_memory) / m.memory if m.memory else None]
        known = [s for s in shares if s is not None]
        return max(known) if known else (len(self.units) + extra_units) / 1000.0


def replaces(unit: Unit, other: Unit) -> bool:
    """``unit`` replaces ``other``: its Replaces matches the other's name, and not the other way
    round (both ways would be a loop; fleet ignores it too)."""
    one = any(matches(g, other.name) for g in unit.spec.placement.replaces)
    two = any(matches(g, unit.name) for g in other.spec.placement.replaces)
    return one and not two


@dataclass
class Decision:
    placed: dict[str, str] = field(default_factory=dict)  # unit -> machine
    evicted: dict[str, str] = field(default_factory=dict)  # unit -> why (placed again, maybe elsewhere)
    unplaced: dict[str, str] = field(default_factory=dict)  # unit -> why no machine took it


def _why_not(unit: Unit, load: _MachineLoad, placed_on: Mapping[str, str]) -> str | None:
    """Why ``unit`` cannot go to this machine (None: it can)."""
    p, m = unit.spec.placement, load.machine
    if p.machineID is not None and p.machineID != m.id:
        return f"MachineID is {p.machineID}"
    if not metadata_fits(unit, m):
        return "its metadata does not match MachineMetadata"
    if m.runtimes and unit.spec.runtime not in m.runtimes:
        return f"no {unit.spec.runtime} runtime there"
    for peer in p.machineOf:
        if placed_on.get(peer) != m.id:
            return f"MachineOf {peer} is not there"
    freed_cpu = freed_mem = 0
    mine_r, mine_c = p.replaces, p.conflicts
    for other in (load.units if mine_r or mine_c else load.picky).values():  # (the hot loop: written out)
        if other.name == unit.name:
            continue
        op = other.spec.placement
        i_replace = bool(mine_r) and any(matches(g, other.name) for g in mine_r)
        it_replaces = bool(op.replaces) and any(matches(g, unit.name) for g in op.replaces)
        if i_replace and not it_replaces:  # eligible: the other is evicted if this machine is chosen
            freed_cpu += other.spec.resources.cpu
            freed_mem += other.spec.resources.memory
        elif it_replaces and not i_replace:
            return f"replaced by {other.name}"
        elif (mine_c and any(matches(g, other.name) for g in mine_c)) or \
                (op.conflicts and any(matches(g, unit.name) for g in op.conflicts)):
            return f"conflicts with {other.name}"
    r = unit.spec.resources
    if m.cpu and load.cpu - freed_cpu + r.cpu > m.cpu:
        return f"not enough CPU ({m.cpu - load.cpu + freed_cpu}m free, {r.cpu}m asked)"
    if m.memory and load.memory - freed_mem + r.memory > m.memory:
        return f"not enough memory ({m.memory - load.memory + freed_mem} bytes free, {r.memory} asked)"
    return None


def decide_placement(units: Sequence[Unit], machines: Sequence[Machine], current: Mapping[str, str],
                     rng: random.Random, all_units: Mapping[str, Unit] | None = None) -> Decision:
    """Place ``units`` (unplaced, non-global) on ``machines`` given what is already ``current``
    (unit -> machine, of ``all_units``: the units' specs, for conflicts and resources). Peers
    (MachineOf) go first; a unit whose peer is nowhere stays unplaced, as in fleet."""
    known = dict(all_units or {})
    known.update({u.name: u for u in units})
    loads = {m.id: _MachineLoad(m) for m in machines}
    placed_on: dict[str, str] = {}
    for name, mid in current.items():
        if mid in loads and name in known:
            loads[mid].add(known[name])
            placed_on[name] = mid
    totals: dict[str, int] = {}  # service -> its units placed (anywhere): how even a spread can be
    for name in placed_on:
        totals[sibling_key(known[name])] = totals.get(sibling_key(known[name]), 0) + 1
    decision = Decision()
    order = list(machines)
    rng.shuffle(order)
    by_signature: dict[tuple[tuple[str, tuple[str, ...]], ...], list[_MachineLoad]] = {}
    todo = sorted((u for u in units if not u.is_global and not u.is_template),
                  key=lambda u: (len(u.spec.placement.machineOf), u.name))
    pending = list(todo)
    for _ in range(2 * len(todo) + 1):  # MachineOf chains and evictions resolve in fewer passes
        waiting: list[Unit] = []
        for unit in pending:
            if unit.name in placed_on or unit.name in decision.unplaced:
                continue
            if any(peer not in placed_on for peer in unit.spec.placement.machineOf):
                waiting.append(unit)
                continue
            evicted = set(decision.evicted)
            _place_one(unit, loads, order, by_signature, placed_on, decision, rng, totals)
            waiting += [known[n] for n in sorted(set(decision.evicted) - evicted)]  # placed again, elsewhere
        if not waiting or [u.name for u in waiting] == [u.name for u in pending]:
            pending = waiting
            break
        pending = waiting
    for unit in pending:
        if unit.name not in placed_on and unit.name not in decision.unplaced:
            missing = [p for p in unit.spec.placement.machineOf if p not in placed_on]
            decision.unplaced[unit.name] = f"MachineOf {', '.join(missing)}: not placed anywhere"
    return decision


def _place_one(unit: Unit, loads: Mapping[str, _MachineLoad], order: Sequence[Machine],
               by_signature: dict[tuple[tuple[str, tuple[str, ...]], ...], list[_MachineLoad]],
               placed_on: dict[str, str], decision: Decision, rng: random.Random, totals: dict[str, int]) -> None:
    p = unit.spec.placement
    if p.machineID is not None:
        candidates = [loads[p.machineID]] if p.machineID in loads else []
    elif p.machineOf:
        candidates = [loads[placed_on[p.machineOf[0]]]]
    else:
        sig = tuple(sorted((k, tuple(sorted(v))) for k, v in p.machineMetadata.items()))
        if sig not in by_signature:
            by_signature[sig] = [loads[m.id] for m in order if metadata_fits(unit, m)]
        candidates = by_signature[sig]
    if not candidates:
        decision.unplaced[unit.name] = ("no live machine has that MachineID" if p.machineID is not None
                                        else "no machine matches MachineMetadata")
        return
    want = sample(len(candidates))
    siblings = sum(load.siblings.get(sibling_key(unit), 0) for load in candidates) if len(candidates) <= want \
        else totals.get(sibling_key(unit), 0)
    spread_level = siblings // len(candidates)
    start = rng.randrange(len(candidates))
    scored: list[tuple[int, float, float, _MachineLoad]] = []
    reasons: dict[str, int] = {}
    for k in range(len(candidates)):
        load = candidates[(start + k) % len(candidates)]
        why = _why_not(unit, load, placed_on)
        if why is not None:
            reasons[why.split(" (")[0]] = reasons.get(why.split(" (")[0], 0) + 1
            continue
        r = unit.spec.resources
        scored.append((load.siblings.get(sibling_key(unit), 0), load.share(r.cpu, r.memory, 1), rng.random(), load))
        # enough scored, and one of them as empty of siblings as an even spread would leave it (else
        # look further: a sample must not stack siblings where emptier machines are left)
        if len(scored) >= want and min(x[0] for x in scored) <= spread_level:
            break
    if not scored:
        decision.unplaced[unit.name] = "no machine fits: " + "; ".join(
            f"{n} {'machine' if n == 1 else 'machines'}: {why}" for why, n in sorted(reasons.items()))
        return
    best = min(scored, key=lambda s: s[:3])[3]
    for other in list(best.units.values()):
        if other.name != unit.name and replaces(unit, other):
            best.remove(other.name)
            totals[sibling_key(other)] -= 1
            placed_on.pop(other.name, None)
            decision.placed.pop(other.name, None)
            decision.evicted[other.name] = f"replaced by {unit.name} on {best.machine.id}"
    best.add(unit)
    totals[sibling_key(unit)] = totals.get(sibling_key(unit), 0) + 1
    placed_on[unit.name] = best.machine.id
    decision.placed[unit.name] = best.machine.id


# -- reconciling ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """One change the engine writes: ``unschedule`` a unit (why), or ``schedule`` it on ``machine``."""

    action: str
    unit: str
    machine: str = ""
    reason: str = ""


def plan_reconcile(units: Mapping[str, Unit], desired: Mapping[str, str], placements: Mapping[str, str],
                   machines: Sequence[Machine], rng: random.Random) -> tuple[list[Task], dict[str, str]]:
    """From what is desired (unit -> inactive/loaded/launched) and placed (unit -> machine) to the
    tasks that make them meet, and why units stay unplaced. Unscheduled: units no longer wanted
    (inactive, destroyed), on a machine that is gone, or whose constraints that machine no longer
    meets (metadata changed, a peer moved, a conflict arrived); then every wanted unit without a
    machine is placed (evicted ones included: Replaces)."""
    alive = {m.id: m for m in machines}
    tasks: list[Task] = []
    kept: dict[str, str] = {}
    for name, mid in sorted(placements.items()):
        unit = units.get(name)
        if unit is None or desired.get(name, "inactive") == "inactive":
            tasks.append(Task("unschedule", name, mid, "not wanted (inactive or destroyed)"))
        elif unit.is_global:
            tasks.append(Task("unschedule", name, mid, "a global unit: every matching machine runs it"))
        elif mid not in alive:
            tasks.append(Task("unschedule", name, mid, f"machine {mid} is gone"))
        else:
            kept[name] = mid
    # constraints the current machine no longer meets (checked against the rest of what stays; a
    # unit taken away can break another's, a follower's MachineOf: again until nothing changes)
    loads = {mid: _MachineLoad(m) for mid, m in alive.items()}
    for name, mid in kept.items():
        loads[mid].add(units[name])
    changed = True
    while changed:
        changed = False
        for name, mid in sorted(kept.items()):
            load = loads[mid]
            load.remove(name)
            why = _why_not(units[name], load, kept)
            if why is None:
                load.add(units[name])
                continue
            tasks.append(Task("unschedule", name, mid, f"no longer fits {mid}: {why}"))
            del kept[name]
            changed = True
    wanted = [u for name, u in sorted(units.items()) if desired.get(name, "inactive") != "inactive"
              and name not in kept and not u.is_global and not u.is_template]
    decision = decide_placement(wanted, machines, kept, rng, units)
    for name, why in sorted(decision.evicted.items()):
        if name in kept:
            tasks.append(Task("unschedule", name, kept[name], why))
    for name, mid in sorted(decision.placed.items()):
        tasks.append(Task("schedule", name, mid))
    return tasks, decision.unplaced
