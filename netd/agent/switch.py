"""The switch loop: a host's Open vSwitch made to match the tenant networks and endpoints in etcd.

Level-triggered like the overlay's loop: a watch event under --netd-prefix only wakes it early; every
sync re-reads the objects, address claims and live hosts, wires and unwires this host's endpoints,
compiles the flows (netd.core.tenants) and writes the bundle of what differs. Beside it:
  * the canary loop checks, twice a second, that the bridge still has netd's canary flow: when
    ovs-vswitchd restarted it has not, and a sync reinstalls everything at once;
  * the presence loop keeps ``hosts/<node>`` (this host's tunnel address) and the endpoints'
    ``status/endpoints/<name>`` bound to one kept-alive etcd lease: a host that goes away takes its
    records with it, and peers stop tunnelling to it.
Nothing here exits because etcd or OVS is away: the last flows stay and the loop retries.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

from netd.adapters.objects import EtcdObjectStore
from netd.adapters.ovs import OvsSwitch
from netd.adapters.wiring import Wiring, host_port_name
from netd.aio import run_supervised
from netd.core.chains import ChainState, HopCounter, SwitchProgram, compile_switch
from netd.core.flows import FlowDelta
from netd.core.tenants import (
    T_CHAINS,
    LocalPort,
    LocalWant,
    SwitchView,
    clashing_vnis,
    endpoints_for,
)
from netd.errors import CompactedError, DataplaneError, NetdError, RegistryRefused, RegistryUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
PHY_BRIDGE = "netd-phy"


@dataclass
class SwitchOptions:
    node: str
    tunnel_ip: ipaddress.IPv4Address
    datapath: str = "system"
    phy_iface: str | None = None  # the userspace datapath's underlay interface (its address moves to netd-phy)
    resync_interval: float = 5.0
    canary_interval: float = 0.5
    host_ttl: int = 30
    default_mtu: int = 1450
    #: a host's chain report is rewritten at once when a chain's state or hops change, and for new
    #: packet counts at most this often (the counts are live on /metrics)
    report_interval: float = 30.0


class SwitchMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.connected = Gauge("netd_ovs_connected", "1 while OVSDB and ovs-vswitchd answer", registry=r)
        self.flows = Gauge("netd_ovs_flows", "netd's flows on the integration bridge, by table", ["table"],
                           registry=r)
        self.applies = Counter("netd_ovs_flow_applies", "Flow bundles written", registry=r)
        self.changes = Counter("netd_ovs_flow_changes", "Flows written, by operation", ["op"], registry=r)
        self.apply_seconds = Histogram("netd_ovs_apply_seconds", "Time to compile and write one sync's flows",
                                       registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.reinstalls = Counter("netd_ovs_reinstalls", "Times the canary was gone (ovs-vswitchd restarted) and "
                                  "the flows were reinstalled", registry=r)
        self.revision = Gauge("netd_spec_revision", "The etcd revision of the specs last applied to OVS", registry=r)
        self.endpoints = Gauge("netd_endpoints", "This host's endpoints, by state", ["state"], registry=r)
        self.groups = Gauge("netd_ovs_groups", "netd's select groups on the integration bridge (spread hops)",
                            registry=r)
        self.chains = Gauge("netd_chains", "Service chains programmed here, by state (ready, hop_missing, "
                            "not_classifying)", ["state"], registry=r)
        #: (chain, hop, function) -> (packets, bytes) out of that function, from its flows' counters
        self.hops: dict[tuple[str, int, str], tuple[int, int]] = {}
        r.register(_HopCollector(self))


class _HopCollector:
    """netd_chain_hop_packets_total / _bytes_total from the last sync's read of the flows' own
    counters (a restarted ovs-vswitchd starts them again from 0: a counter reset)."""

    def __init__(self, metrics: SwitchMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        packets = CounterMetricFamily("netd_chain_hop_packets", "Frames that came out of a service function, "
                                      "by chain, hop (from 1) and function (on the function's host)",
                                      labels=["chain", "hop", "sf"])
        octets = CounterMetricFamily("netd_chain_hop_bytes", "Bytes that came out of a service function",
                                     labels=["chain", "hop", "sf"])
        for (chain, hop, sf), (n, b) in sorted(self.metrics.hops.items()):
            packets.add_metric([chain, str(hop), sf], n)
            octets.add_metric([chain, str(hop), sf], b)
        yield packets
        yield octets


@dataclass
class SwitchStatus:
    ovs: str = "not yet connected"
    revision: int = 0
    endpoints: dict[str, str] = field(default_factory=dict)  # name -> "wired" or why not
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    chains: dict[str, str] = field(default_factory=dict)  # name -> ChainState.state


@dataclass(frozen=True)
class Inputs:
    """What one sync reads from etcd."""

    stored: Any  # netd.core.specplan.Stored
    local: list[LocalWant]
    remote: list[Any]
    peers: tuple[ipaddress.IPv4Address, ...]
    tenants: tuple[Any, ...]
    skipped: list[str]
    functions: tuple[Any, ...] = ()
    chains: tuple[Any, ...] = ()
    addresses: tuple[tuple[str, ipaddress.IPv4Address], ...] = ()


@dataclass(frozen=True)
class Applied:
    """What one sync did to the switch."""

    states: dict[str, str]  # endpoint -> "wired" or why not
    delta: FlowDelta
    counts: dict[int, int]  # table -> netd's flows
    groups: int
    chains: dict[str, ChainState]
    hops: dict[tuple[str, int, str], tuple[int, int]]  # (chain, hop, function) -> (packets, bytes)


class SwitchAgent:
    def __init__(self, store: EtcdObjectStore, switch: OvsSwitch, wiring: Wiring, options: SwitchOptions,
                 registry: CollectorRegistry) -> None:
        self.store = store
        self.switch = switch
        self.wiring = wiring
        self.opts = options
        self.metrics = SwitchMetrics(registry)
        self.status = SwitchStatus()
        self._wake = asyncio.Event()
        self._lease: int | None = None
        self._published: dict[str, bytes] = {}  # what status/ and hosts/ hold of ours
        self._reinstalling = False
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="switch")

    async def _on_pool(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def wake(self) -> None:
        self._wake.set()

    # -- readiness -------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str | None, dict[str, object]]:
        st = self.status
        details: dict[str, object] = {"ovs": st.ovs, "spec_revision": st.revision, "endpoints": dict(st.endpoints)}
        if st.chains:
            details["chains"] = dict(st.chains)
        if st.error:
            return False, st.error, details
        failing = {n: s for n, s in st.endpoints.items() if s != "wired"}
        return True, None, {**details, **({"endpoints_not_wired": failing} if failing else {})}

    # -- loops -----------------------------------------------------------------------------------
    async def run(self, stopping: asyncio.Event) -> None:
        def failed(name: str, exc: BaseException) -> None:
            self.status.error = f"task {name} failed ({type(exc).__name__}: {exc}); restarting it"

        def restarted(name: str) -> None:
            self.status.error = None

        try:
            await run_supervised("switch-", (("sync", lambda: self._sync_loop(stopping)),
                                             ("canary", lambda: self._canary_loop(stopping)),
                                             ("presence", lambda: self._presence_loop(stopping)),
                                             ("watch", lambda: self._watch_loop(stopping))),
                                 stopping, failed, restarted)
        finally:
            self._pool.shutdown(wait=True)

    async def _sync_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self._wake.clear()
            await self.sync_once()
            try:
                await asyncio.wait_for(self._wake.wait(), self.opts.resync_interval)
            except TimeoutError:
                pass
            await asyncio.sleep(0.02)  # coalesce a burst of events

    async def _canary_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await asyncio.sleep(self.opts.canary_interval)
            try:
                present = await self._on_pool(self.switch.canary_present)
            except DataplaneError as exc:
                self.metrics.connected.set(0)
                self.status.ovs = f"unreachable: {exc}"
                continue
            if not present and self.status.revision and not self._reinstalling:
                log.warning("the canary flow is gone (ovs-vswitchd restarted?): reinstalling every flow")
                self._reinstalling = True  # (told once, until a sync has put it back)
                self.wake()

    async def _presence_loop(self, stopping: asyncio.Event) -> None:
        interval = max(1.0, self.opts.host_ttl / 3)
        while not stopping.is_set():
            try:
                if self._lease is None or await self.store.keepalive(self._lease) == 0:
                    self._lease = await self.store.grant(self.opts.host_ttl)
                    self._published.clear()
                    await self._publish({f"hosts/{self.opts.node}": json.dumps(
                        {"node": self.opts.node, "tunnel_ip": str(self.opts.tunnel_ip)}).encode()})
                    self.wake()  # (the statuses are published by the next sync)
            except (RegistryUnavailable, RegistryRefused) as exc:
                log.debug("presence: %s", exc)
            await asyncio.sleep(interval)

    async def _watch_loop(self, stopping: asyncio.Event) -> None:
        revision = None
        while not stopping.is_set():
            if revision is None:
                revision = self.status.revision or None
                if revision is None:
                    await asyncio.sleep(0.2)
                    continue
            try:
                async for event in self.store.watch_all(revision + 1):
                    revision = max(revision, int(event.kv.mod_revision))
                    key = self.store.key_of(event)
                    # hosts' reports of their endpoints wake it too (a function's leg up or down on a
                    # peer changes the chains); the chain reports, which every sync may rewrite, do not
                    if not key.startswith("status/") or key.startswith("status/endpoints/"):
                        self.wake()
            except CompactedError:
                revision = None
                self.wake()
            except (RegistryUnavailable, RegistryRefused):
                await asyncio.sleep(0.5)

    async def _publish(self, items: dict[str, bytes | None]) -> None:
        for key, value in items.items():
            if self._published.get(key) == value:
                continue
            if value is None:
                await self.store.delete_key(key)
                self._published.pop(key, None)
            elif self._lease is not None:
                await self.store.put_bound(key, value, self._lease)
                self._published[key] = value

    # -- one sync ----------------------------------------------------------------------------------
    async def sync_once(self) -> None:
        """Read the specs and peers, then make the bridge and the endpoints match. With etcd away, the
        last specs read are applied again (a restarted ovs-vswitchd is reprogrammed all the same) and
        the host stays ready, as the overlay does: what it holds is still the last word it had."""
        try:
            inputs = await self._read_inputs()
            self._last_inputs = inputs
        except RegistryRefused as exc:  # etcd answered no (permission, auth): not an outage to ride out
            self.status.error = f"etcd refused: {exc}"
            return
        except RegistryUnavailable as exc:
            if self._last_inputs is None:
                self.status.error = f"etcd: {exc}"
                return
            log.debug("etcd: %s; applying the specs of revision %d again", exc, self.status.revision)
            inputs = self._last_inputs
        try:
            await self._sync(inputs)
        except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, shown, retried next sync
            log.exception("switch sync failed")
            self.status.ovs, self.status.error = f"error: {exc!r}", f"switch sync: {exc!r}"

    async def _read_inputs(self) -> Inputs:
        stored, bad = await self.store.read()
        hosts_raw = await self.store.read_prefix("hosts/")
        reports = await self.store.read_prefix("status/endpoints/")
        for key in bad:
            log.warning("unreadable key %s", key)
        hosts: dict[str, ipaddress.IPv4Address] = {}
        for node, raw in hosts_raw.items():
            try:
                hosts[node] = ipaddress.IPv4Address(json.loads(raw)["tunnel_ip"])
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable host record hosts/%s", node)
        reported: dict[str, str] = {}
        for name, raw in reports.items():
            try:
                reported[name] = str(json.loads(raw)["state"])
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable endpoint report status/endpoints/%s", name)
        addresses = {name: ip for (_, ip), (name, _) in stored.claims.items()}
        objects = [o for o, _ in stored.objects.values()]
        local, remote, skipped = endpoints_for(objects, addresses, self.opts.node, hosts, self.opts.default_mtu,
                                               reported)
        tenants = tuple(o for o in objects if o.kind == "TenantNetwork")
        return Inputs(stored, local, remote, tuple(sorted(ip for node, ip in hosts.items() if node != self.opts.node)),
                      tenants, skipped + sorted(clashing_vnis(tenants).values()),
                      tuple(sorted((o for o in objects if o.kind == "ServiceFunction"), key=lambda o: o.metadata.name)),
                      tuple(sorted((o for o in objects if o.kind == "ServiceChain"), key=lambda o: o.metadata.name)),
                      tuple(sorted(addresses.items())))

    async def _sync(self, inputs: Inputs) -> None:
        stored = inputs.stored
        started = time.monotonic()
        try:
            done = await self._on_pool(self._apply, inputs)
        except (DataplaneError, NetdError) as exc:
            self.metrics.connected.set(0)
            self.status.ovs, self.status.error = f"error: {exc}", f"OVS: {exc}"
            log.warning("switch sync failed: %s", exc)
            return
        states, delta = done.states, done.delta
        self.metrics.apply_seconds.observe(time.monotonic() - started)
        # counted by the sync that put the canary back, whichever woke it (the canary loop, a watch
        # event or the resync): once per lost flow table
        if delta.restores_canary and self.status.revision:
            self.metrics.reinstalls.inc()
            log.warning("reinstalled every flow (the bridge had lost them: ovs-vswitchd restarted?)")
        self._reinstalling = False
        self.metrics.connected.set(1)
        if not delta.empty:
            self.metrics.applies.inc()
            for op, n in (("add", delta.added), ("modify", delta.modified), ("delete", delta.deleted)):
                if n:
                    self.metrics.changes.labels(op).inc(n)
            log.info("flows: +%d ~%d -%d, groups written %d (revision %d)", delta.added, delta.modified,
                     delta.deleted, delta.groups_written, stored.revision)
        self.metrics.flows.clear()
        for table, n in done.counts.items():
            self.metrics.flows.labels(str(table)).set(n)
        self.metrics.groups.set(done.groups)
        self.metrics.endpoints.clear()
        for state in {"wired" if s == "wired" else "not wired" for s in states.values()}:
            self.metrics.endpoints.labels(state).set(sum(1 for s in states.values() if (s == "wired") ==
                                                         (state == "wired")))
        for name, state in states.items():
            if self.status.endpoints.get(name) != state:
                (log.info if state == "wired" else log.warning)("endpoint %s: %s", name, state)
        chains = {name: st.state for name, st in done.chains.items()}
        for name, state in chains.items():
            if self.status.chains.get(name) != state:
                (log.info if state == "ready" else log.warning)("service chain %s: %s", name, state)
        self.metrics.chains.clear()
        for kind in {st.kind for st in done.chains.values()}:
            self.metrics.chains.labels(kind).set(sum(1 for st in done.chains.values() if st.kind == kind))
        self.metrics.hops = done.hops
        skipped = inputs.skipped
        if set(skipped) - set(self.status.skipped):
            for why in sorted(set(skipped) - set(self.status.skipped)):
                log.info("endpoint not handled here: %s", why)
        self.status = SwitchStatus("connected", stored.revision, states, skipped, chains=chains)
        self.metrics.revision.set(stored.revision)
        try:
            await self._publish_statuses(states, done)
        except (RegistryUnavailable, RegistryRefused) as exc:
            log.debug("publishing endpoint status: %s", exc)

    async def _publish_statuses(self, states: dict[str, str], done: Applied) -> None:
        items: dict[str, bytes | None] = {f"status/endpoints/{n}": json.dumps(
            {"host": self.opts.node, "state": s}).encode() for n, s in states.items()}
        for key in list(self._published):
            if key.startswith("status/endpoints/") and key not in items:
                items[key] = None
        # one key per host for the chains it programs (state, hops up, frames out of each of its
        # functions): rewritten at once when a state or hop changes, for new counts at most every
        # report_interval; nothing wakes on it
        shape = {name: {"state": st.state,
                        "hops": [{"hop": h.index + 1, "functions": list(h.functions), "up": list(h.live)}
                                 for h in st.hops]} for name, st in sorted(done.chains.items())}
        now = time.monotonic()
        if shape != self._chain_shape or now - self._chain_report_at >= self.opts.report_interval:
            report = {name: {**entry, "packets": {f"{hop}/{sf}": n for (c, hop, sf), (n, _) in
                                                  sorted(done.hops.items()) if c == name}}
                      for name, entry in shape.items()}
            items[f"status/chains/{self.opts.node}"] = json.dumps({"host": self.opts.node, "chains": report},
                                                                  sort_keys=True).encode() if report else None
            await self._publish(items)
            self._chain_shape, self._chain_report_at = shape, now  # (once it is written)
        else:
            await self._publish(items)

    def _apply(self, inputs: Inputs) -> Applied:
        """On the switch thread: bridge, underlay, tunnel, wiring, flows and groups."""
        sw = self.switch
        stored, local, tenants = inputs.stored, inputs.local, inputs.tenants
        sw.ensure_bridge()
        if self.opts.phy_iface:
            self._ensure_phy()
        tunnel = sw.ensure_tunnel(str(self.opts.tunnel_ip))
        objects = {o.metadata.name: o for o, _ in stored.objects.values() if o.kind == "Endpoint"}
        want = {w.endpoint: w for w in local}
        states: dict[str, str] = {}
        ports: list[LocalPort] = []
        existing = sw.endpoint_ports()  # port -> endpoint, from OVSDB (a port whose device vanished included)
        for port, endpoint in existing.items():  # ours that should no longer be here
            if endpoint not in want or port != host_port_name(endpoint):
                sw.remove_port(port)
                self.wiring.unwire(port)
                log.info("unwired endpoint %s (port %s)", endpoint, port)
        clash = clashing_vnis(tenants)
        for name, w in sorted(want.items()):
            spec = objects[name].spec
            port = host_port_name(name)
            if w.tenant.metadata.name in clash:
                states[name] = f"not programmed: {clash[w.tenant.metadata.name]}"
                continue
            try:
                path = self.wiring.target_path(spec)
                if path is None:
                    if self.wiring.is_wired(port) or port in existing:
                        sw.remove_port(port)
                        self.wiring.unwire(port)
                    states[name] = f"target gone: {spec.target} does not exist or is not running"
                    continue
                wiring = (spec, path, w.mac, w.ip, w.tenant.spec.subnet, w.mtu, w.gateway)
                if self.wiring.wired_as(port) != self.wiring.fingerprint(*wiring):  # new, changed or cut short
                    if port in existing:  # OVS lets go of the old device (the userspace datapath would keep
                        sw.remove_port(port)  # sending to its old ifindex; the kernel's marks it in error)
                    self.wiring.wire(name, *wiring)
                ofport = sw.ensure_endpoint_port(port, name)
            except DataplaneError as exc:
                states[name] = f"failed: {exc}"
                continue
            ports.append(LocalPort(w.tenant.metadata.name, name, ofport, w.mac, w.ip))
            states[name] = "wired"
        view = SwitchView(tenants, tuple(ports), tuple(inputs.remote), tunnel, inputs.peers, inputs.functions,
                          inputs.chains, inputs.addresses)
        if view != self._compiled[0]:  # compiling 1,000 tenants takes ~0.6 s (bench/flows.py): only on a change
            self._compiled = (view, compile_switch(view))
        prog = self._compiled[1]
        assert prog is not None
        delta = sw.sync_flows(prog.flows, prog.groups)  # every sync: the bridge is compared with what it must hold
        counts: dict[int, int] = {}
        for f in prog.flows:
            counts[f.table] = counts.get(f.table, 0) + 1
        return Applied(states, delta, counts, len(prog.groups), prog.chains.states,
                       self._hop_counts(prog.chains.counters) if prog.chains.counters else {})

    def _hop_counts(self, counters: dict[int, HopCounter]) -> dict[tuple[str, int, str], tuple[int, int]]:
        """Frames and bytes out of each function here, per chain and hop: its flows' own counters."""
        out: dict[tuple[str, int, str], tuple[int, int]] = {}
        for stat in self.switch.flow_stats(T_CHAINS):
            what = counters.get(stat.cookie)
            if what is not None:
                key = (what.chain, what.hop, what.sf)
                n, b = out.get(key, (0, 0))
                out[key] = (n + stat.packets, b + stat.bytes)
        return out

    def _ensure_phy(self) -> None:
        """The userspace datapath tunnels from an address on an OVS internal port: the underlay
        interface joins netd-phy and its address (the tunnel address) moves to netd-phy's port.
        After an ovs-vswitchd restart the port comes back without it, so this runs every sync."""
        from pyroute2.netlink.exceptions import NetlinkError

        assert self.opts.phy_iface is not None
        self.switch.ensure_phy(PHY_BRIDGE, self.opts.phy_iface)
        ipr = self.wiring.ipr
        tip = str(self.opts.tunnel_ip)
        phy = ipr.link_lookup(ifname=PHY_BRIDGE)
        iface = ipr.link_lookup(ifname=self.opts.phy_iface)
        if not phy or not iface:
            raise DataplaneError(f"{PHY_BRIDGE} or {self.opts.phy_iface} is missing")
        plen = 24
        for a in ipr.get_addr(index=iface[0], family=2):
            if a.get_attr("IFA_ADDRESS") == tip:
                plen = a["prefixlen"]
                ipr.addr("del", index=iface[0], address=tip, prefixlen=plen)
                log.info("moved the tunnel address %s/%d from %s to %s", tip, plen, self.opts.phy_iface, PHY_BRIDGE)
        have = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=phy[0], family=2)]
        if not any(addr == tip for addr, _ in have):
            try:
                ipr.addr("add", index=phy[0], address=tip, prefixlen=self._phy_plen or plen)
            except NetlinkError as exc:
                raise DataplaneError(f"addressing {PHY_BRIDGE} with {tip}: {exc}") from exc
        self._phy_plen = self._phy_plen or plen
        ipr.link("set", index=phy[0], state="up")
        ipr.link("set", index=iface[0], state="up")

    _phy_plen: int = 0
    _chain_shape: dict[str, Any] | None = None  # the chains' states and hops last reported
    _chain_report_at: float = 0.0
    _compiled: tuple[SwitchView | None, SwitchProgram | None] = (None, None)
    _last_inputs: Inputs | None = None  # what the last sync read from etcd

    def close(self) -> None:
        self.switch.close()
        self.wiring.close()
