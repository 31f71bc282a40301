"""--ip-masq through nftables: a table ``ip netd`` (and ``ip6 netd`` on a dual-stack network)
that netd owns, replaced atomically.

We drive the ``nft`` CLI: ``nft -f`` applies a whole script as one transaction, and the Python
bindings (libnftables) are not on PyPI. The rendering is pure (netd.core.masq).
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess

from netd.core.masq import TABLE_FAMILY, TABLE_FAMILY6, TABLE_NAME, render_masq_ruleset, ruleset_digest
from netd.errors import DataplaneError

log = logging.getLogger(__name__)
NFT = shutil.which("nft") or "/usr/sbin/nft"


class NftMasquerade:
    def __init__(self) -> None:
        self._installed_digest = ""

    def _nft(self, *args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([NFT, *args], input=script, capture_output=True, text=True)

    def current_digest(self, family: str = TABLE_FAMILY) -> str:
        r = self._nft("list", "table", family, TABLE_NAME)
        return ruleset_digest(r.stdout) if r.returncode == 0 else ""

    def ensure(self, network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network,
               ipv6: tuple[ipaddress.IPv6Network, ipaddress.IPv6Network] | None = None) -> bool:
        """Install or repair the rules; True if anything had to be written."""
        script = render_masq_ruleset(network, subnet, ipv6)
        want = ruleset_digest(script)
        have6 = self.current_digest(TABLE_FAMILY6)
        if self.current_digest() == want and (have6 == want if ipv6 else not have6):
            self._installed_digest = want
            return False
        r = self._nft("-f", "-", script=script)
        if r.returncode != 0:
            raise DataplaneError(f"nft -f (ip-masq rules) failed: {r.stderr.strip()}")
        log.info("ip-masq rules installed in nftables table %s %s%s", TABLE_FAMILY, TABLE_NAME,
                 f" and {TABLE_FAMILY6} {TABLE_NAME}" if ipv6 else "")
        self._installed_digest = want
        return True

    def remove(self) -> None:
        removed = [family for family in (TABLE_FAMILY, TABLE_FAMILY6)
                   if self._nft("delete", "table", family, TABLE_NAME).returncode == 0]
        if removed:
            log.info("ip-masq rules removed")
