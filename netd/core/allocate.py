"""Choosing a subnet for this host: better than flannel's, and a pure function.

Order of preference (``choose_subnet``):
  1. a key whose PublicIP is ours: a reservation (no etcd lease) first, then a lease, the one
     matching our previous subnet first. flannel does the same, so a restart keeps the subnet;
  2. our previous subnet (from subnet.env, or the one we just lost) if nobody holds it;
  3. a random one of the first 100 free subnets between SubnetMin and SubnetMax (randomness
     spreads concurrent acquirers; bounding the window keeps the pool dense, as flannel does).
Reservations (keys without an etcd lease) of other hosts are never taken.

Dual stack (EnableIPv6): the key names an IPv6 subnet too (flannel's ``<v4>&<v6>``): our key's if
it has one in range; else the IPv6 subnet paired with the IPv4 one (the n-th subnet of the IPv6
range for the n-th of the IPv4 range) when no key holds it; else the previous one (subnet.env),
else a random one of the first 100 free. The pairing is what keeps racing acquirers apart: etcd's
create-if-absent compares one key name, so two hosts taking different IPv4 subnets with a
randomly chosen IPv6 subnet could both win the same IPv6 subnet; paired, the name follows from
the IPv4 subnet. (flannel chooses the IPv6 subnet at random, so a flannel host can still race a
netd host for one.) Our lease from before EnableIPv6 (no IPv6 subnet) keeps its IPv4 subnet under
a new dual-stack key (UPGRADE; the leaser renames it in one transaction). A reservation without an
IPv6 subnet is the operator's to fix: ConfigError names it.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from netd.errors import ConfigError, NoFreeSubnetError
from netd.model import Lease, NetworkConfig
from netd.model.config import Ipv6Range

RANDOM_WINDOW = 100


class ChoiceKind(StrEnum):
    RESERVATION = "reservation"  # an operator reserved a subnet for our PublicIP
    REUSE = "reuse"  # a lease with our PublicIP already exists
    PREVIOUS = "previous"  # our previous subnet is free again
    RANDOM = "random"  # a fresh subnet
    UPGRADE = "upgrade"  # our lease from before EnableIPv6, renamed with an IPv6 subnet


@dataclass(frozen=True)
class SubnetChoice:
    kind: ChoiceKind
    subnet: ipaddress.IPv4Network
    existing: Lease | None = None
    ipv6_subnet: ipaddress.IPv6Network | None = None


Range = NetworkConfig | Ipv6Range


def iter_subnets(cfg: Range) -> Iterator[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Every subnet between SubnetMin and SubnetMax (or their IPv6 pair), in address order."""
    size = 1 << (cfg.subnet_min.max_prefixlen - cfg.subnet_len)
    net = ipaddress.IPv4Network if cfg.subnet_min.version == 4 else ipaddress.IPv6Network
    for base in range(int(cfg.subnet_min), int(cfg.subnet_max) + 1, size):
        yield net((base, cfg.subnet_len))


def in_range(cfg: Range, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None) -> bool:
    return (
        subnet is not None
        and subnet.version == cfg.subnet_min.version
        and subnet.prefixlen == cfg.subnet_len
        and int(cfg.subnet_min) <= int(subnet.network_address) <= int(cfg.subnet_max)
    )


def free_subnets(cfg: Range, leases: Iterable[Lease], limit: int) -> list[Any]:
    """The first ``limit`` subnets (of cfg's family) no key (lease or reservation) holds."""
    taken = {lease.subnet for lease in leases} | {lease.ipv6_subnet for lease in leases}
    out: list[Any] = []
    for subnet in iter_subnets(cfg):
        if subnet not in taken:
            out.append(subnet)
            if len(out) >= limit:
                break
    return out


def paired_ipv6_subnet(cfg: NetworkConfig, subnet: ipaddress.IPv4Network) -> ipaddress.IPv6Network | None:
    """The n-th IPv6 subnet of the range for the n-th IPv4 subnet (None past IPv6SubnetMax)."""
    assert cfg.ipv6 is not None
    n = (int(subnet.network_address) - int(cfg.subnet_min)) >> (32 - cfg.subnet_len)
    base = int(cfg.ipv6.subnet_min) + (n << (128 - cfg.ipv6.subnet_len))
    return ipaddress.IPv6Network((base, cfg.ipv6.subnet_len)) if base <= int(cfg.ipv6.subnet_max) else None


def choose_ipv6_subnet(
    cfg: NetworkConfig, subnet: ipaddress.IPv4Network, leases: Sequence[Lease],
    previous: ipaddress.IPv6Network | None, rng: random.Random,
) -> ipaddress.IPv6Network:
    """The IPv6 subnet to lease with ``subnet``: its pair, the previous one, or a random one, the
    first that no key holds."""
    v6 = cfg.ipv6
    assert v6 is not None
    held = {lease.ipv6_subnet for lease in leases}
    for candidate in (paired_ipv6_subnet(cfg, subnet), previous):
        if candidate is not None and in_range(v6, candidate) and candidate not in held:
            return candidate
    free = free_subnets(v6, leases, RANDOM_WINDOW)
    if not free:
        raise NoFreeSubnetError(
            f"no free IPv6 subnet: all /{v6.subnet_len} subnets between IPv6SubnetMin {v6.subnet_min} "
            f"and IPv6SubnetMax {v6.subnet_max} are leased or reserved"
        )
    chosen: ipaddress.IPv6Network = rng.choice(free)
    return chosen


def choose_subnet(
    cfg: NetworkConfig,
    leases: Sequence[Lease],
    public_ip: ipaddress.IPv4Address,
    previous: ipaddress.IPv4Network | None,
    rng: random.Random,
    previous_ipv6: ipaddress.IPv6Network | None = None,
) -> SubnetChoice:
    """Decide which subnet(s) this host takes. Raises NoFreeSubnetError when a range is full."""
    v6 = cfg.ipv6
    ours = [lease for lease in leases if lease.attrs.public_ip == public_ip and in_range(cfg, lease.subnet)]
    if ours:
        ours.sort(key=lambda lease: (not lease.is_reservation, v6 is not None and not in_range(v6, lease.ipv6_subnet),
                                     lease.subnet != previous, lease.subnet))
        best = ours[0]
        kind = ChoiceKind.RESERVATION if best.is_reservation else ChoiceKind.REUSE
        if v6 is None or in_range(v6, best.ipv6_subnet):
            return SubnetChoice(kind, best.subnet, best, best.ipv6_subnet)
        if kind is ChoiceKind.RESERVATION:
            raise ConfigError(
                f"the reservation {best.key} for {public_ip} has no IPv6 subnet in {v6.network}, and "
                f"EnableIPv6 is set: reserve it as {best.key}&<IPv6 subnet, e.g. {v6.subnet_min}>-{v6.subnet_len}",
                "EnableIPv6",
            )
        others = [lease for lease in leases if lease is not best]
        return SubnetChoice(ChoiceKind.UPGRADE, best.subnet, best,
                            choose_ipv6_subnet(cfg, best.subnet, others, previous_ipv6, rng))

    taken = {lease.subnet for lease in leases}
    if previous is not None and in_range(cfg, previous) and previous not in taken:
        return SubnetChoice(ChoiceKind.PREVIOUS, previous,
                            ipv6_subnet=choose_ipv6_subnet(cfg, previous, leases, previous_ipv6, rng) if v6 else None)

    free = free_subnets(cfg, leases, RANDOM_WINDOW)
    if not free:
        raise NoFreeSubnetError(
            f"no free subnet: all {cfg.subnet_count} /{cfg.subnet_len} subnets between "
            f"SubnetMin {cfg.subnet_min} and SubnetMax {cfg.subnet_max} are leased or reserved"
        )
    subnet = rng.choice(free)
    return SubnetChoice(ChoiceKind.RANDOM, subnet,
                        ipv6_subnet=choose_ipv6_subnet(cfg, subnet, leases, previous_ipv6, rng) if v6 else None)
