"""`netd`: the per-host agent. Flags keep flannel's names; each is also NETD_<FLAG>."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from netd import __version__
from netd.adapters.files import route_cache_path
from netd.cli.common import add_etcd_flags, config_key, env_bool, env_default, make_registry, setup_logging
from netd.errors import ConfigError, NetdError

# Everything slow to import (pyroute2, grpc) is imported in run(), after the udp fast path has
# re-attached from its route cache: a restart then pauses traffic for as little as possible.
if TYPE_CHECKING:
    from netd.adapters.netlink import Backend, Underlay
    from netd.model import NetworkConfig

log = logging.getLogger("netd")


def parse_duration(text: str) -> int:
    """``24h``, ``30m``, ``90s`` or plain seconds -> seconds."""
    text = str(text).strip()
    units = {"h": 3600, "m": 60, "s": 1}
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a duration such as 24h, 30m or 90s, found {text!r}") from exc


def thread_layout(value: str) -> int:
    if value.strip() not in ("1", "2"):
        raise argparse.ArgumentTypeError(f"must be 1 or 2, not {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netd", description="netd agent: leases a subnet and routes the overlay")
    add_etcd_flags(p)
    p.add_argument("--iface", default=env_default("--iface", None),
                   help="interface (name or address) for inter-host traffic (default: the default route's)")
    p.add_argument("--public-ip", default=env_default("--public-ip", None),
                   help="IP other hosts reach this one at (default: --iface's address)")
    p.add_argument("--subnet-file", default=env_default("--subnet-file", "/run/flannel/subnet.env"),
                   help="where to write subnet.env (default %(default)s)")
    p.add_argument("--ip-masq", action="store_true", default=env_bool("--ip-masq"),
                   help="masquerade traffic leaving the cluster network (nftables table ip netd)")
    p.add_argument("--subnet-lease-ttl", type=parse_duration, default=env_default("--subnet-lease-ttl", "24h"),
                   help="TTL of the subnet lease in etcd (default %(default)s)")
    p.add_argument("--healthz-ip", default=env_default("--healthz-ip", "0.0.0.0"))
    p.add_argument("--healthz-port", type=int, default=int(env_default("--healthz-port", 0)),
                   help="serve /healthz, /readyz and /metrics here (0: off)")
    p.add_argument("--resync-interval", type=float, default=float(env_default("--resync-interval", 5.0)),
                   help="seconds between full reconciles (default %(default)s)")
    p.add_argument("--udp-offloads", choices=["auto", "off"], default=env_default("--udp-offloads", "auto"),
                   help="udp backend: use TSO/GSO/GRO where the kernel has them, or force plain mode")
    # a string default goes through `type` too, so a bad NETD_UDP_THREADS is refused like a bad flag
    p.add_argument("--udp-threads", type=thread_layout, default=env_default("--udp-threads", "2"), metavar="{2,1}",
                   help="udp backend: forwarding threads. 2 (default) gives each direction its own thread; "
                        "1 serves both, as flannel does: less CPU per byte, less throughput")
    p.add_argument("--state-dir", default=env_default("--state-dir", "/run/netd"),
                   help="where netd caches state for fast restarts (default %(default)s)")
    p.add_argument("--log-format", choices=["text", "json"], default=env_default("--log-format", "text"))
    p.add_argument("--log-level", default=env_default("--log-level", "info"))
    p.add_argument("--version", action="version", version=f"netd {__version__}")
    return p


async def run(args: argparse.Namespace, underlay: Underlay, prestarted: Any) -> int:
    from netd.adapters.backends import BackendOptions, make_backend
    from netd.adapters.http import HealthServer
    from netd.adapters.netlink import enable_forwarding
    from netd.agent.agent import Agent, AgentOptions
    from netd.agent.metrics import AgentMetrics

    registry = make_registry(args)
    log.info("netd %s: public IP %s on %s (MTU %d), etcd %s, prefix %s", __version__, underlay.address,
             underlay.ifname, underlay.mtu, args.etcd_endpoints, args.etcd_prefix)
    enable_forwarding()

    backend_options = BackendOptions(udp_offloads=args.udp_offloads == "auto", udp_threads=args.udp_threads,
                                     state_dir=args.state_dir, prestarted=prestarted)

    def backend_for(cfg: NetworkConfig) -> Backend:
        return make_backend(cfg, underlay, backend_options)

    metrics = AgentMetrics()
    opts = AgentOptions(
        public_ip=underlay.address,
        subnet_file=args.subnet_file,
        ip_masq=args.ip_masq,
        lease_ttl=args.subnet_lease_ttl,
        resync_interval=args.resync_interval,
        config_source=config_key(args.etcd_prefix),
    )
    agent = Agent(registry, backend_for, opts, metrics)
    health = None
    if args.healthz_port:
        health = HealthServer(args.healthz_ip, args.healthz_port, agent.readiness, metrics.registry)
        health.start()
        log.info("serving /healthz, /readyz, /metrics on %s:%d", args.healthz_ip, health.port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    try:
        await agent.run()
    finally:
        if health is not None:
            health.close()
        await registry.close()
    log.info("netd stopped (lease and routes kept for the next start)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    prestarted = None
    cache = route_cache_path(args.state_dir)
    if os.path.exists(cache):  # only udp hosts pay for importing the extension here
        from netd.adapters.fastpath import prestart_from_cache

        prestarted = prestart_from_cache(cache)
        if prestarted is not None:
            log.info("udp fast path re-attached to %s with %d cached routes", prestarted.tun, len(prestarted.routes))
    try:
        from pyroute2 import IPRoute

        from netd.adapters.netlink import find_underlay

        with IPRoute() as ipr:  # before the asyncio loop starts: pyroute2's sync API needs that
            underlay = find_underlay(ipr, args.iface, args.public_ip)
        return asyncio.run(run(args, underlay, prestarted))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except NetdError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
