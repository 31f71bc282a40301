"""Backends that program the kernel through netlink (pyroute2): vxlan and host-gw.

Ownership: every route netd installs carries routing protocol ``RTPROT_NETD`` (101), so the
reconciler can find and delete stale routes of ours without touching anyone else's. The vxlan
device is netd's alone, so every permanent neighbour and FDB entry on it is ours.

The vxlan device's MAC is derived from (PublicIP, VNI): a device recreated after a reboot or
by an operator keeps the VtepMAC its lease advertises, so peers need no update.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netd.core.dataplane import DataplanePlan, DataplaneState, FdbEntry, Neighbour, Route
from netd.errors import ConfigError, DataplaneError
from netd.model import Lease, NetworkConfig

log = logging.getLogger(__name__)

RTPROT_NETD = 101
RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
VXLAN_OVERHEAD = 50


@dataclass(frozen=True)
class Underlay:
    """The link that carries overlay traffic, and this host's PublicIP on it."""

    ifname: str
    index: int
    address: ipaddress.IPv4Address
    mtu: int


def find_underlay(ipr: IPRoute, iface: str | None, public_ip: str | None) -> Underlay:
    """Resolve --iface (a name or an address) or else the default-route link; --public-ip overrides."""
    index: int | None = None
    if iface:
        try:
            ipaddress.IPv4Address(iface)
            for a in ipr.get_addr(family=socket.AF_INET):
                if a.get_attr("IFA_ADDRESS") == iface:
                    index = a["index"]
        except ValueError:
            found = ipr.link_lookup(ifname=iface)
            index = found[0] if found else None
        if index is None:
            raise ConfigError(f"no interface named or addressed {iface!r}", "--iface")
    else:
        for r in ipr.get_default_routes(family=socket.AF_INET):
            index = r.get_attr("RTA_OIF")
            if index:
                break
        if index is None:
            raise ConfigError("no default route to pick an interface from; give --iface", "--iface")
    link = ipr.get_links(index)[0]
    addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=socket.AF_INET)]
    if public_ip:
        address = ipaddress.IPv4Address(public_ip)
    elif iface and iface in addrs:
        address = ipaddress.IPv4Address(iface)
    elif addrs:
        address = ipaddress.IPv4Address(addrs[0])
    else:
        raise ConfigError(f"interface {link.get_attr('IFLA_IFNAME')} has no IPv4 address", "--iface")
    return Underlay(link.get_attr("IFLA_IFNAME"), index, address, int(link.get_attr("IFLA_MTU")))


def vtep_mac(public_ip: ipaddress.IPv4Address, vni: int) -> str:
    digest = hashlib.sha256(f"netd-vtep/{public_ip}/{vni}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0E, *digest[:5]))  # locally administered, unicast


class Backend(Protocol):
    """What a data path offers the agent: vxlan and host-gw here, udp in netd.adapters.udp."""

    name: str

    def backend_data(self) -> dict[str, Any]: ...

    def mtu(self) -> int: ...

    def configure_own(self, own: Lease) -> None: ...

    def observe(self) -> DataplaneState: ...

    def apply(self, plan: DataplanePlan) -> list[str]: ...

    def fault_fd(self) -> int | None:
        """An fd that turns readable when the data path needs a repair before the next resync (the
        udp backend's TUN deleted), or None."""
        ...

    def clear_fault(self) -> None: ...

    def needs_repair(self) -> str | None:
        """Why the data path is broken now in a way configure_own repairs (a lost TUN), or None."""
        ...

    def health(self) -> dict[str, object]:
        """What /readyz shows of the data path beyond the routes (e.g. TUN recoveries)."""
        ...

    def close(self) -> None: ...


def _ignore(exc: NetlinkError, *codes: int) -> bool:
    return exc.code in codes


def _delete_route(ipr: IPRoute, dst: str) -> str | None:
    """Delete one of netd's routes; gone already is fine. Returns the error, if any."""
    try:
        ipr.route("del", dst=dst, proto=RTPROT_NETD)
    except NetlinkError as exc:
        if not _ignore(exc, errno.ESRCH, errno.ENOENT):
            return f"delete route {dst}: {exc}"
    return None


class _NetlinkBackend:
    name = ""

    def __init__(self, cfg: NetworkConfig, underlay: Underlay, ipr: IPRoute | None = None) -> None:
        self.cfg = cfg
        self.underlay = underlay
        self.ipr = ipr or IPRoute()
        remove_other_backends(self.ipr, self.name)

    def close(self) -> None:
        self.ipr.close()

    def fault_fd(self) -> int | None:
        return None  # the kernel's devices and routes: the resync repairs them

    def clear_fault(self) -> None:
        return None

    def needs_repair(self) -> str | None:
        return None

    def health(self) -> dict[str, object]:
        return {}

    def _route_oif(self) -> int:
        return self.underlay.index

    def observe_routes(self) -> set[Route]:
        out = set()
        for r in self.ipr.route("dump", family=socket.AF_INET, proto=RTPROT_NETD):
            dst = r.get_attr("RTA_DST")
            gw = r.get_attr("RTA_GATEWAY")
            if dst is None or gw is None:
                continue
            out.add(
                Route(
                    ipaddress.IPv4Network(f"{dst}/{r['dst_len']}"),
                    ipaddress.IPv4Address(gw),
                    onlink=bool(r["flags"] & RTNH_F_ONLINK),
                )
            )
        return out

    def _apply_routes(self, plan: DataplanePlan, errors: list[str]) -> None:
        for route in plan.del_routes:
            error = _delete_route(self.ipr, str(route.dst))
            if error:
                errors.append(error)
        for route in plan.add_routes:
            try:
                self.ipr.route(
                    "replace",
                    dst=str(route.dst),
                    gateway=str(route.gateway),
                    oif=self._route_oif(),
                    flags=RTNH_F_ONLINK if route.onlink else 0,
                    proto=RTPROT_NETD,
                )
            except NetlinkError as exc:
                errors.append(f"add route {route.dst} via {route.gateway}: {exc}")

    def mtu(self) -> int:
        return self.underlay.mtu


class HostGwBackend(_NetlinkBackend):
    """Plain routes to each peer's subnet via its PublicIP (peers must share an L2 segment)."""

    name = "host-gw"

    def backend_data(self) -> dict[str, Any]:
        return {}

    def configure_own(self, own: Lease) -> None:
        return None

    def observe(self) -> DataplaneState:
        return DataplaneState(routes=frozenset(self.observe_routes()))

    def apply(self, plan: DataplanePlan) -> list[str]:
        errors: list[str] = []
        self._apply_routes(plan, errors)
        return errors


class VxlanBackend(_NetlinkBackend):
    """flannel's vxlan backend: device flannel.<VNI>, per peer neighbour + FDB + onlink route."""

    name = "vxlan"

    def __init__(self, cfg: NetworkConfig, underlay: Underlay, ipr: IPRoute | None = None) -> None:
        super().__init__(cfg, underlay, ipr)
        self.vni = cfg.backend.vni
        self.port = cfg.backend.port
        self.ifname = f"flannel.{self.vni}"
        self.mac = vtep_mac(underlay.address, self.vni)
        self.index = self._ensure_device()

    def _device_matches(self, index: int) -> bool:
        link = self.ipr.get_links(index)[0]
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            return False
        data = info.get_attr("IFLA_INFO_DATA")
        return (
            data.get_attr("IFLA_VXLAN_ID") == self.vni
            and data.get_attr("IFLA_VXLAN_LOCAL") == str(self.underlay.address)
            and data.get_attr("IFLA_VXLAN_PORT") == self.port
        )

    def _ensure_device(self) -> int:
        """Create flannel.<VNI>, or keep an existing one whose VNI, local IP and port match."""
        found = self.ipr.link_lookup(ifname=self.ifname)
        if found and not self._device_matches(found[0]):
            log.info("replacing %s: its VNI, local address or port differ from the config", self.ifname)
            self.ipr.link("del", index=found[0])
            found = []
        if not found:
            try:
                self.ipr.link(
                    "add",
                    ifname=self.ifname,
                    kind="vxlan",
                    vxlan_id=self.vni,
                    vxlan_local=str(self.underlay.address),
                    vxlan_port=self.port,
                    vxlan_learning=0,
                    vxlan_link=self.underlay.index,
                    address=self.mac,
                )
            except NetlinkError as exc:
                raise DataplaneError(f"creating vxlan device {self.ifname}: {exc}") from exc
            log.info("created %s (VNI %d, port %d, VtepMAC %s)", self.ifname, self.vni, self.port, self.mac)
            found = self.ipr.link_lookup(ifname=self.ifname)
        index = int(found[0])
        link = self.ipr.get_links(index)[0]
        self.mac = link.get_attr("IFLA_ADDRESS")
        self.ipr.link("set", index=index, state="up", mtu=self.mtu())
        return index

    def _route_oif(self) -> int:
        return self.index

    def mtu(self) -> int:
        return self.underlay.mtu - VXLAN_OVERHEAD

    def backend_data(self) -> dict[str, Any]:
        return {"VNI": self.vni, "VtepMAC": self.mac}

    def configure_own(self, own: Lease) -> None:
        """The device holds our subnet's network address as a /32, as flannel's does."""
        if not self.ipr.link_lookup(ifname=self.ifname):
            self.index = self._ensure_device()
        want = str(own.subnet.network_address)
        have = [
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in self.ipr.get_addr(index=self.index, family=socket.AF_INET)
        ]
        for addr, plen in have:
            if (addr, plen) != (want, 32):
                self.ipr.addr("del", index=self.index, address=addr, prefixlen=plen)
        if (want, 32) not in have:
            self.ipr.addr("add", index=self.index, address=want, prefixlen=32)
        self.ipr.link("set", index=self.index, state="up")

    def observe(self) -> DataplaneState:
        routes = {r for r in self.observe_routes()}
        neighbours = set()
        for n in self.ipr.neigh("dump", ifindex=self.index, family=socket.AF_INET):
            if n["ifindex"] != self.index or not n["state"] & NUD_PERMANENT:
                continue
            ip, mac = n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR")
            if ip and mac:
                neighbours.add(Neighbour(ipaddress.IPv4Address(ip), mac))
        fdb = set()
        for f in self.ipr.fdb("dump", ifindex=self.index):
            if f["ifindex"] != self.index or not f["state"] & NUD_PERMANENT:
                continue
            dst, mac = f.get_attr("NDA_DST"), f.get_attr("NDA_LLADDR")
            if dst and mac:
                fdb.add(FdbEntry(mac, ipaddress.IPv4Address(dst)))
        return DataplaneState(frozenset(routes), frozenset(neighbours), frozenset(fdb))

    def apply(self, plan: DataplanePlan) -> list[str]:
        """Neighbours and FDB before routes on add (a route never points at an unknown VTEP);
        routes before neighbours and FDB on delete."""
        errors: list[str] = []
        for n in plan.add_neighbours:
            self._try(errors, f"add neighbour {n.ip}", "neigh", "replace",
                      dst=str(n.ip), lladdr=n.mac, ifindex=self.index, state=NUD_PERMANENT)
        for f in plan.add_fdb:
            self._try(errors, f"add fdb {f.mac}", "fdb", "append",
                      ifindex=self.index, lladdr=f.mac, dst=str(f.dst), state=NUD_PERMANENT)
        self._apply_routes(plan, errors)
        for n in plan.del_neighbours:
            self._try(errors, f"delete neighbour {n.ip}", "neigh", "del",
                      dst=str(n.ip), lladdr=n.mac, ifindex=self.index)
        for f in plan.del_fdb:
            self._try(errors, f"delete fdb {f.mac}", "fdb", "del",
                      ifindex=self.index, lladdr=f.mac, dst=str(f.dst))
        return errors

    def _try(self, errors: list[str], what: str, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            getattr(self.ipr, method)(*args, **kwargs)
        except NetlinkError as exc:
            if not (args and args[0] == "del" and _ignore(exc, errno.ENOENT, errno.ESRCH)):
                errors.append(f"{what}: {exc}")


UDP_TUN = "flannel0"


def remove_other_backends(ipr: IPRoute, keep: str) -> list[str]:
    """Delete what another backend left behind, so it cannot steer traffic after a backend change.

    (A leftover flannel.1 route for a peer's /24 would beat flannel0's /16 and carry "udp"
    traffic over vxlan, until the peer's flannel.1 went away.) Returns what was removed.
    """
    removed = []
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME") or ""
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if (keep != "vxlan" and kind == "vxlan" and name.startswith("flannel.")) or (
            keep != "udp" and kind == "tun" and name == UDP_TUN
        ):
            ipr.link("del", index=link["index"])
            removed.append(name)
    if keep == "udp":  # the udp backend routes in its own table: no netd kernel route is wanted
        for r in ipr.route("dump", family=socket.AF_INET, proto=RTPROT_NETD):
            dst = f"{r.get_attr('RTA_DST')}/{r['dst_len']}"
            error = _delete_route(ipr, dst)
            if error:
                raise DataplaneError(error)
            removed.append(f"route {dst}")
    for what in removed:
        log.info("removed %s, left by another backend", what)
    return removed


def enable_forwarding(ipv6: bool = False) -> None:
    """Hosts route between the overlay and their containers. For IPv6 (dual stack) that is
    net.ipv6.conf.all.forwarding, which also makes the kernel ignore router advertisements on
    interfaces with accept_ra=1: a host whose own IPv6 address comes from SLAAC needs accept_ra=2."""
    path = "/proc/sys/net/ipv6/conf/all/forwarding" if ipv6 else "/proc/sys/net/ipv4/ip_forward"
    with open(path) as fh:
        if fh.read().strip() == "1":
            return
    with open(path, "w") as fh:
        fh.write("1\n")
    if ipv6:
        log.info("enabled IPv6 forwarding (net.ipv6.conf.all.forwarding=1)")


