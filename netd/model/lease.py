"""Subnet leases in flannel's etcd format: key ``subnets/10.5.52.0-24``, JSON value."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from netd.errors import ConfigError


def format_subnet_key(subnet: ipaddress.IPv4Network) -> str:
    """``10.5.52.0/24`` -> ``10.5.52.0-24`` (flannel's key name)."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(name: str) -> ipaddress.IPv4Network:
    """``10.5.52.0-24`` -> ``10.5.52.0/24``; ValueError for anything else."""
    addr, sep, plen = name.rpartition("-")
    if not sep or not plen.isdigit():
        raise ValueError(f"not a subnet key: {name!r}")
    return ipaddress.IPv4Network(f"{addr}/{plen}")


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
        try:
            public_ip = ipaddress.IPv4Address(obj.pop("PublicIP"))
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{source}: PublicIP: expected an IPv4 address") from exc
        backend_type = obj.pop("BackendType", "") or ""
        backend_data = obj.pop("BackendData", None) or {}
        if not isinstance(backend_data, dict):
            raise ConfigError(f"{source}: BackendData: expected an object, found {backend_data!r}")
        return cls(public_ip, str(backend_type), backend_data, obj)


@dataclass(frozen=True)
class Lease:
    """One subnet key as read from the registry."""

    subnet: ipaddress.IPv4Network
    attrs: LeaseAttrs
    #: etcd lease the key is bound to; 0 means a reservation (no expiry).
    lease_id: int = 0
    mod_revision: int = 0

    @property
    def is_reservation(self) -> bool:
        return self.lease_id == 0

    @property
    def key(self) -> str:
        return format_subnet_key(self.subnet)
