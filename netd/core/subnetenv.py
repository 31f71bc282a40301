"""flannel's subnet.env: FLANNEL_NETWORK, FLANNEL_SUBNET, (dual stack: FLANNEL_IPV6_NETWORK,
FLANNEL_IPV6_SUBNET,) FLANNEL_MTU, FLANNEL_IPMASQ."""

from __future__ import annotations

import ipaddress


def render_subnet_env(
    network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, mtu: int, ip_masq: bool,
    ipv6: tuple[ipaddress.IPv6Network, ipaddress.IPv6Network] | None = None,
) -> str:
    """ipv6: (IPv6Network, our IPv6 subnet) on a dual-stack network."""
    # flannel writes the subnet's first host address with the subnet's prefix length.
    first = subnet.network_address + 1
    v6 = f"FLANNEL_IPV6_NETWORK={ipv6[0]}\nFLANNEL_IPV6_SUBNET={ipv6[1].network_address + 1}/{ipv6[1].prefixlen}\n" \
        if ipv6 else ""
    return (
        f"FLANNEL_NETWORK={network}\n"
        f"FLANNEL_SUBNET={first}/{subnet.prefixlen}\n"
        f"{v6}"
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
    try:
        return ipaddress.IPv4Interface(value).network if value else None
    except ValueError:
        return None


def previous_ipv6_subnet(text: str) -> ipaddress.IPv6Network | None:
    """The IPv6 subnet a previous dual-stack run wrote in subnet.env, or None."""
    value = parse_subnet_env(text).get("FLANNEL_IPV6_SUBNET")
    try:
        return ipaddress.IPv6Interface(value).network if value else None
    except ValueError:
        return None


def overlay_of(text: str) -> tuple[ipaddress.IPv4Interface, int] | None:
    """What units on this host are wired with, from subnet.env: the gateway (FLANNEL_SUBNET, the
    subnet's first address with its prefix) and FLANNEL_MTU; None before the lease (or unreadable)."""
    env = parse_subnet_env(text)
    try:
        gateway = ipaddress.IPv4Interface(env["FLANNEL_SUBNET"])
        mtu = int(env.get("FLANNEL_MTU", "1450"))
    except (KeyError, ValueError):
        return None
    return (gateway, mtu) if 576 <= mtu <= 65535 and gateway.network.prefixlen < 31 else None


def units_side(overlay: tuple[ipaddress.IPv4Interface, int] | None) -> tuple[ipaddress.IPv4Interface, int] | None:
    """Where the scheduler's units live on the host's subnet: its upper half (the lower half, with
    the subnet's first address, is left to what subnet.env's readers build on it: docker's --bip,
    a CNI bridge), gateway the upper half's first address. A /30 or smaller: the whole subnet."""
    if overlay is None:
        return None
    gateway, mtu = overlay
    net = gateway.network
    if net.prefixlen > 29:
        return overlay
    upper = list(net.subnets(prefixlen_diff=1))[1]
    return ipaddress.IPv4Interface(f"{upper.network_address + 1}/{upper.prefixlen}"), mtu
