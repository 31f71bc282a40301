"""Subnet leases in flannel's etcd format: key ``subnets/10.5.52.0-24`` (a dual-stack host's:
``subnets/10.5.52.0-24&fd00:0:0:34::-64``), JSON value."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from netd.errors import ConfigError

#: flannel's key grammar (pkg/subnet: subnetRegex): an IPv4 subnet, then, for a dual-stack host,
#: ``&`` and its IPv6 subnet with the same ``-`` before the prefix length.
_KEY = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([0-9a-f:]+)-(\d+))?")


def format_subnet_key(subnet: ipaddress.IPv4Network, ipv6_subnet: ipaddress.IPv6Network | None = None) -> str:
    """``10.5.52.0/24`` -> ``10.5.52.0-24``; with an IPv6 subnet, flannel's dual-stack name
    ``10.5.52.0-24&fd00:0:0:34::-64``."""
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6_subnet is not None:
        key += f"&{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}"
    return key


def parse_lease_key(name: str) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None]:
    """A key name as flannel writes it -> (IPv4 subnet, IPv6 subnet or None); ValueError else."""
    m = _KEY.fullmatch(name)
    if not m:
        raise ValueError(f"not a subnet key: {name!r}")
    try:
        v4 = ipaddress.IPv4Network(f"{m[1]}/{m[2]}")
        v6 = ipaddress.IPv6Network(f"{m[3]}/{m[4]}") if m[3] else None
    except ValueError as exc:  # host bits set, prefix out of range, a malformed address
        raise ValueError(f"not a subnet key: {name!r} ({exc})") from exc
    # Only the one spelling flannel (and netd) write: another (10.5.9.0-024, fd00:0::-64) would name
    # a subnet that create-if-absent, which compares key names, could not see.
    if format_subnet_key(v4, v6) != name:
        raise ValueError(f"not a subnet key: {name!r} (written {format_subnet_key(v4, v6)!r} by flannel and netd)")
    return v4, v6


def parse_subnet_key(name: str) -> ipaddress.IPv4Network:
    """``10.5.52.0-24`` (or a dual-stack name) -> ``10.5.52.0/24``; ValueError for anything else."""
    return parse_lease_key(name)[0]


@dataclass(frozen=True)
class LeaseAttrs:
    """The value of a subnet key: flannel's LeaseAttrs (PublicIP, BackendType, BackendData)."""

    public_ip: ipaddress.IPv4Address
    backend_type: str = ""
    backend_data: Mapping[str, Any] = field(default_factory=dict)
    #: Fields netd does not interpret (PublicIPv6, ...), kept so a rewrite loses nothing.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.public_ip, self.backend_type, json.dumps(self.backend_data, sort_keys=True)))

    def to_json(self) -> bytes:
        obj: dict[str, Any] = dict(self.extra)
        obj["PublicIP"] = str(self.public_ip)
        if self.backend_type:
            obj["BackendType"] = self.backend_type
        if self.backend_data:
            obj["BackendData"] = dict(self.backend_data)
        return json.dumps(obj, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str, source: str = "lease") -> LeaseAttrs:
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: not valid JSON ({exc})") from exc
        if not isinstance(obj, dict):
            raise ConfigError(f"{source}: expected a JSON object, found {type(obj).__name__}")
        raw_ip = obj.pop("PublicIP", None)
        try:  # a string: ipaddress would also take the integer 5 for 0.0.0.5
            public_ip = ipaddress.IPv4Address(raw_ip if isinstance(raw_ip, str) else None)
        except ValueError as exc:
            raise ConfigError(f"{source}: PublicIP: expected an IPv4 address, found {raw_ip!r}") from exc
        backend_type = obj.pop("BackendType", None)
        if backend_type is None:  # absent (flannel's udp backend writes none) or null
            backend_type = ""
        elif not isinstance(backend_type, str):
            raise ConfigError(f"{source}: BackendType: expected a string, found {backend_type!r}")
        backend_data = obj.pop("BackendData", None)
        if backend_data is None:
            backend_data = {}
        elif not isinstance(backend_data, dict):
            raise ConfigError(f"{source}: BackendData: expected an object, found {backend_data!r}")
        return cls(public_ip, backend_type, backend_data, obj)


@dataclass(frozen=True)
class Lease:
    """One subnet key as read from the registry."""

    subnet: ipaddress.IPv4Network
    attrs: LeaseAttrs
    #: etcd lease the key is bound to; 0 means a reservation (no expiry).
    lease_id: int = 0
    mod_revision: int = 0
    #: A dual-stack host's IPv6 subnet (flannel's ``EnableIPv6``), part of the key's name.
    ipv6_subnet: ipaddress.IPv6Network | None = None
    #: The revision that created the key (0: unknown): of two hosts' keys for one subnet, the
    #: first created is the holder (netd's create-if-absent lets no later one in).
    create_revision: int = 0

    @property
    def is_reservation(self) -> bool:
        return self.lease_id == 0

    @property
    def key(self) -> str:
        return format_subnet_key(self.subnet, self.ipv6_subnet)
