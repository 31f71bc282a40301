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
  * Backend.Type defaults to "udp" as in flannel; netd knows vxlan, host-gw and udp.
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
class NetworkConfig:
    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend: BackendConfig

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
            "Backend": backend,
        }


def _int_field(obj: Mapping[str, Any], name: str, path: str, default: int) -> int:
    value = obj.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, found {value!r}", path)
    return value


def _ip_field(obj: Mapping[str, Any], name: str) -> ipaddress.IPv4Address | None:
    value = obj.get(name)
    if value in (None, "", "0.0.0.0"):
        return None
    try:
        return ipaddress.IPv4Address(value)
    except (ipaddress.AddressValueError, ValueError) as exc:
        raise ConfigError(f"expected an IPv4 address, found {value!r}", name) from exc


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
    raw_net = obj.get("Network")
    if not raw_net:
        raise ConfigError("missing (an IPv4 CIDR such as 10.5.0.0/16 is required)", "Network")
    try:
        network = ipaddress.IPv4Network(raw_net, strict=False)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError, TypeError) as exc:
        raise ConfigError(f"expected an IPv4 CIDR, found {raw_net!r}", "Network") from exc

    subnet_len = _int_field(obj, "SubnetLen", "SubnetLen", 0)
    if subnet_len:
        if subnet_len < network.prefixlen + 2:
            raise ConfigError(
                f"{subnet_len} leaves fewer than four subnets in {network} "
                f"(expected at least /{network.prefixlen + 2})",
                "SubnetLen",
            )
        if subnet_len > 30:
            raise ConfigError(f"expected at most 30, found {subnet_len}", "SubnetLen")
    elif network.prefixlen > 28:
        raise ConfigError(f"{network} is too small; the minimum useful network is a /28", "Network")
    elif network.prefixlen <= 22:
        subnet_len = 24
    else:
        subnet_len = network.prefixlen + 2

    size = 1 << (32 - subnet_len)
    mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
    subnet_min = _ip_field(obj, "SubnetMin")
    if subnet_min is None:
        subnet_min = network.network_address + size
    elif subnet_min not in network:
        raise ConfigError(f"{subnet_min} is not in the Network {network}", "SubnetMin")
    subnet_max = _ip_field(obj, "SubnetMax")
    if subnet_max is None:
        subnet_max = ipaddress.IPv4Address(int(network.broadcast_address) + 1 - size)
    elif subnet_max not in network:
        raise ConfigError(f"{subnet_max} is not in the Network {network}", "SubnetMax")
    for name, value in (("SubnetMin", subnet_min), ("SubnetMax", subnet_max)):
        if int(value) & mask != int(value):
            raise ConfigError(f"{value} is not on a /{subnet_len} boundary", name)
    if subnet_min > subnet_max:
        raise ConfigError(f"SubnetMin {subnet_min} is above SubnetMax {subnet_max}", "SubnetMin")

    return NetworkConfig(
        network=network,
        subnet_len=subnet_len,
        subnet_min=subnet_min,
        subnet_max=subnet_max,
        backend=_parse_backend(obj.get("Backend")),
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
