"""flannel's --ip-masq rules, rendered as one nftables table that netd owns.

Meaning (flannel's iptables rules, in nftables form):
  * cluster network -> cluster network: untouched;
  * cluster network -> outside (not multicast): masqueraded;
  * outside -> our own subnet: untouched (port-forwarded traffic keeps its source);
  * outside -> the rest of the cluster network: masqueraded.
On a dual-stack network the same four rules for the IPv6Network and our IPv6 subnet go in a
table ``ip6 netd`` written in the same transaction (flannel's ip6tables rules).
"""

from __future__ import annotations

import hashlib
import ipaddress

TABLE_FAMILY = "ip"
TABLE_FAMILY6 = "ip6"
TABLE_NAME = "netd"

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _rules(proto: str, network: Net, subnet: Net, multicast: str) -> str:
    return (
        f"    {proto} saddr {network} {proto} daddr {network} return\n"
        f"    {proto} saddr {network} {proto} daddr != {multicast} masquerade fully-random\n"
        f"    {proto} saddr != {network} {proto} daddr {subnet} return\n"
        f"    {proto} saddr != {network} {proto} daddr {network} masquerade fully-random\n"
    )


def _table(family: str, body: str, digest: str) -> str:
    return (
        f"table {family} {TABLE_NAME} {{\n"
        f"  comment \"netd ip-masq {digest}\"\n"
        f"  chain postrouting {{\n"
        f"    type nat hook postrouting priority srcnat; policy accept;\n"
        f"{body}"
        f"  }}\n"
        f"}}\n"
    )


def render_masq_ruleset(
    network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network,
    ipv6: tuple[ipaddress.IPv6Network, ipaddress.IPv6Network] | None = None,
) -> str:
    """An nft script that atomically replaces netd's table(s) (``nft -f`` is one transaction).
    ipv6: (IPv6Network, our IPv6 subnet) on a dual-stack network; else the ip6 table goes."""
    body = _rules("ip", network, subnet, "224.0.0.0/4")
    body6 = _rules("ip6", ipv6[0], ipv6[1], "ff00::/8") if ipv6 else ""
    digest = hashlib.sha256((body + body6).encode()).hexdigest()[:16]
    script = ""
    for family in (TABLE_FAMILY, TABLE_FAMILY6):  # create-then-delete: replaces whatever is there
        script += f"table {family} {TABLE_NAME} {{}}\ndelete table {family} {TABLE_NAME}\n"
    script += _table(TABLE_FAMILY, body, digest)
    if ipv6:
        script += _table(TABLE_FAMILY6, body6, digest)
    return script


def ruleset_digest(script: str) -> str:
    """The marker we look for in ``nft list table`` output to know our rules are in place."""
    for line in script.splitlines():
        if "netd ip-masq" in line:
            return line.split("netd ip-masq", 1)[1].strip().strip('"')
    return ""
