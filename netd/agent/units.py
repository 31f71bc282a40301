"""The machine loop: this netd as a machine of the scheduler.

  * presence: ``machines/<id>`` bound to a kept-alive etcd lease (``--machine-ttl``); the lease id is
    kept in ``--state-dir`` so a quick restart keeps it (and with it its placements and endpoints);
  * units: what ``schedule/<id>/`` places here (desired ``launched``: run; ``loaded``: placed, not
    run) and the global units whose MachineMetadata this machine matches are run by their runtime
    (docker, netns), wired into the host's leased subnet (bridge netd0), restarted with back-off
    when they exit (1 s doubling to 60 s, back to 1 s after a minute up: never a tight loop), and
    stopped when they are no longer here -- a machine back after its lease expired finds nothing
    placed on it and stops what it still runs, so nothing runs twice;
  * reports: ``state/<unit>/<machine>`` (what list-units shows) and ``endpoints/<service>/<unit>``
    (address, ports, machine; a global unit's ``<unit>-<machine>``) for each running unit, bound to
    the lease, withdrawn when it stops;
  * DNS: the endpoints of the whole cluster, from a watch, answered on the units' gateway (netd0's
    address, port 53) and ``--dns-listen``.
Level-triggered like the other loops: watches on ``schedule/<id>/``, ``global/`` and ``endpoints/``
only wake it; every sync re-reads its placements and re-observes the runtime.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from netd.adapters.dns import DnsServer
from netd.adapters.fleet import EtcdFleetStore, UnitRecord, machine_record
from netd.adapters.runtime import Overlay, Runtime
from netd.aio import run_supervised
from netd.core.dns import Published, parse_published, unit_label
from netd.core.schedule import metadata_fits
from netd.core.subnetenv import overlay_of, units_side
from netd.errors import DataplaneError, NetdError, RegistryRefused, RegistryUnavailable
from netd.model.units import Machine, Unit, UnitError, UnitName

log = logging.getLogger(__name__)
T = TypeVar("T")
BACKOFF_MIN, BACKOFF_MAX, STEADY = 1.0, 60.0, 60.0


@dataclass
class UnitOptions:
    machine: Machine
    state_dir: str
    subnet_file: str
    api: str = ""  # where netctl journal reaches this netd (http://ip:port), "" without --healthz-port
    machine_ttl: int = 30
    resync_interval: float = 5.0
    domain: str = "netd.local"
    dns_listen: list[tuple[str, int]] = field(default_factory=list)
    dns_on_gateway: bool = True
    #: this host's name in Endpoint specs (the switch loop's --node-name): units on tenant networks
    #: get Endpoint objects on it; "" when the host has no switch (--ovs-bridge)
    node: str = ""


@dataclass
class _Local:
    """What this machine knows of a unit it runs."""

    unit: Unit
    desired: str
    restarts: int = 0
    next_start: float = 0.0
    backoff: float = BACKOFF_MIN
    started_at: float = 0.0
    message: str = ""


class UnitMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.units = Gauge("netd_units", "Units on this machine, by state", ["state"], registry=r)
        self.restarts = Counter("netd_unit_restarts", "Units restarted after their process exited", registry=r)


class UnitAgent:
    def __init__(self, store: EtcdFleetStore, runtimes: dict[str, Runtime], overlay: Overlay, options: UnitOptions,
                 registry: CollectorRegistry) -> None:
        self.store = store
        self.runtimes = runtimes
        self.overlay = overlay
        self.opts = options
        self.metrics = UnitMetrics(registry)
        self.lease: int | None = None
        self.endpoints: dict[tuple[str, str], Published] = {}  # (service, unit) -> record, the whole cluster's
        self.status: dict[str, str] = {}  # unit -> what list-units' SUB says here
        self.error: str | None = None
        self._local: dict[str, _Local] = {}
        self._addresses: dict[str, str] = self._load_addresses()
        self._published: dict[str, bytes] = {}
        self._lease_ok = 0.0  # when the lease was last kept alive (monotonic)
        self._duplicate = False  # another live netd holds our machine ID
        self._refreshed = 0.0  # when our published keys were last written again whatever the cache said
        self._wake = asyncio.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="units")
        self.dns = DnsServer(lambda: list(self.endpoints.values()), options.domain)

    async def _on_pool(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def wake(self) -> None:
        self._wake.set()

    def readiness(self) -> tuple[bool, str | None, dict[str, object]]:
        details: dict[str, object] = {"machine": self.opts.machine.id, "units": dict(self.status)}
        return self.error is None, self.error, details

    # -- loops ------------------------------------------------------------------------------------
    async def run(self, stopping: asyncio.Event) -> None:
        def failed(name: str, exc: BaseException) -> None:
            self.error = f"task {name} failed ({type(exc).__name__}: {exc}); restarting it"

        def restarted(name: str) -> None:
            self.error = None

        for host, port in self.opts.dns_listen:
            await self.dns.listen(host, port)
        mine = f"schedule/{self.opts.machine.id}/"
        try:
            await run_supervised("units-", (("presence", lambda: self._presence_loop(stopping)),
                                            ("sync", lambda: self._sync_loop(stopping)),
                                            ("watch-schedule", lambda: self._watch(stopping, mine, True)),
                                            ("watch-global", lambda: self._watch(stopping, "global/", True)),
                                            ("watch-endpoints", lambda: self._watch(stopping, "endpoints/", False))),
                                 stopping, failed, restarted)
        finally:
            self.dns.close()
            self._pool.shutdown(wait=True)

    def _lease_file(self) -> str:
        return os.path.join(self.opts.state_dir, "machine-lease")

    async def _presence_loop(self, stopping: asyncio.Event) -> None:
        """The machine record on a kept-alive lease; a lease a quick restart left is taken back."""
        if self.lease is None:
            try:
                with open(self._lease_file()) as fh:
                    self.lease = int(fh.read().strip(), 16)
            except (OSError, ValueError):
                self.lease = None
        interval = max(1.0, self.opts.machine_ttl / 3)
        record = machine_record(self.opts.machine, self.opts.api)
        seeded = False
        while not stopping.is_set():
            try:
                if self.lease is None or await self.store.keepalive(self.lease) == 0:
                    self.wake()
                    self.lease = await self.store.grant(self.opts.machine_ttl)
                    self._published.clear()
                    with open(self._lease_file(), "w") as fh:
                        fh.write(f"{self.lease:x}\n")
                    log.info("machine %s registered (lease %x, TTL %ds)", self.opts.machine.id, self.lease,
                             self.opts.machine_ttl)
                self._lease_ok = time.monotonic()
                if not seeded:  # a restart that kept its lease: what it published before is ours to withdraw
                    await self._seed_published()
                    seeded = True
                holder = await self.store.register(self.opts.machine.id, record, self.lease)
                if holder is not None:
                    self.error = (f"machine ID {self.opts.machine.id} is another netd's (a live lease holds it: "
                                  f"{holder}): give this one its own --machine-id")
                    if not self._duplicate:
                        log.error("%s", self.error)
                    self._duplicate = True
                else:
                    if self._duplicate:
                        log.info("machine ID %s is ours again", self.opts.machine.id)
                    self._duplicate = False
            except RegistryRefused as exc:
                if exc.code == "NOT_FOUND":  # the lease we kept is gone: a new one at once
                    self.lease = None
                    continue
                log.warning("machine presence: %s", exc)
            except RegistryUnavailable as exc:
                log.debug("machine presence: %s", exc)
            try:
                await asyncio.wait_for(stopping.wait(), interval)
            except TimeoutError:
                pass

    async def _seed_published(self) -> None:
        """This machine's state/ and endpoints/ keys as etcd has them (a netd restarted on its old lease
        must withdraw those of units stopped or moved while it was away)."""
        m = self.opts.machine.id
        for key, raw in (await self.store.read_prefix("state/")).items():
            if key.endswith(f"/{m}"):
                self._published.setdefault(f"state/{key}", raw)
        for key, raw in (await self.store.read_prefix("endpoints/")).items():
            try:
                mine = json.loads(raw).get("machine") == m
            except (ValueError, AttributeError):
                mine = False
            if mine:
                self._published.setdefault(f"endpoints/{key}", raw)

    async def _publish(self, items: dict[str, bytes | None]) -> None:
        for key, value in items.items():
            if self._published.get(key) == value:
                continue
            if value is None:
                # only if it is still what we wrote: a unit moved meanwhile has its new machine's there
                if key in self._published:
                    await self.store.delete_if(key, self._published[key])
                else:
                    await self.store.delete_key(key)
                self._published.pop(key, None)
            elif self.lease is not None:
                await self.store.put_bound(key, value, self.lease)
                self._published[key] = value

    async def _watch(self, stopping: asyncio.Event, sub: str, wakes: bool) -> None:
        from netd.errors import CompactedError

        while not stopping.is_set():
            try:
                if not wakes:
                    await self._reload_endpoints()
                async for event in self.store.watch_prefix(self.store.key(sub), None):  # type: ignore[arg-type]
                    if wakes:
                        self.wake()
                    else:
                        self._endpoint_event(event)
            except (CompactedError, RegistryUnavailable, RegistryRefused) as exc:
                log.debug("watch %s: %s", sub, exc)
                await asyncio.sleep(0.5)

    async def _reload_endpoints(self) -> None:
        fresh: dict[tuple[str, str], Published] = {}
        for key, value in (await self.store.read_json("endpoints/")).items():
            service, _, unit = key.partition("/")
            try:
                fresh[(service, unit)] = parse_published(service, unit, value)
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("unreadable endpoint endpoints/%s", key)
        self.endpoints = fresh

    def _endpoint_event(self, event: Any) -> None:
        key = bytes(event.kv.key)[len(self.store.key("endpoints/")):].decode(errors="replace")
        service, _, unit = key.partition("/")
        if event.kind == "DELETE":
            self.endpoints.pop((service, unit), None)
            return
        try:
            self.endpoints[(service, unit)] = parse_published(service, unit, json.loads(bytes(event.kv.value)))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("unreadable endpoint endpoints/%s", key)

    async def _sync_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self._wake.clear()
            await self.sync_once()
            try:
                await asyncio.wait_for(self._wake.wait(), self._next_wait())
            except TimeoutError:
                pass
            await asyncio.sleep(0.05)  # coalesce a burst of events

    def _next_wait(self) -> float:
        """Until the next resync, or sooner when a unit's back-off ends."""
        now = time.monotonic()
        due = [loc.next_start - now for loc in self._local.values() if loc.next_start > now]
        return max(0.05, min([self.opts.resync_interval, *due]))

    # -- one sync ----------------------------------------------------------------------------------
    async def sync_once(self) -> None:
        if self.lease is None:
            return
        now = time.monotonic()
        if self._duplicate or now - self._lease_ok > self.opts.machine_ttl:
            # fenced: our lease has lapsed (etcd away longer than the TTL: the engine has placed our
            # units elsewhere by now) or our machine ID is another netd's: run nothing
            why = "our machine ID is another netd's" if self._duplicate else \
                f"no keepalive for {now - self._lease_ok:.0f}s (TTL {self.opts.machine_ttl}s)"
            if self.error != f"fenced: {why}":
                log.warning("stopping every unit: %s", why)
            await self._on_pool(self._apply, {}, None)
            self.error = f"fenced: {why}"
            return
        try:
            wanted = await self._read_wanted()
            if now - self._refreshed > 6 * self.opts.resync_interval:
                # now and then every key of ours is written again and the endpoints read whole:
                # a key lost (or withdrawn by a machine out of step) comes back, a missed event too
                self._published = {k: v for k, v in self._published.items() if not k.startswith(("state/",
                                                                                                 "endpoints/"))}
                await self._reload_endpoints()
                self._refreshed = now
        except (RegistryUnavailable, RegistryRefused) as exc:
            self.error = f"etcd: {exc}"
            return  # what runs keeps running (until the lease lapses); the next sync tries again
        overlay = units_side(overlay_of(self._read_subnet_env()))
        if overlay is not None and self.opts.dns_on_gateway:
            await self._gateway_dns(overlay, wanted)
        try:
            reports = await self._on_pool(self._apply, wanted, overlay)
        except (DataplaneError, NetdError) as exc:
            self.error = f"units: {exc}"
            log.warning("units sync failed: %s", exc)
            return
        self.error = None
        if self.opts.node or any(loc.unit.spec.tenants for loc in self._local.values()):
            try:
                await self._tenant_endpoints(reports)
            except (RegistryUnavailable, RegistryRefused, NetdError) as exc:
                log.warning("units' tenant endpoints: %s", exc)
        await self._publish_reports(reports)

    async def _gateway_dns(self, overlay: tuple[ipaddress.IPv4Interface, int],
                           wanted: dict[str, tuple[Unit, str]]) -> None:
        """The units' gateway, and DNS answered on it, before any unit starts: a unit that resolves
        a name as it starts finds its server there. (A host without overlay units has neither.)"""
        try:
            if any(unit.spec.overlay for unit, _ in wanted.values()):
                await self._on_pool(self.overlay.ensure_bridge, *overlay)
            elif not await self._on_pool(self.overlay.has_bridge):
                return
            await self.dns.listen(str(overlay[0].ip), 53)
        except (DataplaneError, OSError) as exc:  # (each unit's wiring says it again in list-units)
            log.warning("DNS on the units' gateway %s:53: %s", overlay[0].ip, exc)

    def _read_subnet_env(self) -> str:
        try:
            with open(self.opts.subnet_file) as fh:
                return fh.read()
        except OSError:
            return ""

    async def _read_wanted(self) -> dict[str, tuple[Unit, str]]:
        """unit -> (its spec, desired state): placed here, and the matching global units. One that
        cannot be read any more (rules tightened by an upgrade) keeps running as it was."""
        out: dict[str, tuple[Unit, str]] = {}
        for name, value in (await self.store.read_json(f"schedule/{self.opts.machine.id}/")).items():
            try:
                rec = UnitRecord(str(value["unit"]), str(value["format"]), str(value["text"]),
                                 str(value["desired"]))
                out[name] = (rec.unit(), rec.desired)
            except (KeyError, TypeError, UnitError) as exc:
                self._keep_unreadable(name, exc, out)
        for name in await self.store.read_json("global/"):
            value = await self.store.get_json(f"units/{name}")
            if not isinstance(value, dict):
                continue
            try:
                rec = UnitRecord(str(value["name"]), str(value["format"]), str(value["text"]),
                                 str(value.get("desired", "inactive")))
                unit = rec.unit()
            except (KeyError, TypeError, UnitError) as exc:
                self._keep_unreadable(name, exc, out)
                continue
            if unit.is_global and rec.desired != "inactive" and metadata_fits(unit, self.opts.machine):
                out[name] = (unit, rec.desired)
        return out

    def _keep_unreadable(self, name: str, exc: Exception, out: dict[str, tuple[Unit, str]]) -> None:
        log.warning("unit %s unreadable (%s): left as it is", name, exc)
        loc = self._local.get(name)
        if loc is not None:
            out[name] = (loc.unit, loc.desired)

    def _apply(self, wanted: dict[str, tuple[Unit, str]],
               overlay: tuple[ipaddress.IPv4Interface, int] | None) -> dict[str, dict[str, Any]]:
        """On the units thread: start, restart, wire, stop. Returns each local unit's report."""
        now = time.monotonic()
        known: set[str] = set()
        for rt in self.runtimes.values():
            try:
                known |= set(rt.units())
            except DataplaneError as exc:  # dockerd down: its units wait, the others run
                log.warning("units: %s", exc)
        for name in sorted(known | set(self._local)):
            if name not in wanted or wanted[name][1] != "launched":
                self._stop(name)
        reports: dict[str, dict[str, Any]] = {}
        for name, (unit, desired) in sorted(wanted.items()):
            loc = self._local.get(name)
            if loc is None or loc.unit.text != unit.text or loc.unit.spec != unit.spec:
                if loc is not None:
                    self._stop(name)
                loc = self._local[name] = _Local(unit, desired)
            loc.desired = desired
            if desired != "launched":
                reports[name] = {"active": "inactive", "sub": "dead", "message": "loaded (not started)"}
                continue
            reports[name] = self._run(name, loc, overlay, now)
        for name in [n for n in self._local if n not in wanted]:
            del self._local[name]
        self.status = {n: r["sub"] for n, r in reports.items()}
        counts: dict[str, int] = {}
        for r in reports.values():
            counts[r["sub"]] = counts.get(r["sub"], 0) + 1
        self.metrics.units.clear()
        for sub, n in counts.items():
            self.metrics.units.labels(sub).set(n)
        return reports

    def _runtime(self, unit: Unit) -> Runtime:
        rt = self.runtimes.get(unit.spec.runtime)
        if rt is None:
            raise DataplaneError(f"unit {unit.name} needs the {unit.spec.runtime} runtime, which this machine "
                                 "has not (no dockerd: give --docker-host)")
        return rt

    def _run(self, name: str, loc: _Local, overlay: tuple[ipaddress.IPv4Interface, int] | None,
             now: float) -> dict[str, Any]:
        unit = loc.unit
        try:
            rt = self._runtime(unit)
        except DataplaneError as exc:
            return {"active": "failed", "sub": "failed", "message": str(exc)}
        if unit.spec.overlay and overlay is None:
            return {"active": "activating", "sub": "waiting", "message": "no lease on the overlay yet "
                                                                         "(no subnet.env)"}
        st = rt.status(name)
        if st is not None and not st.alive:
            if loc.started_at:
                loc.restarts += 1
                self.metrics.restarts.inc()
                ran = now - loc.started_at
                loc.backoff = BACKOFF_MIN if ran >= STEADY else min(BACKOFF_MAX, loc.backoff * 2)
                loc.next_start = now + loc.backoff
                loc.message = f"exited ({st.exit_code}) after {ran:.0f}s; restarting in {loc.backoff:.0f}s"
                log.warning("unit %s %s", name, loc.message)
                loc.started_at = 0.0
            self.overlay.unwire(name)
        if st is None or not st.alive:
            if now < loc.next_start:
                return {"active": "activating", "sub": "auto-restart", "message": loc.message,
                        "restarts": loc.restarts}
            gateway = str(overlay[0].ip) if overlay is not None else None
            try:
                st = rt.start(name, list(unit.spec.command), unit.spec.image,
                              {**unit.spec.environment, "NETD_UNIT": name}, gateway,
                              ready=lambda netns: self._wire(name, unit, overlay, netns))
            except DataplaneError as exc:
                loc.next_start, loc.backoff = now + loc.backoff, min(BACKOFF_MAX, loc.backoff * 2)
                loc.message = str(exc)
                return {"active": "failed", "sub": "failed", "message": str(exc), "restarts": loc.restarts}
            loc.started_at = now
            log.info("unit %s started (%s, pid %d)", name, rt.name, st.pid)
        elif not loc.started_at:
            loc.started_at = now  # adopted: it ran before this netd started
        if loc.started_at and now - loc.started_at >= STEADY:
            loc.backoff = BACKOFF_MIN
        ip = None
        if st.netns:
            try:
                ip = self._wire(name, unit, overlay, st.netns)
            except DataplaneError as exc:
                return {"active": "active", "sub": "running", "message": f"not on the overlay: {exc}",
                        "restarts": loc.restarts}
        return {"active": "active", "sub": "running", "ip": ip, "restarts": loc.restarts,
                "message": loc.message if loc.restarts else ""}

    def _wire(self, name: str, unit: Unit, overlay: tuple[ipaddress.IPv4Interface, int] | None,
              netns: str) -> str | None:
        """The unit's address on the overlay, its namespace wired to it unless it is already (at its
        start, before its command begins, and at every sync after); None if it is not on the overlay."""
        if not unit.spec.overlay or overlay is None:
            return None
        gw_if, mtu = overlay
        try:
            ip = self._address(name, gw_if)
        except OSError as exc:  # its address could not be saved
            raise DataplaneError(f"unit {name}: saving its address: {exc}") from exc
        if self.overlay.wired(name) != f"{ip}/{gw_if.network.prefixlen}":
            self.overlay.ensure_bridge(gw_if, mtu)
            self.overlay.wire(name, netns, ipaddress.IPv4Interface(f"{ip}/{gw_if.network.prefixlen}"), gw_if.ip, mtu)
        return ip

    def _stop(self, name: str) -> None:
        for rt in self.runtimes.values():
            try:
                if rt.status(name) is not None:
                    rt.stop(name)
                    log.info("unit %s stopped (%s runtime): no longer placed here", name, rt.name)
            except DataplaneError as exc:
                log.warning("stopping unit %s: %s", name, exc)
        self.overlay.unwire(name)
        self._local.pop(name, None)
        if self._addresses.pop(name, None) is not None:
            self._save_addresses()

    # -- addresses on the host's subnet -----------------------------------------------------------
    def _address_file(self) -> str:
        return os.path.join(self.opts.state_dir, "units", "addresses.json")

    def _load_addresses(self) -> dict[str, str]:
        try:
            with open(self._address_file()) as fh:
                return {str(k): str(v) for k, v in json.load(fh).items()}
        except (OSError, ValueError):
            return {}

    def _save_addresses(self) -> None:
        os.makedirs(os.path.dirname(self._address_file()), exist_ok=True)
        tmp = self._address_file() + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self._addresses, fh)
        os.replace(tmp, self._address_file())

    def _address(self, name: str, gateway: ipaddress.IPv4Interface) -> str:
        """The unit's address on this host's subnet: kept while it stays here (a new lease's subnet
        gives new ones), else the lowest free one after the gateway."""
        held = self._addresses.get(name)
        if held is not None and ipaddress.IPv4Address(held) in gateway.network:
            return held
        taken = {ipaddress.IPv4Address(a) for a in self._addresses.values()} | {gateway.ip}
        for ip in gateway.network.hosts():
            if ip not in taken:
                self._addresses[name] = str(ip)
                self._save_addresses()
                return str(ip)
        raise DataplaneError(f"the subnet {gateway.network} has no address left for unit {name}")

    # -- reports ------------------------------------------------------------------------------------
    async def _publish_reports(self, reports: dict[str, dict[str, Any]]) -> None:
        m = self.opts.machine.id
        items: dict[str, bytes | None] = {}
        for name, r in reports.items():
            items[f"state/{name}/{m}"] = json.dumps({"machine": m, **r}, sort_keys=True).encode()
            loc = self._local.get(name)
            if loc is not None and r.get("sub") == "running" and r.get("ip"):
                spec = loc.unit.spec
                # a global unit runs on many machines: each instance its own endpoint (and name)
                ep = f"{UnitName(name).name}-{m}" if loc.unit.is_global else name
                items[f"endpoints/{loc.unit.service}/{ep}"] = json.dumps(
                    {"unit": name, "ip": r["ip"], "machine": m,
                     "ports": [{"port": p.port, "protocol": p.protocol, "name": p.name} for p in spec.ports]},
                    sort_keys=True).encode()
        for key in list(self._published):
            if (key.startswith("state/") or key.startswith("endpoints/")) and key not in items:
                items[key] = None  # stopped, or moved away: withdrawn
        try:
            await self._publish(items)
        except (RegistryUnavailable, RegistryRefused) as exc:
            log.debug("publishing unit reports: %s", exc)

    async def _tenant_endpoints(self, reports: dict[str, dict[str, Any]]) -> None:
        """An Endpoint object (netd/v1) for each running unit on each tenant network it names, in the
        unit's namespace (the switch loop wires it, on this host's OVS), labelled with the unit;
        deleted when the unit stops or leaves. Written through the same checked plans as netctl's."""
        from netd.core.specplan import PlanError, plan_apply, plan_delete
        from netd.errors import ConflictError
        from netd.model.specs import Endpoint, check_objects, parse_object

        wanted: dict[str, Any] = {}
        for name, loc in sorted(self._local.items()):
            if reports.get(name, {}).get("sub") != "running" or not loc.unit.spec.tenants:
                continue
            if not self.opts.node:
                reports[name]["message"] = "tenant networks need this host's switch (--ovs-bridge)"
                continue
            kind, target = self._runtime(loc.unit).target(name)
            for tenant in loc.unit.spec.tenants:
                ep_name = f"u-{unit_label(name)}-{tenant}"[:63].rstrip("-")
                obj, issues = parse_object({"apiVersion": "netd/v1", "kind": "Endpoint",
                                            "metadata": {"name": ep_name, "labels": {"netd.unit": name}},
                                            "spec": {"tenant": tenant, "host": self.opts.node, kind: target}})
                if obj is None:
                    reports[name]["message"] = f"tenant {tenant}: " + "; ".join(i.message for i in issues)
                    continue
                wanted[ep_name] = obj
        for _ in range(5):
            stored, _bad = await self.store.read()
            mine = {o.metadata.name: o for o, _ in stored.objects.values() if isinstance(o, Endpoint)
                    and o.metadata.labels.get("netd.unit") and o.spec.host == self.opts.node}
            add = [o for n, o in wanted.items() if n not in mine or mine[n] != o]
            refused = {add[i.index].metadata.name: i.message for i in check_objects(
                list(enumerate(add)), [o for o, _ in stored.objects.values()]) if i.index is not None}
            for ep, why in refused.items():  # (a tenant that does not exist: said on the unit, not fatal)
                unit = wanted[ep].metadata.labels["netd.unit"]
                reports.get(unit, {})["message"] = f"endpoint {ep}: {why}"
            add = [o for o in add if o.metadata.name not in refused]
            gone = [("Endpoint", n) for n in mine if n not in wanted]
            try:
                if add:
                    await self.store.commit(plan_apply(add, stored), stored)
                    log.info("units' tenant endpoints: %s", ", ".join(o.metadata.name for o in add))
                    continue  # (read again before deleting: one plan per read)
                if gone:
                    await self.store.commit(plan_delete(gone, stored, force=True), stored)
                return
            except ConflictError:
                continue
            except PlanError as exc:
                log.warning("units' tenant endpoints: %s", exc)
                return

    def journal(self, unit: str, lines: int) -> str | None:
        for rt in self.runtimes.values():
            if unit in rt.units() or rt.status(unit) is not None:
                return rt.logs(unit, lines)
        return None

    def close(self) -> None:
        self.overlay.close()
