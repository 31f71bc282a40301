"""Desired forwarding state per backend, and the diff against what the kernel has.

vxlan (flannel-compatible): a device ``flannel.<VNI>`` holding our subnet's network address
as a /32; for each peer lease (BackendType vxlan, BackendData.VtepMAC):
  * a permanent neighbour  <peer subnet network address> lladdr <VtepMAC>,
  * an FDB entry          <VtepMAC> dst <peer PublicIP>,
  * an onlink route       <peer subnet> via <peer subnet network address> dev flannel.<VNI>.
host-gw: for each peer lease, a route <peer subnet> via <peer PublicIP> on the underlay link.
udp: the same pairs, as the C fast path's route table (subnet -> peer PublicIP:Port), and on a
dual-stack network (our lease has an IPv6 subnet) each peer's IPv6 subnet -> its PublicIP too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from netd.model import Lease

IPv4 = ipaddress.IPv4Address
Net4 = ipaddress.IPv4Network
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Route:
    dst: Net
    gateway: IPv4
    onlink: bool = False

    def sort_key(self) -> tuple[int, int, int, int, bool]:
        return (self.dst.version, int(self.dst.network_address), self.dst.prefixlen, int(self.gateway), self.onlink)


@dataclass(frozen=True, order=True)
class Neighbour:
    ip: IPv4
    mac: str


@dataclass(frozen=True, order=True)
class FdbEntry:
    mac: str
    dst: IPv4


@dataclass(frozen=True)
class DataplaneState:
    routes: frozenset[Route] = frozenset()
    neighbours: frozenset[Neighbour] = frozenset()
    fdb: frozenset[FdbEntry] = frozenset()


@dataclass(frozen=True)
class DataplanePlan:
    add_routes: tuple[Route, ...] = ()
    del_routes: tuple[Route, ...] = ()
    add_neighbours: tuple[Neighbour, ...] = ()
    del_neighbours: tuple[Neighbour, ...] = ()
    add_fdb: tuple[FdbEntry, ...] = ()
    del_fdb: tuple[FdbEntry, ...] = ()
    skipped: tuple[str, ...] = field(default=(), compare=False)

    @property
    def changes(self) -> int:
        return sum(
            len(x)
            for x in (
                self.add_routes, self.del_routes, self.add_neighbours,
                self.del_neighbours, self.add_fdb, self.del_fdb,
            )
        )


def peer_leases(own: Lease, leases: Iterable[Lease], backend_type: str) -> list[Lease]:
    """Leases of other hosts that use our backend type (flannel ignores the others)."""
    return sorted(
        (
            lease
            for lease in leases
            if lease.subnet != own.subnet
            and lease.attrs.public_ip != own.attrs.public_ip
            and lease.attrs.backend_type == backend_type
        ),
        key=lambda lease: lease.subnet,
    )


def normalise_mac(mac: object) -> str | None:
    if not isinstance(mac, str):
        return None
    parts = mac.lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        return None
    return ":".join(parts)


def desired_state(
    backend_type: str, own: Lease, leases: Iterable[Lease]
) -> tuple[DataplaneState, tuple[str, ...]]:
    """What the kernel should hold for these peers; second item lists peers skipped and why."""
    routes: set[Route] = set()
    neighbours: set[Neighbour] = set()
    fdb: set[FdbEntry] = set()
    skipped: list[str] = []
    for peer in peer_leases(own, leases, backend_type):
        if backend_type == "vxlan":
            mac = normalise_mac(peer.attrs.backend_data.get("VtepMAC"))
            if mac is None:
                skipped.append(f"{peer.key}: BackendData.VtepMAC missing or malformed")
                continue
            gw = peer.subnet.network_address
            routes.add(Route(peer.subnet, gw, onlink=True))
            neighbours.add(Neighbour(gw, mac))
            fdb.add(FdbEntry(mac, peer.attrs.public_ip))
        elif backend_type in ("host-gw", "udp"):
            # host-gw: a kernel route via the peer; udp: the fast path's table, which also
            # tells which PublicIP may send packets from the peer's subnet (anti-spoofing)
            routes.add(Route(peer.subnet, peer.attrs.public_ip))
            if backend_type == "udp" and own.ipv6_subnet is not None and peer.ipv6_subnet is not None:
                routes.add(Route(peer.ipv6_subnet, peer.attrs.public_ip))
        else:
            skipped.append(f"{peer.key}: backend {backend_type!r} has no kernel routes")
    return DataplaneState(frozenset(routes), frozenset(neighbours), frozenset(fdb)), tuple(skipped)


def plan_dataplane(desired: DataplaneState, actual: DataplaneState) -> DataplanePlan:
    """The smallest set of changes that turns ``actual`` into ``desired``.

    Routes and neighbours are keyed by destination: a changed gateway or MAC is one
    ``replace`` (an add), never a delete followed by an add, so traffic never sees a gap.
    """
    want_route_dsts = {r.dst for r in desired.routes}
    want_neigh_ips = {n.ip for n in desired.neighbours}
    return DataplanePlan(
        add_routes=tuple(sorted(desired.routes - actual.routes, key=Route.sort_key)),
        del_routes=tuple(sorted((r for r in actual.routes if r.dst not in want_route_dsts), key=Route.sort_key)),
        add_neighbours=tuple(sorted(desired.neighbours - actual.neighbours)),
        del_neighbours=tuple(sorted(n for n in actual.neighbours if n.ip not in want_neigh_ips)),
        add_fdb=tuple(sorted(desired.fdb - actual.fdb)),
        del_fdb=tuple(sorted(actual.fdb - desired.fdb)),
    )
