"""Flag plumbing shared by netd and netctl: every flag also reads NETD_<FLAG> from the environment."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from netd.adapters.etcd import EtcdRegistry

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
DEFAULT_PREFIX = "/coreos.com/network"


def env_default(flag: str, default: Any) -> Any:
    """NETD_ETCD_ENDPOINTS for --etcd-endpoints, and so on."""
    return os.environ.get("NETD_" + flag.lstrip("-").replace("-", "_").upper(), default)


def env_bool(flag: str) -> bool:
    return str(env_default(flag, "false")).lower() in ("1", "true", "yes", "on")


def add_etcd_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("etcd")
    g.add_argument("--etcd-endpoints", default=env_default("--etcd-endpoints", DEFAULT_ENDPOINTS),
                   help="comma-separated etcd URLs (default %(default)s)")
    g.add_argument("--etcd-prefix", default=env_default("--etcd-prefix", DEFAULT_PREFIX),
                   help="flannel key prefix (default %(default)s)")
    g.add_argument("--etcd-cafile", default=env_default("--etcd-cafile", None), help="CA for etcd's TLS cert")
    g.add_argument("--etcd-certfile", default=env_default("--etcd-certfile", None), help="client TLS cert")
    g.add_argument("--etcd-keyfile", default=env_default("--etcd-keyfile", None), help="client TLS key")


def config_key(prefix: str) -> str:
    """Where flannel keeps the network config under --etcd-prefix."""
    return f"{prefix.rstrip('/')}/config"


def make_registry(args: argparse.Namespace) -> EtcdRegistry:
    from netd.adapters.etcd import EtcdRegistry, EtcdTLS  # grpc is slow to import: only when needed

    tls = EtcdTLS(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile)
    return EtcdRegistry(args.etcd_endpoints, prefix=args.etcd_prefix, tls=tls)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pyroute2 logs every netlink message at debug: keep it out of netd's own debug output
    logging.getLogger("pyroute2").setLevel(max(logging.INFO, root.level))
