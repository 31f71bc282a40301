"""Choosing a subnet for this host: better than flannel's, and a pure function.

Order of preference (``choose_subnet``):
  1. a key whose PublicIP is ours: a reservation (no etcd lease) first, then a lease, the one
     matching our previous subnet first. flannel does the same, so a restart keeps the subnet;
  2. our previous subnet (from subnet.env, or the one we just lost) if nobody holds it;
  3. a random one of the first 100 free subnets between SubnetMin and SubnetMax (randomness
     spreads concurrent acquirers; bounding the window keeps the pool dense, as flannel does).
Reservations (keys without an etcd lease) of other hosts are never taken.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from netd.errors import NoFreeSubnetError
from netd.model import Lease, NetworkConfig

RANDOM_WINDOW = 100


class ChoiceKind(StrEnum):
    RESERVATION = "reservation"  # an operator reserved a subnet for our PublicIP
    REUSE = "reuse"  # a lease with our PublicIP already exists
    PREVIOUS = "previous"  # our previous subnet is free again
    RANDOM = "random"  # a fresh subnet


@dataclass(frozen=True)
class SubnetChoice:
    kind: ChoiceKind
    subnet: ipaddress.IPv4Network
    existing: Lease | None = None


def iter_subnets(cfg: NetworkConfig) -> Iterator[ipaddress.IPv4Network]:
    """Every subnet between SubnetMin and SubnetMax, in address order."""
    size = 1 << (32 - cfg.subnet_len)
    for base in range(int(cfg.subnet_min), int(cfg.subnet_max) + 1, size):
        yield ipaddress.IPv4Network((base, cfg.subnet_len))


def in_range(cfg: NetworkConfig, subnet: ipaddress.IPv4Network) -> bool:
    return (
        subnet.prefixlen == cfg.subnet_len
        and cfg.subnet_min <= subnet.network_address <= cfg.subnet_max
    )


def free_subnets(cfg: NetworkConfig, leases: Iterable[Lease], limit: int) -> list[ipaddress.IPv4Network]:
    """The first ``limit`` subnets no key (lease or reservation) holds."""
    taken = {lease.subnet for lease in leases}
    out: list[ipaddress.IPv4Network] = []
    for subnet in iter_subnets(cfg):
        if subnet not in taken:
            out.append(subnet)
            if len(out) >= limit:
                break
    return out


def choose_subnet(
    cfg: NetworkConfig,
    leases: Sequence[Lease],
    public_ip: ipaddress.IPv4Address,
    previous: ipaddress.IPv4Network | None,
    rng: random.Random,
) -> SubnetChoice:
    """Decide which subnet this host takes. Raises NoFreeSubnetError when the range is full."""
    ours = [lease for lease in leases if lease.attrs.public_ip == public_ip and in_range(cfg, lease.subnet)]
    if ours:
        ours.sort(key=lambda lease: (not lease.is_reservation, lease.subnet != previous, lease.subnet))
        best = ours[0]
        kind = ChoiceKind.RESERVATION if best.is_reservation else ChoiceKind.REUSE
        return SubnetChoice(kind, best.subnet, best)

    taken = {lease.subnet for lease in leases}
    if previous is not None and in_range(cfg, previous) and previous not in taken:
        return SubnetChoice(ChoiceKind.PREVIOUS, previous)

    free = free_subnets(cfg, leases, RANDOM_WINDOW)
    if not free:
        raise NoFreeSubnetError(
            f"no free subnet: all {cfg.subnet_count} /{cfg.subnet_len} subnets between "
            f"SubnetMin {cfg.subnet_min} and SubnetMax {cfg.subnet_max} are leased or reserved"
        )
    return SubnetChoice(ChoiceKind.RANDOM, rng.choice(free))
