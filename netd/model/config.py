"""flannel's network config (``<etcd-prefix>/config``), with flannel's defaults and rules.

flannel's rules (pkg/subnet/config.go), kept here so a config that flannel accepts netd
accepts and vice versa:
  * Network is an IPv4 CIDR;
  * SubnetLen defaults to 24 if the Network is /22 or larger, else Network prefix + 2; a
    Network smaller than /28 is refused; an explicit SubnetLen must leave room for at least
    four subnets (SubnetLen >= prefix + 2) and be at most /30;
  * SubnetMin defaults to the second subnet (the first is skipped: its network address would
    clash with the Network's), SubnetMax to the last; both must lie in the Network and sit on
    a SubnetLen boundary, and SubnetMin <= SubnetMax;
  * Backend.Type defaults to "udp" as in flannel; netd knows vxlan, host-gw and udp;
  * dual stack: EnableIPv6 with IPv6Network, IPv6SubnetLen (64 if the IPv6Network is /62 or
    larger, else prefix + 2; /124 is the smallest network, /126 the longest SubnetLen),
    IPv6SubnetMin/Max, by the same rules as their IPv4 counterparts.
netd's own limits, refused with the field named: EnableIPv4 cannot be false (netd's leases
and backends are IPv4 first), and EnableIPv6 needs the udp backend (the fast path carries
IPv6 inner packets; netd's vxlan and host-gw do not).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from netd.errors import ConfigError

#: Backend defaults, flannel's: vxlan VNI 1 on port 8472 (the Linux kernel's historic port,
#: flannel's choice), udp on port 8285.
BACKEND_DEFAULTS: Mapping[str, Mapping[str, int]] = {
    "vxlan": {"VNI": 1, "Port": 8472},
    "host-gw": {},
    "udp": {"Port": 8285},
}


@dataclass(frozen=True)
class BackendConfig:
    type: str
    port: int = 0
    vni: int = 0
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Ipv6Range:
    """The IPv6 half of a dual-stack config (EnableIPv6)."""

    network: ipaddress.IPv6Network
    subnet_len: int
    subnet_min: ipaddress.IPv6Address
    subnet_max: ipaddress.IPv6Address

    def to_json(self) -> dict[str, Any]:
        return {"EnableIPv6": True, "IPv6Network": str(self.network), "IPv6SubnetLen": self.subnet_len,
                "IPv6SubnetMin": str(self.subnet_min), "IPv6SubnetMax": str(self.subnet_max)}


@dataclass(frozen=True)
class NetworkConfig:
    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend: BackendConfig
    ipv6: Ipv6Range | None = None

    @property
    def subnet_count(self) -> int:
        size = 1 << (32 - self.subnet_len)
        return (int(self.subnet_max) - int(self.subnet_min)) // size + 1

    def to_json(self) -> dict[str, Any]:
        """The flannel JSON shape, with every default spelled out."""
        backend: dict[str, Any] = dict(self.backend.raw)
        backend["Type"] = self.backend.type
        if self.backend.port:
            backend["Port"] = self.backend.port
        if self.backend.vni:
            backend["VNI"] = self.backend.vni
        return {
            "Network": str(self.network),
            "SubnetLen": self.subnet_len,
            "SubnetMin": str(self.subnet_min),
            "SubnetMax": str(self.subnet_max),
            **(self.ipv6.to_json() if self.ipv6 else {}),
            "Backend": backend,
        }


def _int_field(obj: Mapping[str, Any], name: str, path: str, default: int) -> int:
    value = obj.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, found {value!r}", path)
    return value


def _ip_field(obj: Mapping[str, Any], name: str, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = obj.get(name)
    if value in (None, "", "0.0.0.0", "::"):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"expected an IPv{version} address, found {value!r}", name)
    try:
        addr = ipaddress.ip_address(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"expected an IPv{version} address, found {value!r}", name) from exc
    if addr.version != version:
        raise ConfigError(f"expected an IPv{version} address, found {value!r}", name)
    return addr


@dataclass(frozen=True)
class _Family:
    """flannel's rules for one address family, and the names of its fields."""

    version: int
    bits: int
    default_len: int  # each host's subnet when the network is large enough
    network: str
    subnet_len: str
    subnet_min: str
    subnet_max: str
    example: str


_V4 = _Family(4, 32, 24, "Network", "SubnetLen", "SubnetMin", "SubnetMax", "10.5.0.0/16")
_V6 = _Family(6, 128, 64, "IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax", "fd00:5::/48")


def _parse_range(obj: Mapping[str, Any], f: _Family) -> tuple[Any, int, Any, Any]:
    """(network, subnet_len, subnet_min, subnet_max) of one family, flannel's defaults filled in."""
    raw_net = obj.get(f.network)
    if not raw_net:
        raise ConfigError(f"missing (an IPv{f.version} CIDR such as {f.example} is required)", f.network)
    if not isinstance(raw_net, str):  # ipaddress would take an integer (or true) for an address
        raise ConfigError(f"expected an IPv{f.version} CIDR, found {raw_net!r}", f.network)
    try:
        network = ipaddress.ip_network(raw_net, strict=False)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"expected an IPv{f.version} CIDR, found {raw_net!r}", f.network) from exc
    if network.version != f.version:
        raise ConfigError(f"expected an IPv{f.version} CIDR, found {raw_net!r}", f.network)

    subnet_len = _int_field(obj, f.subnet_len, f.subnet_len, 0)
    if subnet_len:
        if subnet_len < network.prefixlen + 2:
            raise ConfigError(
                f"{subnet_len} leaves fewer than four subnets in {network} "
                f"(expected at least /{network.prefixlen + 2})",
                f.subnet_len,
            )
        if subnet_len > f.bits - 2:
            raise ConfigError(f"expected at most {f.bits - 2}, found {subnet_len}", f.subnet_len)
    elif network.prefixlen > f.bits - 4:
        raise ConfigError(f"{network} is too small; the minimum useful network is a /{f.bits - 4}", f.network)
    elif network.prefixlen <= f.default_len - 2:
        subnet_len = f.default_len
    else:
        subnet_len = network.prefixlen + 2

    size = 1 << (f.bits - subnet_len)
    subnet_min = _ip_field(obj, f.subnet_min, f.version)
    if subnet_min is None:
        subnet_min = network.network_address + size
    elif subnet_min not in network:
        raise ConfigError(f"{subnet_min} is not in the {f.network} {network}", f.subnet_min)
    subnet_max = _ip_field(obj, f.subnet_max, f.version)
    if subnet_max is None:
        subnet_max = network.broadcast_address - (size - 1)  # (+ 1 - size overflows for the top network)
    elif subnet_max not in network:
        raise ConfigError(f"{subnet_max} is not in the {f.network} {network}", f.subnet_max)
    for name, value in ((f.subnet_min, subnet_min), (f.subnet_max, subnet_max)):
        if int(value) % size:
            raise ConfigError(f"{value} is not on a /{subnet_len} boundary", name)
    if int(subnet_min) > int(subnet_max):
        raise ConfigError(f"{f.subnet_min} {subnet_min} is above {f.subnet_max} {subnet_max}", f.subnet_min)
    return network, subnet_len, subnet_min, subnet_max


def _bool_field(obj: Mapping[str, Any], name: str, default: bool) -> bool:
    value = obj.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, found {value!r}", name)
    return value


def _parse_backend(raw: Any) -> BackendConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected an object, found {raw!r}", "Backend")
    btype = raw.get("Type", "udp")
    if btype not in BACKEND_DEFAULTS:
        known = ", ".join(sorted(BACKEND_DEFAULTS))
        raise ConfigError(f"unknown backend type {btype!r} (known: {known})", "Backend.Type")
    defaults = BACKEND_DEFAULTS[btype]
    port = _int_field(raw, "Port", "Backend.Port", defaults.get("Port", 0))
    if "Port" in defaults and not 1 <= port <= 65535:
        raise ConfigError(f"expected a port in 1..65535, found {port}", "Backend.Port")
    vni = _int_field(raw, "VNI", "Backend.VNI", defaults.get("VNI", 0))
    if "VNI" in defaults and not 1 <= vni < (1 << 24):
        raise ConfigError(f"expected a VNI in 1..16777215, found {vni}", "Backend.VNI")
    return BackendConfig(type=btype, port=port, vni=vni, raw=dict(raw))


def network_config_from_json(obj: Any) -> NetworkConfig:
    """Validate a decoded flannel config object; ConfigError names the field at fault."""
    if not isinstance(obj, Mapping):
        raise ConfigError(f"expected a JSON object, found {type(obj).__name__}")
    if not _bool_field(obj, "EnableIPv4", True):
        raise ConfigError("false is not supported: netd's leases and backends are IPv4 first "
                          "(IPv6 comes with EnableIPv6, alongside)", "EnableIPv4")
    network, subnet_len, subnet_min, subnet_max = _parse_range(obj, _V4)
    backend = _parse_backend(obj.get("Backend"))
    ipv6 = None
    if _bool_field(obj, "EnableIPv6", False):
        ipv6 = Ipv6Range(*_parse_range(obj, _V6))
        if backend.type != "udp":
            raise ConfigError(f"needs Backend.Type udp: netd's {backend.type} backend carries IPv4 only",
                              "EnableIPv6")
    return NetworkConfig(
        network=network,
        subnet_len=subnet_len,
        subnet_min=subnet_min,
        subnet_max=subnet_max,
        backend=backend,
        ipv6=ipv6,
    )


def parse_network_config(raw: bytes | str, source: str = "config") -> NetworkConfig:
    """Parse the raw bytes of ``<prefix>/config``; errors name ``source`` and the field."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc})") from exc
    try:
        return network_config_from_json(obj)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}", None) from exc
