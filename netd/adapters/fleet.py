"""The scheduler's keys in etcd, under --netd-prefix (default /netd):

  * ``units/<name>``            a submitted unit: its text (fleet unit file or YAML) and desired state;
  * ``global/<name>``           a marker for a global unit (what every machine watches, with its own:)
  * ``machines/<id>``           a machine: address, metadata, capacity, API address (bound to its lease);
  * ``placements/<unit>``       which machine a unit is placed on (bound to that machine's lease, so a
                                machine that goes takes its placements with it);
  * ``schedule/<machine>/<unit>`` the same placement with what the machine needs to run it (the unit's
                                text and desired state): the only prefix a machine watches besides
                                ``global/`` (one placement wakes one machine, not every one: fleet's
                                thundering herd);
  * ``state/<unit>/<machine>``  what the machine running it reports (bound to its lease);
  * ``endpoints/<service>/<unit>`` a running unit's address and ports (bound to its machine's lease);
  * ``engine/leader/<lease>``   the engine's election (etcd's recipe: the candidate whose key was
                                created first leads; each waits for the one before it).

Every write that can race is a transaction (create if absent, or compare the mod_revision read).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aetcd.transactions as atx
import aetcd.utils as autils
import yaml

from netd.adapters.etcd import EtcdTLS
from netd.adapters.objects import MAX_TXN_OPS, EtcdObjectStore
from netd.core.schedule import Task
from netd.errors import ConflictError
from netd.model.units import Machine, Unit, UnitError, unit_from_file, unit_from_yaml


@dataclass(frozen=True)
class UnitRecord:
    name: str
    format: str  # "fleet" or "yaml"
    text: str
    desired: str = "inactive"  # inactive, loaded, launched

    def encode(self) -> bytes:
        return json.dumps({"apiVersion": "netd/v1", "name": self.name, "format": self.format, "text": self.text,
                           "desired": self.desired}, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> UnitRecord:
        d = json.loads(raw)
        return cls(str(d["name"]), str(d["format"]), str(d["text"]), str(d.get("desired", "inactive")))

    def unit(self) -> Unit:
        """Parsed again (a stored unit was valid when submitted; UnitError if the rules tightened)."""
        if self.format == "yaml":
            doc = yaml.safe_load(self.text)
            if not isinstance(doc, dict):
                raise UnitError(self.name, "stored YAML is no mapping")
            # the record's name wins: an instance (web@1) is stored with its template's text
            return dataclasses.replace(unit_from_yaml(doc, self.name, self.text), name=self.name)
        return unit_from_file(self.name, self.text)


def machine_record(m: Machine, api: str = "") -> bytes:
    return json.dumps({"id": m.id, "ip": m.ip, "metadata": dict(m.metadata), "cpu": m.cpu, "memory": m.memory,
                       "runtimes": list(m.runtimes), "api": api}, sort_keys=True).encode()


def machine_of(raw: bytes) -> tuple[Machine, str]:
    d = json.loads(raw)
    return Machine(str(d["id"]), str(d.get("ip", "")), {str(k): str(v) for k, v in d.get("metadata", {}).items()},
                   int(d.get("cpu", 0)), int(d.get("memory", 0)), tuple(str(r) for r in d.get("runtimes", []))), \
        str(d.get("api", ""))


@dataclass
class FleetView:
    """One consistent read of units, machines and placements."""

    revision: int = 0
    units: dict[str, tuple[UnitRecord, int]] = field(default_factory=dict)  # name -> (record, mod_revision)
    machines: dict[str, tuple[Machine, int, str]] = field(default_factory=dict)  # id -> (machine, lease, api)
    placements: dict[str, tuple[str, int]] = field(default_factory=dict)  # unit -> (machine, mod_revision)
    bad: list[str] = field(default_factory=list)


class EtcdFleetStore(EtcdObjectStore):
    def __init__(self, endpoints: str | Sequence[str], prefix: str = "/netd", tls: EtcdTLS | None = None,
                 timeout: float = 5.0) -> None:
        super().__init__(endpoints, prefix, tls, timeout)

    def key(self, sub: str) -> bytes:
        return f"{self.prefix}/{sub}".encode()

    # -- reading --------------------------------------------------------------------------------
    async def read_fleet(self) -> FleetView:
        parts = ("units/", "machines/", "placements/")
        gets = [atx.Get(self.key(p), autils.prefix_range_end(self.key(p))) for p in parts]
        response = await self._txn("read the fleet", [], gets)
        view = FleetView(int(response.header.revision))
        for part, r in zip(parts, response.responses, strict=True):
            for kv in r.response_range.kvs:
                name = bytes(kv.key)[len(self.key(part)):].decode(errors="replace")
                try:
                    if part == "units/":
                        view.units[name] = (UnitRecord.decode(bytes(kv.value)), int(kv.mod_revision))
                    elif part == "machines/":
                        m, api = machine_of(bytes(kv.value))
                        view.machines[name] = (m, int(kv.lease), api)
                    else:
                        view.placements[name] = (str(json.loads(bytes(kv.value))["machine"]), int(kv.mod_revision))
                except (ValueError, KeyError, TypeError) as exc:
                    view.bad.append(f"{part}{name}: {exc}")
        return view

    async def read_json(self, sub: str) -> dict[str, Any]:
        """Every key under ``sub`` decoded (an unreadable one as None)."""
        out: dict[str, Any] = {}
        for name, raw in (await self.read_prefix(sub)).items():
            try:
                out[name] = json.loads(raw)
            except ValueError:
                out[name] = None
        return out

    async def put_json(self, sub: str, value: object) -> None:
        data = json.dumps(value, sort_keys=True).encode()
        key = self.key(sub)
        await self._call("put " + sub, lambda c: c.put(key, data))

    async def get_json(self, sub: str) -> Any:
        key = self.key(sub)
        got = await self._call("get " + sub, lambda c: c.get(key))
        return json.loads(bytes(got.value)) if got is not None else None

    # -- units (netctl) -------------------------------------------------------------------------------
    async def submit(self, records: Iterable[UnitRecord], view: FleetView, globals_: Iterable[str] = ()) -> int:
        """Create the units that do not exist (one transaction); one that exists with other text is
        refused, as fleet did (destroy it first): nothing is written."""
        compare: list[Any] = []
        ops: list[Any] = []
        for r in records:
            held = view.units.get(r.name)
            if held is not None:
                if held[0].text != r.text:
                    raise ConflictError(f"unit {r.name} exists with other contents: destroy it first (as fleetctl "
                                        "asks), then submit again")
                continue
            compare.append(atx.Version(self.key(f"units/{r.name}")) == 0)
            ops.append(atx.Put(self.key(f"units/{r.name}"), r.encode()))
            if r.name in set(globals_):
                ops.append(atx.Put(self.key(f"global/{r.name}"), json.dumps({"name": r.name}).encode()))
        return await self._commit("submit units", compare, ops, view.revision)

    async def set_desired(self, changes: Mapping[str, str], view: FleetView,
                          new: Iterable[UnitRecord] = (), globals_: Iterable[str] = ()) -> int:
        """Desired states (and units made from templates on the way, as `fleetctl start foo@1`)."""
        compare: list[Any] = []
        ops: list[Any] = []
        glob = set(globals_)
        for r in new:
            compare.append(atx.Version(self.key(f"units/{r.name}")) == 0)
            ops.append(atx.Put(self.key(f"units/{r.name}"), r.encode()))
            if r.name in glob:
                ops.append(atx.Put(self.key(f"global/{r.name}"), json.dumps({"name": r.name}).encode()))
        for name, state in sorted(changes.items()):
            if name in view.units:
                rec, mod = view.units[name]
                if rec.desired == state:
                    continue
                compare.append(atx.Mod(self.key(f"units/{name}")) == mod)
                ops.append(atx.Put(self.key(f"units/{name}"), UnitRecord(rec.name, rec.format, rec.text,
                                                                         state).encode()))
                if name in glob:  # the marker changes too: the machines running it see the new state
                    ops.append(atx.Put(self.key(f"global/{name}"), json.dumps({"name": name, "desired": state})
                                       .encode()))
        return await self._commit("set desired states", compare, ops, view.revision)

    async def destroy(self, names: Iterable[str], view: FleetView) -> int:
        compare: list[Any] = []
        ops: list[Any] = []
        for name in names:
            if name in view.units:
                compare.append(atx.Mod(self.key(f"units/{name}")) == view.units[name][1])
                ops += [atx.Delete(self.key(f"units/{name}")), atx.Delete(self.key(f"global/{name}"))]
        return await self._commit("destroy units", compare, ops, view.revision)

    async def _commit(self, what: str, compare: list[Any], ops: list[Any], revision: int) -> int:
        if not ops:
            return revision
        if len(ops) > MAX_TXN_OPS:
            raise ConflictError(f"{what}: {len(ops)} writes in one transaction, more than etcd's {MAX_TXN_OPS}: "
                                "give fewer units at a time")
        response = await self._txn(what, compare, ops)
        if not response.succeeded:
            raise ConflictError(f"{what}: another change came between; nothing was written (run it again)")
        return int(response.header.revision)

    # -- the engine -------------------------------------------------------------------------------------
    def _fence(self, leader: tuple[str, int] | None) -> list[Any]:
        """The engine writes only while its election key is the one it won with (etcd's IsOwner):
        a leader whose lease lapsed mid-pass writes nothing more."""
        return [atx.Create(self.key(leader[0])) == leader[1]] if leader else []

    async def apply_task(self, task: Task, view: FleetView, leader: tuple[str, int] | None = None) -> bool:
        """One task in one transaction, only if what it was decided from still holds: the unit's
        record and, to schedule, the machine and no placement of the unit; to unschedule, the
        placement as read. False: something changed (the next reconcile decides again)."""
        unit_key = self.key(f"units/{task.unit}")
        placement = self.key(f"placements/{task.unit}")
        if task.action == "unschedule":
            held = view.placements.get(task.unit)
            if held is None:
                return True
            ops = [atx.Delete(placement), atx.Delete(self.key(f"schedule/{held[0]}/{task.unit}"))]
            response = await self._txn("unschedule " + task.unit, [atx.Mod(placement) == held[1],
                                                                   *self._fence(leader)], ops)
            return bool(response.succeeded)
        rec, mod = view.units[task.unit]
        machine = view.machines[task.machine]
        compare = [atx.Mod(unit_key) == mod, atx.Version(placement) == 0,
                   atx.Version(self.key(f"machines/{task.machine}")) > 0, *self._fence(leader)]
        payload = json.dumps({"unit": rec.name, "format": rec.format, "text": rec.text, "desired": rec.desired},
                             sort_keys=True).encode()
        ops = [atx.Put(placement, json.dumps({"machine": task.machine}).encode(), lease=machine[1]),
               atx.Put(self.key(f"schedule/{task.machine}/{task.unit}"), payload, lease=machine[1])]
        response = await self._txn("schedule " + task.unit, compare, ops)
        return bool(response.succeeded)

    async def refresh_schedule(self, unit: str, machine: str, view: FleetView,
                               leader: tuple[str, int] | None = None) -> bool:
        """A placed unit's desired state or text changed: its machine's copy follows."""
        rec, mod = view.units[unit]
        held = view.placements.get(unit)
        lease = view.machines.get(machine, (None, 0, ""))[1]
        if held is None or not lease:
            return False
        payload = json.dumps({"unit": rec.name, "format": rec.format, "text": rec.text, "desired": rec.desired},
                             sort_keys=True).encode()
        response = await self._txn("refresh " + unit, [atx.Mod(self.key(f"units/{unit}")) == mod,
                                                       atx.Mod(self.key(f"placements/{unit}")) == held[1],
                                                       *self._fence(leader)],
                                   [atx.Put(self.key(f"schedule/{machine}/{unit}"), payload, lease=lease)])
        return bool(response.succeeded)

    async def delete_if(self, sub: str, value: bytes) -> bool:
        """Delete ``sub`` only if it still holds ``value`` (ours): a unit moved meanwhile has a new
        record there, written by its new machine, which must stay."""
        response = await self._txn("withdraw " + sub, [atx.Value(self.key(sub)) == value], [atx.Delete(self.key(sub))])
        return bool(response.succeeded)

    async def register(self, machine_id: str, record: bytes, lease_id: int) -> str | None:
        """``machines/<id>`` on our lease, unless another live lease holds it (another netd with this
        ID: cloned disks, hosts sharing /etc/machine-id); then who (its record), and nothing written."""
        key = self.key(f"machines/{machine_id}")
        got = await self._call("read machine", lambda c: c.get(key))
        if got is not None and int(got.lease) not in (0, lease_id):
            ttl = await self._call("machine lease", lambda c: c.get_lease_info(int(got.lease)))
            if int(getattr(ttl, "TTL", -1)) > 0:
                return bytes(got.value).decode(errors="replace")
        await self.put_bound(f"machines/{machine_id}", record, lease_id)
        return None

    # -- election (etcd's recipe) ------------------------------------------------------------------------
    async def campaign(self, lease_id: int, machine: str) -> str:
        """Stand as the engine: a key of ours bound to our lease (kept if it exists); its name."""
        name = f"engine/leader/{lease_id:x}"
        await self._txn("campaign", [atx.Version(self.key(name)) == 0],
                        [atx.Put(self.key(name), json.dumps({"machine": machine}).encode(), lease=lease_id)])
        return name

    async def candidates(self) -> list[tuple[int, str, str]]:
        """(create_revision, key, machine) of every candidate, the leader first."""
        start = self.key("engine/leader/")
        got = await self._call("list candidates", lambda c: c.get_prefix(start))
        out = []
        for kv in got:
            try:
                machine = str(json.loads(bytes(kv.value))["machine"])
            except (ValueError, KeyError, TypeError):
                machine = "?"
            out.append((int(kv.create_revision), bytes(kv.key)[len(self.prefix) + 1:].decode(), machine))
        return sorted(out)
