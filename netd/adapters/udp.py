"""The `udp` backend: flannel-udp's wire format, forwarded by the C fast path.

flannel-compatible: Backend {"Type": "udp", "Port": 8285}; the TUN (``flannel0``) has MTU =
underlay MTU - 28 and holds our subnet's network address with the cluster network's prefix
length, so the kernel routes the whole cluster network into it; leases carry PublicIP only.

Restart without an outage: the TUN is persistent, and the route table is cached in
``--state-dir``; a new netd re-attaches to the TUN and loads the cached table before it has
talked to etcd, so forwarding resumes as soon as the process is up.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netd.adapters.fastpath import FastPath, UdpRoute
from netd.adapters.files import read_text, write_atomic
from netd.adapters.netlink import Underlay
from netd.core.dataplane import DataplanePlan, DataplaneState, Route
from netd.errors import DataplaneError
from netd.model import Lease, NetworkConfig

log = logging.getLogger(__name__)

UDP_OVERHEAD = 28  # outer IPv4 + UDP headers
TUN_NAME = "flannel0"


class UdpBackend:
    name = "udp"

    def __init__(
        self,
        cfg: NetworkConfig,
        underlay: Underlay,
        ipr: IPRoute | None = None,
        offloads: bool = True,
        state_file: str | None = None,
        tun: str = TUN_NAME,
    ) -> None:
        self.cfg = cfg
        self.underlay = underlay
        self.ipr = ipr or IPRoute()
        self.port = cfg.backend.port
        self.tun = tun
        self.state_file = state_file
        self.fast = self._open(offloads)
        cached = self._load_state()
        if cached:
            self.fast.set_routes(cached)
        self.fast.start()
        log.info("udp fast path on %s, port %d, offloads: %s%s", tun, self.port,
                 ", ".join(sorted(self.fast.features)) or "none (plain mode)",
                 f"; {len(cached)} cached routes loaded" if cached else "")

    def _open(self, offloads: bool) -> FastPath:
        try:
            return FastPath(self.tun, ipaddress.IPv4Address("0.0.0.0"), self.port, offloads)
        except DataplaneError as exc:
            found = self.ipr.link_lookup(ifname=self.tun)
            if not found or "attach to TUN" not in str(exc):
                raise
            # a persistent TUN from a run in the other mode (vnet/plain): recreate it
            log.info("recreating %s: %s", self.tun, exc)
            self.ipr.link("del", index=found[0])
            return FastPath(self.tun, ipaddress.IPv4Address("0.0.0.0"), self.port, offloads)

    # -- state cache -------------------------------------------------------------------------
    def _load_state(self) -> list[UdpRoute]:
        if not self.state_file:
            return []
        try:
            obj = json.loads(read_text(self.state_file) or "{}")
            if obj.get("tun") != self.tun or obj.get("port") != self.port:
                return []
            return [UdpRoute(ipaddress.IPv4Network(s), ipaddress.IPv4Address(ip), int(port))
                    for s, ip, port in obj.get("routes", [])]
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring unreadable route cache %s: %s", self.state_file, exc)
            return []

    def _save_state(self) -> None:
        if not self.state_file:
            return
        obj = {"tun": self.tun, "port": self.port,
               "routes": [[str(r.subnet), str(r.peer_ip), r.peer_port] for r in self.fast.routes]}
        with contextlib.suppress(OSError):
            write_atomic(self.state_file, json.dumps(obj, indent=1) + "\n", mode=0o600)

    # -- Backend -------------------------------------------------------------------------------
    def backend_data(self) -> dict[str, Any]:
        return {}

    def mtu(self) -> int:
        return self.underlay.mtu - UDP_OVERHEAD

    def configure_own(self, own: Lease) -> None:
        found = self.ipr.link_lookup(ifname=self.tun)
        if not found:
            raise DataplaneError(f"TUN {self.tun} vanished")
        index = found[0]
        want = (str(own.subnet.network_address), self.cfg.network.prefixlen)
        have = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in self.ipr.get_addr(index=index, family=2)]
        for addr, plen in have:
            if (addr, plen) != want:
                self.ipr.addr("del", index=index, address=addr, prefixlen=plen)
        link = self.ipr.get_links(index)[0]
        if link.get_attr("IFLA_MTU") != self.mtu() or not link["flags"] & 1:
            self.ipr.link("set", index=index, mtu=self.mtu(), state="up")
        # The overlay is IPv4 (leases are): no link-local IPv6 chatter into the fast path.
        with contextlib.suppress(OSError), open(f"/proc/sys/net/ipv6/conf/{self.tun}/disable_ipv6", "w") as fh:
            fh.write("1\n")
        if want not in have:
            try:
                self.ipr.addr("add", index=index, address=want[0], prefixlen=want[1])
            except NetlinkError as exc:
                raise DataplaneError(f"addressing {self.tun} with {want[0]}/{want[1]}: {exc}") from exc

    def observe(self) -> DataplaneState:
        return DataplaneState(routes=frozenset(Route(r.subnet, r.peer_ip) for r in self.fast.routes))

    def apply(self, plan: DataplanePlan) -> list[str]:
        table = {r.subnet: r for r in self.fast.routes}
        for r in plan.del_routes:
            table.pop(r.dst, None)
        for r in plan.add_routes:
            table[r.dst] = UdpRoute(r.dst, r.gateway, self.port)
        self.fast.set_routes(table.values())
        self._save_state()
        return []

    def stats(self) -> dict[str, int]:
        return self.fast.stats()

    def features(self) -> set[str]:
        return self.fast.features

    def close(self) -> None:
        self.fast.close()
        self.ipr.close()


def default_state_file(state_dir: str) -> str:
    return os.path.join(state_dir, "udp-routes.json")
