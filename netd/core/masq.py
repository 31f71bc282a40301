"""flannel's --ip-masq rules, rendered as one nftables table that netd owns.

Meaning (flannel's iptables rules, in nftables form):
  * cluster network -> cluster network: untouched;
  * cluster network -> outside (not multicast): masqueraded;
  * outside -> our own subnet: untouched (port-forwarded traffic keeps its source);
  * outside -> the rest of the cluster network: masqueraded.
"""

from __future__ import annotations

import hashlib
import ipaddress

TABLE_FAMILY = "ip"
TABLE_NAME = "netd"


def render_masq_ruleset(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network) -> str:
    """An nft script that atomically replaces netd's table (``nft -f`` is one transaction)."""
    body = (
        f"    ip saddr {network} ip daddr {network} return\n"
        f"    ip saddr {network} ip daddr != 224.0.0.0/4 masquerade fully-random\n"
        f"    ip saddr != {network} ip daddr {subnet} return\n"
        f"    ip saddr != {network} ip daddr {network} masquerade fully-random\n"
    )
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return (
        f"table {TABLE_FAMILY} {TABLE_NAME} {{}}\n"
        f"delete table {TABLE_FAMILY} {TABLE_NAME}\n"
        f"table {TABLE_FAMILY} {TABLE_NAME} {{\n"
        f"  comment \"netd ip-masq {digest}\"\n"
        f"  chain postrouting {{\n"
        f"    type nat hook postrouting priority srcnat; policy accept;\n"
        f"{body}"
        f"  }}\n"
        f"}}\n"
    )


def ruleset_digest(script: str) -> str:
    """The marker we look for in ``nft list table`` output to know our rules are in place."""
    for line in script.splitlines():
        if "netd ip-masq" in line:
            return line.split("netd ip-masq", 1)[1].strip().strip('"')
    return ""
