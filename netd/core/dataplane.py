"""Desired forwarding state per backend, and the diff against what the kernel has.

vxlan (flannel-compatible): a device ``flannel.<VNI>`` holding our subnet's network address
as a /32; for each peer lease (BackendType vxlan, BackendData.VtepMAC):
  * a permanent neighbour  <peer subnet network address> lladdr <VtepMAC>,
  * an FDB entry          <VtepMAC> dst <peer PublicIP>,
  * an onlink route       <peer subnet> via <peer subnet network address> dev flannel.<VNI>.
host-gw: for each peer lease, a route <peer subnet> via <peer PublicIP> on the underlay link.
udp: the same pairs, as the C fast path's route table (subnet -> peer PublicIP:Port), and on a
dual-stack network (our lease has an IPv6 subnet) each peer's IPv6 subnet -> its PublicIP too.
Which leases are peers at all is select_peers: only well-formed subnets of the cluster network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from netd.model import Lease, NetworkConfig

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


#: Why a lease was not taken as a peer (the label of netd_leases_rejected_total).
OUTSIDE_NETWORK = "outside_network"
BAD_PUBLIC_IP = "bad_public_ip"
OVERLAPS_OWN = "overlaps_own"
CONFLICT = "conflict"
BAD_BACKEND_DATA = "bad_backend_data"


@dataclass(frozen=True, order=True)
class Skipped:
    """A lease that is not routed to, and why: ``reason`` is one of the labels above."""

    key: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.key}: {self.detail}"


def peer_backend_matches(backend_type: str, lease_backend: str) -> bool:
    """Whether a lease of ``lease_backend`` is a peer for our backend. flannel's udp backend writes
    no BackendType at all (its LeaseAttrs carry PublicIP only), so on a udp network a lease without
    one is a udp peer; otherwise the types must match, as flannel's vxlan and host-gw require."""
    return lease_backend == backend_type or (backend_type == "udp" and lease_backend == "")


def _fits(subnet: Net | None, network: Net, subnet_len: int) -> bool:
    return subnet is not None and subnet.version == network.version and subnet.prefixlen == subnet_len \
        and subnet.subnet_of(network)  # type: ignore[arg-type]


def select_peers(cfg: NetworkConfig, own: Lease, leases: Iterable[Lease],
                 backend_type: str) -> tuple[list[Lease], list[Skipped]]:
    """The other hosts' leases we route to, in subnet order, and the ones refused, with why.

    A peer is a lease of our backend type (peer_backend_matches), with a PublicIP a host can have
    (not 0.0.0.0, loopback, multicast or broadcast), whose subnet is a /SubnetLen
    inside Network (and, when we are dual-stack, whose IPv6 subnet is a /IPv6SubnetLen inside
    IPv6Network) and overlaps neither our own subnets nor another host's: a key for the whole
    network, a foreign network or our own subnet, written into etcd by a buggy tool or anyone with
    write access, must never become a route on every host. Where two hosts claim one subnet (e.g. a
    v4-only and a dual-stack key), the key created first holds it (netd's create-if-absent lets no
    later key for a held subnet in, so a later one is the intruder): refusing both would let one
    key written by anyone cut a real host off from every other. A PublicIP inside the overlay's own
    networks is refused too: the encapsulated packets would be routed back into the overlay.
    """
    candidates: list[Lease] = []
    skipped: list[Skipped] = []
    v6 = cfg.ipv6 if own.ipv6_subnet is not None else None
    for lease in leases:
        if lease.attrs.public_ip == own.attrs.public_ip or not peer_backend_matches(backend_type,
                                                                                    lease.attrs.backend_type):
            continue  # ours (also a stale key of ours), or a host of another backend (flannel ignores those)
        ip = lease.attrs.public_ip
        if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
            skipped.append(Skipped(lease.key, BAD_PUBLIC_IP, f"PublicIP {ip} is no address a host can be reached at"))
        elif ip in cfg.network:
            skipped.append(Skipped(lease.key, BAD_PUBLIC_IP, f"PublicIP {ip} is inside the overlay's Network "
                                                             f"{cfg.network}: packets to it would loop"))
        elif not _fits(lease.subnet, cfg.network, cfg.subnet_len):
            skipped.append(Skipped(lease.key, OUTSIDE_NETWORK,
                                   f"{lease.subnet} is not a /{cfg.subnet_len} inside the Network {cfg.network}"))
        elif v6 is not None and lease.ipv6_subnet is not None and not _fits(lease.ipv6_subnet, v6.network,
                                                                            v6.subnet_len):
            skipped.append(Skipped(lease.key, OUTSIDE_NETWORK, f"{lease.ipv6_subnet} is not a /{v6.subnet_len} "
                                                               f"inside the IPv6Network {v6.network}"))
        elif lease.subnet == own.subnet or (v6 is not None and lease.ipv6_subnet == own.ipv6_subnet):
            skipped.append(Skipped(lease.key, OVERLAPS_OWN, f"{lease.attrs.public_ip} claims our own subnet "
                                                            f"(we hold {own.key})"))
        else:
            candidates.append(lease)
    def subnets_of(lease: Lease) -> list[Net]:
        return [s for s in (lease.subnet, lease.ipv6_subnet if v6 is not None else None) if s is not None]

    holders: dict[Net, Lease] = {}  # each subnet: the key created first (ties: by name, the same on every host)
    for lease in sorted(candidates, key=lambda lease: (lease.create_revision, lease.key)):
        for subnet in subnets_of(lease):
            holders.setdefault(subnet, lease)
    peers: dict[Net, Lease] = {}
    for lease in sorted(candidates, key=lambda lease: (lease.subnet, lease.ipv6_subnet is None, lease.key)):
        taken = [(s, holders[s]) for s in subnets_of(lease) if holders[s].attrs.public_ip != lease.attrs.public_ip]
        if taken:
            subnet, holder = taken[0]
            skipped.append(Skipped(lease.key, CONFLICT, f"{subnet} is held by {holder.attrs.public_ip} "
                                                        f"({holder.key}, created first)"))
        else:
            peers.setdefault(lease.subnet, lease)  # one host's two keys (a rename to dual stack): the dual one
    return list(peers.values()), sorted(skipped)


def normalise_mac(mac: object) -> str | None:
    if not isinstance(mac, str):
        return None
    parts = mac.lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        return None
    return ":".join(parts)


def desired_state(
    cfg: NetworkConfig, backend_type: str, own: Lease, leases: Iterable[Lease]
) -> tuple[DataplaneState, tuple[Skipped, ...]]:
    """What the kernel should hold for these peers; second item lists leases skipped and why."""
    routes: set[Route] = set()
    neighbours: set[Neighbour] = set()
    fdb: set[FdbEntry] = set()
    peers, skipped = select_peers(cfg, own, leases, backend_type)
    for peer in peers:
        if backend_type == "vxlan":
            mac = normalise_mac(peer.attrs.backend_data.get("VtepMAC"))
            if mac is None:
                skipped.append(Skipped(peer.key, BAD_BACKEND_DATA, "BackendData.VtepMAC missing or malformed"))
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
            skipped.append(Skipped(peer.key, BAD_BACKEND_DATA, f"backend {backend_type!r} has no kernel routes"))
    return DataplaneState(frozenset(routes), frozenset(neighbours), frozenset(fdb)), tuple(sorted(skipped))


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
