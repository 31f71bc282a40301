"""--ip-masq through nftables: one table (``ip netd``) that netd owns, replaced atomically.

We drive the ``nft`` CLI: ``nft -f`` applies a whole script as one transaction, and the Python
bindings (libnftables) are not on PyPI. The rendering is pure (netd.core.masq).
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess

from netd.core.masq import TABLE_FAMILY, TABLE_NAME, render_masq_ruleset, ruleset_digest
from netd.errors import DataplaneError

log = logging.getLogger(__name__)
NFT = shutil.which("nft") or "/usr/sbin/nft"


class NftMasquerade:
    def __init__(self) -> None:
        self._installed_digest = ""

    def _nft(self, *args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([NFT, *args], input=script, capture_output=True, text=True)

    def current_digest(self) -> str:
        r = self._nft("list", "table", TABLE_FAMILY, TABLE_NAME)
        return ruleset_digest(r.stdout) if r.returncode == 0 else ""

    def ensure(self, network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network) -> bool:
        """Install or repair the rules; True if anything had to be written."""
        script = render_masq_ruleset(network, subnet)
        want = ruleset_digest(script)
        if self.current_digest() == want:
            self._installed_digest = want
            return False
        r = self._nft("-f", "-", script=script)
        if r.returncode != 0:
            raise DataplaneError(f"nft -f (ip-masq rules) failed: {r.stderr.strip()}")
        log.info("ip-masq rules installed in nftables table %s %s", TABLE_FAMILY, TABLE_NAME)
        self._installed_digest = want
        return True

    def remove(self) -> None:
        r = self._nft("delete", "table", TABLE_FAMILY, TABLE_NAME)
        if r.returncode == 0:
            log.info("ip-masq rules removed")
