"""flannel's subnet.env: FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ."""

from __future__ import annotations

import ipaddress


def render_subnet_env(
    network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, mtu: int, ip_masq: bool
) -> str:
    # flannel writes the subnet's first host address with the subnet's prefix length.
    first = subnet.network_address + 1
    return (
        f"FLANNEL_NETWORK={network}\n"
        f"FLANNEL_SUBNET={first}/{subnet.prefixlen}\n"
        f"FLANNEL_MTU={mtu}\n"
        f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}\n"
    )


def parse_subnet_env(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        out[name.strip()] = value.strip().strip('"')
    return out


def previous_subnet(text: str) -> ipaddress.IPv4Network | None:
    """The subnet a previous run wrote in subnet.env, or None if absent or unreadable."""
    value = parse_subnet_env(text).get("FLANNEL_SUBNET")
    if not value:
        return None
    try:
        return ipaddress.IPv4Interface(value).network
    except ValueError:
        return None
