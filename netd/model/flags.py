"""Typed values of netd's and netctl's flags and of their NETD_<FLAG> environment variables.

Each parser takes the text as given (command line or environment) and returns the value, or raises
ValueError saying what was expected and what was found. netd.cli.common runs every flag and its
variable through these, so a bad value is refused at start, naming the flag or the variable,
instead of ending in a traceback or silently meaning something else.
"""

from __future__ import annotations

import ipaddress
import math
from urllib.parse import urlsplit

#: The spellings a boolean variable accepts (case-insensitive); anything else is refused.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_UNITS = {"h": 3600, "m": 60, "s": 1}


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected one of {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}, found {text!r}")


#: etcd's longest lease TTL (MaxLeaseTTL), in seconds.
MAX_LEASE_TTL = 9_000_000_000
#: The shortest resync interval worth having (a shorter one only burns CPU).
MIN_INTERVAL = 0.01


def parse_duration(text: str) -> int:
    """``24h``, ``30m``, ``90s`` or plain seconds -> whole seconds, 1 up to etcd's longest lease TTL."""
    body = text.strip()
    unit = _UNITS.get(body[-1:], 0)
    number = body[:-1] if unit else body
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    seconds = value * (unit or 1)
    if not math.isfinite(seconds) or seconds < 1:
        raise ValueError(f"expected a duration of at least 1s such as 24h, 30m or 90s, found {text!r}")
    if seconds > MAX_LEASE_TTL:
        raise ValueError(f"expected at most {MAX_LEASE_TTL}s (etcd's longest lease), found {text!r}")
    return int(seconds)


def parse_port(text: str) -> int:
    """A TCP/UDP port, 0..65535 (0: off, where a flag allows it)."""
    try:
        port = int(text.strip())
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"expected a port number 0..65535, found {text!r}")
    return port


def parse_seconds(text: str) -> float:
    """A finite number of seconds, at least MIN_INTERVAL (fractions allowed)."""
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < MIN_INTERVAL:
        raise ValueError(f"expected a number of seconds of at least {MIN_INTERVAL}, found {text!r}")
    return value


def parse_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"expected an IP address, found {text!r}") from None


def parse_ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise ValueError(f"expected an IPv4 address, found {text!r}") from None


def parse_log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, found {text!r}")
    return level


def parse_endpoints(spec: str) -> list[tuple[str, int, bool]]:
    """``http://10.0.0.1:2379,https://h:2379`` -> [(host, port, tls)]."""
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        url = urlsplit(item if "://" in item else f"http://{item}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"expected http(s)://host:port, found {item!r}")
        try:
            port = url.port or 2379
        except ValueError as exc:
            raise ValueError(f"bad port in {item!r}") from exc
        out.append((url.hostname, port, url.scheme == "https"))
    if not out:
        raise ValueError(f"expected at least one endpoint, found {spec!r}")
    return out


def env_name(flag: str) -> str:
    """``--etcd-endpoints`` -> ``NETD_ETCD_ENDPOINTS``."""
    return "NETD_" + flag.lstrip("-").replace("-", "_").upper()
