"""The `udp` backend: flannel-udp's wire format, forwarded by the C fast path.

flannel-compatible: Backend {"Type": "udp", "Port": 8285}; the TUN (``flannel0``) has MTU =
underlay MTU - 28 and holds our subnet's network address with the cluster network's prefix
length, so the kernel routes the whole cluster network into it; leases carry PublicIP only.
Dual stack (EnableIPv6, netd's own extension: flannel's udp backend is IPv4 only): the TUN also
holds our IPv6 subnet's network address with the IPv6Network's prefix length; IPv6 inner
packets travel in the same IPv4 UDP datagrams (the payload is the inner packet, either family).

Restart without an outage: the TUN is persistent, and the route table is cached in
``--state-dir``; a new netd re-attaches to the TUN and loads the cached table before its slow
imports and before it has talked to etcd (``prestart_from_cache``), and the old one forwards
until it exits, so traffic pauses only for the moment between the two processes.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import threading
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netd.adapters.fastpath import THREAD_LAYOUTS, FastPath, UdpRoute, save_route_cache
from netd.adapters.netlink import UDP_TUN, Underlay, enable_forwarding, remove_other_backends
from netd.core.dataplane import DataplanePlan, DataplaneState, Route
from netd.errors import DataplaneError
from netd.model import Lease, NetworkConfig

log = logging.getLogger(__name__)

UDP_OVERHEAD = 28  # outer IPv4 + UDP headers
#: the alias netd gives the TUN it makes: the one device of that name it may delete and re-create
TUN_ALIAS = "netd udp fast path"
IFF_MULTICAST = 0x1000


class UdpBackend:
    name = "udp"

    def __init__(
        self,
        cfg: NetworkConfig,
        underlay: Underlay,
        ipr: IPRoute | None = None,
        offloads: bool = True,
        threads: int = 2,
        state_file: str | None = None,
        tun: str = UDP_TUN,
        prestarted: FastPath | None = None,
    ) -> None:
        self.cfg = cfg
        self.underlay = underlay
        self.ipr = ipr or IPRoute()
        remove_other_backends(self.ipr, self.name)
        self.port = cfg.backend.port
        self.tun = tun
        self.state_file = state_file
        self.offloads = offloads
        self.threads = threads
        self.save_errors = 0
        self.tun_recoveries = 0
        self._retired: dict[str, int] = {}  # counters of fast paths closed by a TUN recovery
        self._stats_lock = threading.Lock()  # stats() runs on the HTTP thread, a recovery on the sync's
        # written by the C threads when they find the TUN gone; the agent watches it (fault_fd)
        self._events = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        if prestarted is not None and (prestarted.tun, prestarted.port, prestarted.offloads_requested,
                                       prestarted.threads) != (tun, self.port, offloads, threads):
            prestarted.close()  # the config changed since the cache was written
            prestarted = None
        adopted = prestarted is not None
        try:
            self.fast = prestarted if prestarted is not None else self._start_fast_path(())
        except BaseException:
            os.close(self._events)
            raise
        self.fast.notify_tun_loss(self._events)
        log.info("udp fast path on %s, port %d, %s, offloads: %s%s", tun, self.port, THREAD_LAYOUTS[threads],
                 ", ".join(sorted(self.fast.features)) or "none (plain mode)",
                 f"; re-attached before contacting etcd with {len(self.fast.routes)} cached routes"
                 if adopted else "")

    def _start_fast_path(self, routes: tuple[UdpRoute, ...]) -> FastPath:
        fast = self._open(self.offloads)
        try:
            fast.set_routes(routes)
            fast.start()
        except BaseException:
            fast.close()
            raise
        return fast

    def _open(self, offloads: bool) -> FastPath:
        try:
            fast = FastPath(self.tun, ipaddress.IPv4Address("0.0.0.0"), self.port, offloads, self.threads)
        except DataplaneError as exc:
            found = self.ipr.link_lookup(ifname=self.tun)
            # EINVAL: the device of that name is no single-queue TUN (a TAP, a multi-queue TUN: the
            # kernel says so before it checks whether the device is busy). Only a device netd made
            # (its alias says so) is replaced; another is someone else's -- a VM's TAP, another
            # tool's TUN -- and is left alone, as is any device on any other error (EBUSY above
            # all: another process, a second netd or flannel, has the TUN open).
            if not found or exc.errno != errno.EINVAL or "attach to TUN" not in str(exc):
                raise
            alias = self._alias(found[0])
            if alias != TUN_ALIAS:
                raise DataplaneError(f"{self.tun} exists and is not netd's TUN ({exc}); its alias is "
                                     f"{alias or 'empty'!r}, not {TUN_ALIAS!r}, so netd leaves it alone: "
                                     "remove it by hand if it is a leftover", exc.errno) from exc
            log.info("recreating %s: %s", self.tun, exc)
            self.ipr.link("del", index=found[0])
            fast = FastPath(self.tun, ipaddress.IPv4Address("0.0.0.0"), self.port, offloads, self.threads)
        found = self.ipr.link_lookup(ifname=self.tun)
        if found and self._alias(found[0]) != TUN_ALIAS:
            self.ipr.link("set", index=found[0], ifalias=TUN_ALIAS)
        return fast

    def _alias(self, index: int) -> str:
        links = self.ipr.get_links(index)
        return str(links[0].get_attr("IFLA_IFALIAS") or "") if links else ""

    def fault_fd(self) -> int:
        """Readable when the data path needs a repair (the TUN was deleted): wake the sync loop."""
        return self._events

    def clear_fault(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._events)

    def needs_repair(self) -> str | None:
        lost = self.fast.tun_error()
        return f"TUN {self.tun} is gone ({os.strerror(lost)}): re-creating it" if lost else None

    def health(self) -> dict[str, object]:
        return {"tun_recoveries": self.tun_recoveries} if self.tun_recoveries else {}

    def _recover_tun(self, why: str) -> None:
        """The TUN is gone (deleted under us): a new one, and a new fast path on it with the same
        routes. The threads of the old one have stopped polling it, so nothing spun meanwhile."""
        routes = self.fast.routes
        log.warning("TUN %s is gone (%s): re-creating it and re-attaching the fast path with %d routes",
                    self.tun, why, len(routes))
        old = self.fast
        old.stop()  # its threads count no more; then its counters move to the retired ones at once, so a
        final = old.stats()  # scrape (another thread) never counts them twice or drops them for a moment
        with self._stats_lock:
            for name, value in final.items():
                self._retired[name] = self._retired.get(name, 0) + value
            old.close()  # (its stats are 0 from here: the sum stays the same)
        self.fast = self._start_fast_path(routes)  # (after the close: it binds the same port)
        self.fast.notify_tun_loss(self._events)
        self.tun_recoveries += 1

    def _save_state(self) -> None:
        """Cache the route table for a restart. If that fails, the old cache goes too (a restart
        must not adopt a stale anti-spoofing table; without a cache it waits for etcd instead), and
        the failure is logged and counted (netd_state_save_errors_total)."""
        if not self.state_file:
            return
        try:
            save_route_cache(self.state_file, self.tun, self.port, self.offloads, self.threads, self.fast.routes)
        except OSError as exc:
            self.save_errors += 1
            try:
                os.unlink(self.state_file)
                gone = "the old cache was removed"
            except FileNotFoundError:
                gone = "there was no old cache"
            except OSError as exc2:
                gone = f"the old cache could not be removed either ({exc2}): a restart may adopt stale routes"
            log.warning("saving the udp route cache %s failed: %s; %s", self.state_file, exc, gone)

    # -- Backend -------------------------------------------------------------------------------
    def backend_data(self) -> dict[str, Any]:
        return {}

    def mtu(self) -> int:
        return self.underlay.mtu - UDP_OVERHEAD

    def configure_own(self, own: Lease) -> None:
        lost = self.fast.tun_error()
        found = self.ipr.link_lookup(ifname=self.tun)
        if lost or not found:
            self._recover_tun(f"a TUN read or write failed: {os.strerror(lost)}" if lost else "no such device")
            found = self.ipr.link_lookup(ifname=self.tun)
            if not found:
                raise DataplaneError(f"TUN {self.tun} vanished again right after it was re-created")
        index = found[0]
        want6 = (str(own.ipv6_subnet.network_address), self.cfg.ipv6.network.prefixlen) \
            if self.cfg.ipv6 and own.ipv6_subnet else None
        self._ipv6_settings(index, want6 is not None)  # before the link is up: nothing of the kernel's leaks
        link = self.ipr.get_links(index)[0]
        if link.get_attr("IFLA_MTU") != self.mtu() or not link["flags"] & 1:
            self.ipr.link("set", index=index, mtu=self.mtu(), state="up")
        self._no_qdisc(index)
        self._set_addr(index, socket.AF_INET, (str(own.subnet.network_address), self.cfg.network.prefixlen))
        if want6 is not None:
            self._set_addr(index, socket.AF_INET6, want6)
            enable_forwarding(ipv6=True)

    def _set_addr(self, index: int, family: int, want: tuple[str, int]) -> None:
        """The TUN holds exactly `want` (address, prefix length) of this family."""
        have = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in self.ipr.get_addr(index=index, family=family)]
        for addr, plen in have:
            if (addr, plen) != want:
                self.ipr.addr("del", index=index, address=addr, prefixlen=plen)
        if want not in have:
            try:
                self.ipr.addr("add", index=index, address=want[0], prefixlen=want[1])
            except NetlinkError as exc:
                raise DataplaneError(f"addressing {self.tun} with {want[0]}/{want[1]}: {exc}") from exc

    def _ipv6_settings(self, index: int, dual_stack: bool) -> None:
        """IPv6 on the TUN only on a dual-stack network, and then without a link-local address or
        multicast: nothing of the kernel's own (router solicitations, MLD reports) enters the
        fast path, where it would only be counted as tx no_route."""
        conf = f"/proc/sys/net/ipv6/conf/{self.tun}"
        settings = (("addr_gen_mode", "1"), ("disable_ipv6", "0")) if dual_stack else (("disable_ipv6", "1"),)
        for name, value in settings:  # addr_gen_mode 1: no link-local address
            with contextlib.suppress(OSError), open(f"{conf}/{name}", "w") as fh:
                fh.write(value + "\n")
        if dual_stack and self.ipr.get_links(index)[0]["flags"] & IFF_MULTICAST:
            self.ipr.link("set", index=index, flags=0, change=IFF_MULTICAST)

    def _no_qdisc(self, index: int) -> None:
        """No queueing discipline on the TUN: a TUN never stops its queue (a full ring drops), so
        the default pfifo_fast never holds a packet and only costs a lock and an enqueue/dequeue
        per packet (measured: ~3% of the CPU per byte forwarded)."""
        kinds = {q.get_attr("TCA_KIND") for q in self.ipr.get_qdiscs(index) if q["parent"] == 0xFFFFFFFF}
        if kinds != {"noqueue"}:
            try:
                self.ipr.tc("replace", "noqueue", index, 0xFFFF0000)
            except NetlinkError as exc:
                log.warning("could not remove the qdisc of %s (forwarding works, a little slower): %s",
                            self.tun, exc)

    def observe(self) -> DataplaneState:
        """The fast path's table as the C threads hold it (read back, not Python's copy)."""
        return DataplaneState(routes=frozenset(Route(r.subnet, r.peer_ip) for r in self.fast.table_routes()))

    def apply(self, plan: DataplanePlan) -> list[str]:
        table = {r.subnet: r for r in self.fast.table_routes()}
        for r in plan.del_routes:
            table.pop(r.dst, None)
        for r in plan.add_routes:
            table[r.dst] = UdpRoute(r.dst, r.gateway, self.port)
        self.fast.set_routes(table.values())
        self._save_state()
        return []

    def stats(self) -> dict[str, int]:
        """The fast path's counters (summed over the instances a TUN recovery replaced), and the
        backend's own."""
        with self._stats_lock:
            now, retired = self.fast.stats(), dict(self._retired)
        return {**{k: v + retired.get(k, 0) for k, v in now.items()}, "state_save_errors": self.save_errors,
                "tun_recoveries": self.tun_recoveries}

    def features(self) -> set[str]:
        return self.fast.features

    def close(self) -> None:
        self.fast.close()
        self.ipr.close()
        os.close(self._events)


