"""The per-host agent: lease, subnet.env, routes and ip-masq, reconciled level-triggered.

Three tasks share one asyncio loop, each supervised (netd.aio.supervise: a task that raises is
logged with its traceback, counted in netd_task_failures_total, shown on /readyz and restarted):
  * ``_sync_loop``: every wake-up (a watch event, a keepalive finding our lease gone) and every
    ``resync_interval`` it re-reads config and subnets from scratch, makes sure we hold our
    lease, and diffs desired routes against what the kernel has, applying only the diff;
  * ``_watch_loop``: watches ``subnets/`` from the last seen revision + 1; a broken stream is
    re-created from there, a compacted revision triggers a full re-list;
  * ``_keepalive_loop``: refreshes our etcd lease (never rewrites the key).
Nothing here exits because etcd is away: the kernel keeps forwarding with the last state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from netd.adapters.files import read_text, write_atomic
from netd.adapters.masq import NftMasquerade
from netd.adapters.netlink import Backend
from netd.adapters.registry import Registry, Snapshot
from netd.agent.leases import SubnetLeaser
from netd.agent.metrics import AgentMetrics
from netd.aio import Background, supervise
from netd.core.dataplane import desired_state, plan_dataplane, select_peers
from netd.core.subnetenv import previous_ipv6_subnet, previous_subnet, render_subnet_env
from netd.errors import CompactedError, ConfigError, NetdError, RegistryRefused, RegistryUnavailable
from netd.model import Lease, LeaseAttrs, NetworkConfig, parse_network_config

log = logging.getLogger(__name__)
T = TypeVar("T")
H = TypeVar("H", bound=Hashable)


@dataclass
class AgentOptions:
    public_ip: ipaddress.IPv4Address
    subnet_file: str = "/run/flannel/subnet.env"
    ip_masq: bool = False
    lease_ttl: int = 24 * 3600
    resync_interval: float = 5.0
    config_source: str = "/coreos.com/network/config"


@dataclass
class Status:
    ready: bool = False
    reason: str = "starting"
    details: dict[str, object] = field(default_factory=dict)


class Agent:
    def __init__(
        self,
        registry: Registry,
        make_backend: Callable[[NetworkConfig], Backend],
        options: AgentOptions,
        metrics: AgentMetrics | None = None,
        masq: NftMasquerade | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.make_backend = make_backend
        self.opts = options
        self.metrics = metrics or AgentMetrics()
        self.masq = masq if masq is not None else (NftMasquerade() if options.ip_masq else None)
        self.rng = rng or random.Random()
        self.leaser = SubnetLeaser(registry, options.public_ip, options.lease_ttl, self.rng, self.metrics)
        self.cfg: NetworkConfig | None = None
        self.backend: Backend | None = None
        self.lease: Lease | None = None
        self.last_revision: int | None = None
        self.status = Status()
        self.etcd_down_since: float | None = None
        #: etcd's last "no" (permission, auth...) to each kind of call, until that call succeeds: a
        #: refusal of one (the subnets' keys) is not mended by another's success (the config)
        self.etcd_refusals: dict[str, str] = {}
        self.failed_tasks: dict[str, str] = {}  # loops that raised, until their restart
        self.task_restarts: dict[str, int] = {}
        self._background = Background()  # fire-and-forget revokes, referenced until done
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._have_revision = asyncio.Event()
        self._warned: dict[str, set[Any]] = {}
        # Kernel work (netlink, nft) runs on one thread of its own: pyroute2's sync API cannot
        # run inside an asyncio loop, and one thread keeps dataplane changes serialised.
        self._dataplane = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dataplane")

    async def _on_dataplane(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._dataplane, fn, *args)

    # -- readiness -------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str, dict[str, object]]:
        st = self.status
        details = dict(st.details)
        if self.etcd_down_since is not None:
            details["etcd"] = f"unreachable for {time.monotonic() - self.etcd_down_since:.0f}s"
        if self.etcd_refusals:
            details["etcd_refused"] = "; ".join(f"{op}: {why}" for op, why in sorted(self.etcd_refusals.items()))
        if self.task_restarts:
            details["task_restarts"] = dict(self.task_restarts)
        if self.backend is not None:
            details.update(self.backend.health())  # live, not as of the last sync
        broken = self.backend.needs_repair() if self.backend is not None else None
        if broken:
            return False, broken, details
        if self.failed_tasks:  # a loop is down until its restart: the host is not what it says it is
            name, why = sorted(self.failed_tasks.items())[0]
            return False, f"task {name} failed ({why}); restarting it", details
        return st.ready, st.reason, details

    def dataplane_view(self) -> dict[str, object] | None:
        """What the data path holds now, read from it: the kernel's routes, neighbours and FDB
        entries (vxlan, host-gw), or the table the udp fast path's threads route by. For /dataplane;
        called from the HTTP thread, it runs on the dataplane thread like every kernel operation."""
        backend = self.backend
        if backend is None:
            return None
        state = self._dataplane.submit(backend.observe).result(timeout=5)
        return {"backend": backend.name, "routes": sorted(str(r.dst) for r in state.routes),
                "neighbours": sorted(f"{n.ip} {n.mac}" for n in state.neighbours),
                "fdb": sorted(f"{f.mac} {f.dst}" for f in state.fdb)}

    def _set_status(self, ready: bool, reason: str, **details: object) -> None:
        if (ready, reason) != (self.status.ready, self.status.reason):
            log.log(logging.INFO if ready else logging.WARNING, "readiness: %s (%s)",
                    "ready" if ready else "not ready", reason)
        self.status = Status(ready, reason, details)
        self.metrics.ready.set(1 if ready else 0)

    def _etcd_error(self, op: str, exc: RegistryUnavailable | RegistryRefused) -> None:
        """Unavailable: etcd could not answer (the registry failed over already); refused: it said
        no (permission, auth, an invalid request), which no retry elsewhere mends: an operator must
        act, so it is shown on /readyz as what it is, never as "unreachable"."""
        if isinstance(exc, RegistryRefused):
            self.metrics.etcd_errors.labels(op, "refused").inc()
            if self.etcd_refusals.get(op) != str(exc):
                log.error("etcd refused %s: %s", op, exc)
            self.etcd_refusals[op] = str(exc)
            return
        self.metrics.etcd_errors.labels(op, "unavailable").inc()
        if self.etcd_down_since is None:
            self.etcd_down_since = time.monotonic()
            log.warning("etcd unreachable (%s): %s; keeping the current routes", op, exc)

    def _etcd_ok(self, op: str) -> None:
        if self.etcd_down_since is not None:
            log.info("etcd reachable again after %.1fs", time.monotonic() - self.etcd_down_since)
            self.etcd_down_since = None
        refused = self.etcd_refusals.pop(op, None)
        if refused is not None:
            log.info("etcd answers %s again (after: %s)", op, refused)

    def _task_failed(self, name: str, exc: BaseException) -> None:
        self.metrics.task_failures.labels(name).inc()
        self.failed_tasks[name] = f"{type(exc).__name__}: {exc}"
        self.task_restarts[name] = self.task_restarts.get(name, 0) + 1
        self.wake()

    def _task_restarted(self, name: str) -> None:
        self.failed_tasks.pop(name, None)
        log.info("task %s restarted", name)

    def wake(self) -> None:
        self._wake.set()

    def _on_dataplane_fault(self) -> None:
        if self.backend is not None:
            self.backend.clear_fault()
        log.debug("the data path reported a fault: syncing now")
        self.wake()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    # -- main ------------------------------------------------------------------------------
    async def run(self) -> None:
        tasks = [
            asyncio.create_task(supervise(name, body, self._stopping, self._task_failed, self._task_restarted),
                                name=name)
            for name, body in (("sync", self._sync_loop), ("watch", self._watch_loop),
                               ("keepalive", self._keepalive_loop))
        ]
        try:
            await self._stopping.wait()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            fault_fd = self.backend.fault_fd() if self.backend is not None else None
            if fault_fd is not None:
                asyncio.get_running_loop().remove_reader(fault_fd)
            await self._background.wait(5.0)
            await self._on_dataplane(self.shutdown)
            self._dataplane.shutdown(wait=True)

    def shutdown(self) -> None:
        """Clean shutdown: remove ip-masq rules. The lease and routes stay, so a restart is seamless.

        The backend is left running: the udp fast path forwards until the process exits (see
        close() for in-process users), so a restart's pause is as short as it can be.
        """
        if self.masq is not None and self.opts.ip_masq:
            try:
                self.masq.remove()
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                log.warning("removing ip-masq rules failed: %s", exc)

    def close(self) -> None:
        """Release the backend (its kernel state stays). For agents embedded in a longer-lived process."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    async def _sync_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            await self.sync_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.opts.resync_interval)
            await asyncio.sleep(0.05)  # coalesce bursts of events into one sync

    async def sync_once(self) -> None:
        """One level-triggered iteration; never raises (errors become readiness reasons)."""
        self.metrics.reconcile_runs.inc()
        try:
            await self._sync()
        except RegistryUnavailable as exc:
            self._etcd_error("sync", exc)
            if self.lease is None:
                self._set_status(False, f"etcd unreachable before a lease was acquired: {exc}")
        except RegistryRefused as exc:
            self._etcd_error("sync", exc)
            self._set_status(False, str(exc))
        except ConfigError as exc:
            self.metrics.config_valid.set(0)
            self._set_status(False, str(exc))
        except NetdError as exc:
            self.metrics.reconcile_errors.inc()
            self._set_status(False, str(exc))
        except Exception as exc:
            self.metrics.reconcile_errors.inc()
            log.exception("reconcile failed; retrying on the next interval")
            self._set_status(False, f"internal error: {exc!r}")

    async def _sync(self) -> None:
        backend = self.backend
        if backend is not None and self.lease is not None and backend.needs_repair():
            # before anything of etcd's: a deleted TUN comes back with the routes it had, etcd or not
            await self._on_dataplane(backend.configure_own, self.lease)
        raw = await self.registry.get_config()
        self._etcd_ok("sync")
        if raw is None:
            raise ConfigError(f"{self.opts.config_source}: no network config; set one with `netctl config set`")
        cfg = parse_network_config(raw, source=self.opts.config_source)
        self.metrics.config_valid.set(1)
        if self.cfg is None:
            self.backend = await self._on_dataplane(self.make_backend, cfg)
            stats, features = getattr(self.backend, "stats", None), getattr(self.backend, "features", None)
            if stats is not None and features is not None:
                self.metrics.attach_fast_path(stats, features)
            fault_fd = self.backend.fault_fd()
            if fault_fd is not None:  # the data path can say it needs a repair (a deleted TUN): sync at once
                asyncio.get_running_loop().add_reader(fault_fd, self._on_dataplane_fault)
            self.cfg = cfg
            log.info("network config: %s, /%d subnets, backend %s", cfg.network, cfg.subnet_len, cfg.backend.type)
        elif cfg != self.cfg:
            raise ConfigError(
                f"{self.opts.config_source}: network config changed (was {self.cfg.network} "
                f"/{self.cfg.subnet_len} {self.cfg.backend.type}, now {cfg.network} /{cfg.subnet_len} "
                f"{cfg.backend.type}); restart netd to apply it. Keeping the current routes"
            )
        assert self.backend is not None
        cfg = self.cfg

        snap = await self.registry.list_subnets()
        if self.last_revision is None:
            self.last_revision = snap.revision
            self._have_revision.set()
        for _ in self._warn_on_change("invalid", snap.invalid, "ignoring unparseable subnet key %s"):
            self.metrics.leases_rejected.labels("unparseable").inc()

        own = await self._ensure_lease(cfg, snap)
        leases = [lease for lease in snap.leases if lease.key != own.key] + [own]

        mtu = self.backend.mtu()
        ipv6 = (cfg.ipv6.network, own.ipv6_subnet) if cfg.ipv6 and own.ipv6_subnet else None
        env = render_subnet_env(cfg.network, own.subnet, mtu, self.opts.ip_masq, ipv6)
        if write_atomic(self.opts.subnet_file, env):
            log.info("wrote %s (subnet %s%s, MTU %d)", self.opts.subnet_file, own.subnet,
                     f" and {own.ipv6_subnet}" if ipv6 else "", mtu)

        backend = self.backend
        await self._on_dataplane(backend.configure_own, own)
        # a dual-stack key from an earlier EnableIPv6 run carries no IPv6 routes once it is off
        dp_own = own if ipv6 else dataclasses.replace(own, ipv6_subnet=None)
        desired, skipped = desired_state(cfg, backend.name, dp_own, leases)
        plan = plan_dataplane(desired, await self._on_dataplane(backend.observe))
        errors: list[str] = []
        if plan.changes:
            errors = await self._on_dataplane(backend.apply, plan)
            self.metrics.reconcile_repairs.inc(plan.changes - len(errors))
            log.info(
                "reconciled: +%d/-%d routes, +%d/-%d neighbours, +%d/-%d fdb%s",
                len(plan.add_routes), len(plan.del_routes), len(plan.add_neighbours),
                len(plan.del_neighbours), len(plan.add_fdb), len(plan.del_fdb),
                f"; errors: {'; '.join(errors)}" if errors else "",
            )
        for rejected in self._warn_on_change("skipped", skipped, "lease not routed to: %s"):
            self.metrics.leases_rejected.labels(rejected.reason).inc()
        if self.masq is not None and self.opts.ip_masq:
            await self._on_dataplane(self.masq.ensure, cfg.network, own.subnet, ipv6)

        peers, _ = select_peers(cfg, dp_own, leases, backend.name)
        self.metrics.peers.set(len(peers))
        log.debug("sync: lease %s, %d peers, %d changes, revision %s", own.subnet, len(peers), plan.changes,
                  snap.revision)
        if errors:
            self._set_status(False, f"{len(errors)} dataplane operations failed: {errors[0]}")
        else:
            self._set_status(
                True, "lease held, routes in place, subnet.env written",
                subnet=str(own.subnet), public_ip=str(own.attrs.public_ip), peers=len(peers),
                backend=backend.name, routes=sorted(str(r.dst) for r in desired.routes),
            )

    def _warn_on_change(self, topic: str, items: Iterable[H], fmt: str) -> list[H]:
        """Warn about each item once, when it appears, not on every resync; returns the new ones."""
        new = sorted(set(items) - self._warned.get(topic, set()))  # type: ignore[type-var]
        for item in new:
            log.warning(fmt, item)
        self._warned[topic] = set(items)
        return new

    # -- lease -----------------------------------------------------------------------------
    def _wanted_attrs(self) -> LeaseAttrs:
        assert self.backend is not None
        return LeaseAttrs(self.opts.public_ip, self.backend.name, self.backend.backend_data())

    async def _ensure_lease(self, cfg: NetworkConfig, snap: Snapshot) -> Lease:
        attrs = self._wanted_attrs()
        previous: ipaddress.IPv4Network | None
        previous_ipv6: ipaddress.IPv6Network | None
        if self.lease is not None:
            # our key by its name: another key for the same subnet (a bogus one, or another form that
            # sorts first) must not make us think we lost it
            current = snap.find_key(self.lease.key)
            if current is not None and current.attrs.public_ip == self.opts.public_ip:
                if current.attrs != attrs:
                    current = await self.leaser.update(current, attrs, None)
                self.lease = current
                return current
            held_by = "nobody" if current is None else f"{current.attrs.public_ip}"
            log.warning("lost subnet %s (now held by %s); re-acquiring", self.lease.subnet, held_by)
            self.metrics.lease_held.set(0)
            if self.lease.lease_id and current is None:
                self._background.spawn(self._revoke_quietly(self.lease.lease_id), "revoke lost lease")
            previous, previous_ipv6 = self.lease.subnet, self.lease.ipv6_subnet
        else:
            text = read_text(self.opts.subnet_file)
            previous, previous_ipv6 = previous_subnet(text), previous_ipv6_subnet(text)
        lease = await self.leaser.acquire(cfg, snap, attrs, previous, previous_ipv6)
        if self.lease is not None and lease.subnet != self.lease.subnet:
            log.warning("subnet changed from %s to %s: containers on the old subnet lose connectivity",
                        self.lease.subnet, lease.subnet)
        self.lease = lease
        self.metrics.lease_held.set(1)
        self.metrics.lease_info.clear()
        self.metrics.lease_info.labels(str(lease.subnet), str(lease.attrs.public_ip), lease.attrs.backend_type).set(1)
        return lease

    async def _revoke_quietly(self, lease_id: int) -> None:
        with contextlib.suppress(Exception):
            await self.registry.revoke(lease_id)

    async def _keepalive_loop(self) -> None:
        interval = max(0.5, min(self.opts.lease_ttl / 3, 60.0))
        while not self._stopping.is_set():
            await asyncio.sleep(interval)
            lease = self.lease
            if lease is None or lease.is_reservation:
                continue
            try:
                ttl = await self.registry.keepalive(lease.lease_id)
            except (RegistryUnavailable, RegistryRefused) as exc:
                self._etcd_error("keepalive", exc)
                continue
            self._etcd_ok("keepalive")
            self.metrics.lease_ttl.set(ttl)
            if ttl == 0:
                log.warning("etcd lease %x of subnet %s is gone; re-acquiring", lease.lease_id, lease.subnet)
                self.wake()

    # -- watch -----------------------------------------------------------------------------
    async def _watch_loop(self) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            await self._have_revision.wait()
            assert self.last_revision is not None
            try:
                async for events in self.registry.watch_subnets(self.last_revision + 1):
                    backoff = 0.2
                    self._etcd_ok("watch")
                    for ev in events:
                        self.last_revision = max(self.last_revision or 0, ev.revision)
                        log.debug("watch: %s %s at revision %d", "delete" if ev.deleted else "put",
                                  ev.subnet, ev.revision)
                    self.wake()
            except CompactedError as exc:
                log.warning("watch: %s", exc)
                self.metrics.watch_restarts.labels("compacted").inc()
                self.last_revision = None
                self._have_revision.clear()
                self.wake()
            except (RegistryUnavailable, RegistryRefused) as exc:
                self._etcd_error("watch", exc)
                self.metrics.watch_restarts.labels("unavailable" if isinstance(exc, RegistryUnavailable)
                                                   else "refused").inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                self.metrics.watch_restarts.labels("closed").inc()
                await asyncio.sleep(backoff)
