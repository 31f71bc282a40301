"""`netd`: the per-host agent. Flags keep flannel's names; each is also NETD_<FLAG>."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from netd import __version__
from netd.adapters.files import acquire_instance_lock, route_cache_path
from netd.cli.common import FlagParser, add_etcd_flags, add_flag, arg_type, config_key, make_registry, setup_logging
from netd.errors import AlreadyRunning, ConfigError, NetdError
from netd.model.flags import (
    parse_bool,
    parse_duration,
    parse_ip,
    parse_ipv4,
    parse_log_level,
    parse_port,
    parse_seconds,
)

# Everything slow to import (pyroute2, grpc) is imported in run(), after the udp fast path has
# re-attached from its route cache: a restart then pauses traffic for as little as possible.
if TYPE_CHECKING:
    from netd.adapters.netlink import Backend, Underlay
    from netd.model import NetworkConfig

log = logging.getLogger("netd")


def build_parser() -> FlagParser:
    p = FlagParser(prog="netd", description="netd agent: leases a subnet and routes the overlay",
                   epilog="Every flag is also an environment variable NETD_<FLAG> (e.g. NETD_HEALTHZ_PORT); "
                          "the command line wins. A bad value is refused at start, naming the flag or variable.")
    add_etcd_flags(p)
    add_flag(p, "--iface", default=None,
             help="interface (name or address) for inter-host traffic (default: the default route's)")
    add_flag(p, "--public-ip", type=arg_type(parse_ipv4), default=None,
             help="IP other hosts reach this one at (default: --iface's address)")
    add_flag(p, "--subnet-file", default="/run/flannel/subnet.env",
             help="where to write subnet.env (default %(default)s)")
    add_flag(p, "--ip-masq", nargs="?", const=True, type=arg_type(parse_bool), default=False, metavar="BOOL",
             help="masquerade traffic leaving the cluster network (nftables table ip netd); --ip-masq alone or "
                  "--ip-masq=true|false, as flannel spells it")
    add_flag(p, "--subnet-lease-ttl", type=arg_type(parse_duration), default="24h",
             help="TTL of the subnet lease in etcd (default %(default)s)")
    add_flag(p, "--healthz-ip", type=arg_type(parse_ip), default="0.0.0.0")
    add_flag(p, "--healthz-port", type=arg_type(parse_port), default=0,
             help="serve /healthz, /readyz and /metrics here (0: off)")
    add_flag(p, "--resync-interval", type=arg_type(parse_seconds), default=5.0,
             help="seconds between full reconciles (default %(default)s)")
    add_flag(p, "--udp-offloads", choices=["auto", "off"], default="auto",
             help="udp backend: use TSO/GSO/GRO where the kernel has them, or force plain mode")
    add_flag(p, "--udp-threads", type=int, choices=[2, 1], default=2,
             help="udp backend: forwarding threads. 2 (default) gives each direction its own thread; "
                  "1 serves both, as flannel does: less CPU per byte, less throughput")
    add_flag(p, "--state-dir", default="/run/netd",
             help="where netd keeps its lock and caches state for fast restarts (default %(default)s)")
    g = p.add_argument_group("tenant networks (Open vSwitch); off unless --ovs-bridge is given")
    add_flag(g, "--ovs-bridge", default="", help="the integration bridge netd owns, e.g. netd-int (empty: no OVS)")
    add_flag(g, "--ovs-rundir", default="/var/run/openvswitch", help="where ovsdb-server's db.sock and the "
             "bridges' .mgmt sockets are (default %(default)s)")
    add_flag(g, "--ovs-datapath", choices=["system", "netdev"], default="system",
             help="system: the kernel module; netdev: the userspace datapath (needs --ovs-phy-iface)")
    add_flag(g, "--ovs-phy-iface", default=None, help="netdev: the underlay interface whose address OVS tunnels from")
    add_flag(g, "--tunnel-ip", type=arg_type(parse_ipv4), default=None,
             help="the address peers send tenant tunnels to (default: the public IP)")
    add_flag(g, "--node-name", default=None, help="this host's name in Endpoint specs (default: the hostname)")
    add_flag(g, "--netd-prefix", default="/netd", help="netd's own keys in etcd (default %(default)s)")
    add_flag(g, "--docker-host", default=None, help="dockerd's socket for container endpoints (default: the "
             "environment's, DOCKER_HOST)")
    u = p.add_argument_group("scheduler: this netd as a machine that runs units (fleet-like); on unless --units=off")
    add_flag(u, "--units", choices=["on", "off"], default="on", help="register as a machine, run placed units, "
             "stand as the engine, answer DNS for endpoints (default %(default)s)")
    add_flag(u, "--machine-id", default=None, help="this machine's ID (default: /etc/machine-id)")
    add_flag(u, "--metadata", type=arg_type(_metadata), default="",
             help="machine metadata for MachineMetadata, e.g. region=us-east,disk=ssd")
    add_flag(u, "--machine-ttl", type=arg_type(parse_duration), default="30s",
             help="TTL of the machine's etcd lease: a machine silent this long has its units placed elsewhere "
                  "(default %(default)s)")
    add_flag(u, "--machine-cpu", type=arg_type(_millicores), default=None,
             help="CPU units may reserve here (0.5 or 500m; default: the host's cores)")
    add_flag(u, "--machine-memory", type=arg_type(_bytes), default=None,
             help="memory units may reserve here (512M, 2G; default: the host's)")
    add_flag(u, "--dns-domain", default="netd.local", help="the domain endpoints answer in (default %(default)s)")
    add_flag(u, "--dns-listen", default="gateway", help="where DNS is answered: 'gateway' (the units' gateway, "
             "port 53), HOST:PORT, several comma-separated, or 'off' (default %(default)s)")
    add_flag(p, "--log-format", choices=["text", "json"], default="text")
    add_flag(p, "--log-level", type=arg_type(parse_log_level), default="info",
             help="debug, info, warning, error (default %(default)s)")
    p.add_argument("--version", action="version", version=f"netd {__version__}")
    return p


def _metadata(text: str) -> dict[str, str]:
    from netd.model.units import parse_metadata

    return parse_metadata(text)


def _millicores(text: str) -> int:
    t = text.strip()
    try:
        value = int(t[:-1]) if t.endswith("m") else int(round(float(t) * 1000))
    except ValueError:
        raise ValueError(f"expected cores (2, 0.5) or millicores (500m), found {text!r}") from None
    if value < 0:
        raise ValueError(f"expected a positive amount, found {text!r}")
    return value


def _bytes(text: str) -> int:
    import re

    m = re.fullmatch(r"(\d+)\s*([KMGT]?)i?B?", text.strip())
    if not m:
        raise ValueError(f"expected a size such as 512M or 2G, found {text!r}")
    return int(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")


def _dns_listen(text: str) -> tuple[bool, list[tuple[str, int]]]:
    """(answer on the units' gateway, other addresses)."""
    gateway, out = False, []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        if item == "off":
            return False, []
        if item == "gateway":
            gateway = True
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"expected gateway, off or HOST:PORT, found {item!r}", "--dns-listen")
        out.append((host.strip("[]"), int(port)))
    return gateway, out


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
    switch = make_switch(args, underlay, metrics) if args.ovs_bridge else None
    switch_stop = asyncio.Event()
    units, engine = make_units(args, underlay, metrics) if args.units == "on" else (None, None)

    def readiness() -> tuple[bool, str, dict[str, object]]:
        ready, reason, details = agent.readiness()
        if switch is not None:
            ok, why, more = switch.readiness()
            ready, reason, details = ready and ok, reason if not ready else (why or reason), \
                {**details, "tenant_networks": more}
        if units is not None and engine is not None:
            ok, why, more = units.readiness()
            ready, reason = ready and ok, reason if not ready else (why or reason)
            details = {**details, "scheduler": {**more, "engine": engine.readiness()}}
        return ready, reason, details

    health = None
    if args.healthz_port:
        try:
            health = HealthServer(args.healthz_ip, args.healthz_port, readiness, metrics.registry,
                                  agent.dataplane_view, units.journal if units is not None else None)
        except OSError as exc:  # the port taken, an address this host does not have
            raise ConfigError(f"cannot serve on {args.healthz_ip}:{args.healthz_port}: {exc.strerror or exc}",
                              "--healthz-port") from exc
        health.start()
        log.info("serving /healthz, /readyz, /metrics, /dataplane on %s:%d", args.healthz_ip, health.port)
    loop = asyncio.get_running_loop()
    def stop() -> None:
        agent.stop()
        switch_stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if units is not None and health is not None:
        units.opts.api = f"http://{underlay.address}:{health.port}"
    try:
        loops = [agent.run()]
        if switch is not None:
            loops.append(switch.run(switch_stop))
        if units is not None and engine is not None:
            loops += [units.run(switch_stop), engine.run(switch_stop)]
        await asyncio.gather(*loops)
    finally:
        if switch is not None:
            switch.close()
            await switch.store.close()
        if units is not None:
            units.close()
            await units.store.close()
        if health is not None:
            health.close()
        await registry.close()
    log.info("netd stopped (lease and routes kept for the next start)")
    return 0


def make_switch(args: argparse.Namespace, underlay: Underlay, metrics: Any) -> Any:
    import socket

    from netd.adapters.etcd import EtcdTLS
    from netd.adapters.objects import EtcdObjectStore
    from netd.adapters.ovs import OvsSwitch
    from netd.adapters.wiring import Wiring
    from netd.agent.switch import SwitchAgent, SwitchOptions

    if args.ovs_datapath == "netdev" and not args.ovs_phy_iface:
        raise ConfigError("the userspace datapath tunnels from an OVS port: give the underlay interface",
                          "--ovs-phy-iface")
    store = EtcdObjectStore(args.etcd_endpoints, prefix=args.netd_prefix,
                            tls=EtcdTLS(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile))
    node = args.node_name or socket.gethostname().split(".")[0]
    options = SwitchOptions(node=node, tunnel_ip=ipaddress.IPv4Address(args.tunnel_ip or underlay.address),
                            datapath=args.ovs_datapath, phy_iface=args.ovs_phy_iface,
                            resync_interval=args.resync_interval, default_mtu=underlay.mtu - 50,
                            report_interval=max(5.0, 6 * args.resync_interval))
    log.info("tenant networks on OVS bridge %s (%s datapath), node %s, tunnels from %s", args.ovs_bridge,
             args.ovs_datapath, node, options.tunnel_ip)
    return SwitchAgent(store, OvsSwitch(args.ovs_rundir, args.ovs_bridge, args.ovs_datapath),
                       Wiring(args.docker_host, tx_off=args.ovs_datapath == "netdev"), options, metrics.registry)


def make_units(args: argparse.Namespace, underlay: Underlay, metrics: Any) -> tuple[Any, Any]:
    """The machine loop and the engine (netd.agent.units, netd.agent.engine), on one etcd connection."""
    from netd.adapters.etcd import EtcdTLS
    from netd.adapters.fleet import EtcdFleetStore
    from netd.adapters.runtime import DockerRuntime, NetnsRuntime, Overlay
    from netd.agent.engine import Engine
    from netd.agent.units import UnitAgent, UnitOptions
    from netd.model.units import Machine

    machine_id = args.machine_id
    if not machine_id:
        try:
            with open("/etc/machine-id") as fh:
                machine_id = fh.read().strip()
        except OSError:
            machine_id = ""
    if not machine_id:
        raise ConfigError("no machine ID: /etc/machine-id is empty or missing; give one", "--machine-id")
    cpu = args.machine_cpu if args.machine_cpu is not None else (os.cpu_count() or 1) * 1000
    memory = args.machine_memory
    if memory is None:
        try:
            with open("/proc/meminfo") as fh:
                memory = int(next(line for line in fh if line.startswith("MemTotal:")).split()[1]) * 1024
        except (OSError, StopIteration, ValueError):
            memory = 0
    on_gateway, listen = _dns_listen(args.dns_listen)
    store = EtcdFleetStore(args.etcd_endpoints, prefix=args.netd_prefix,
                           tls=EtcdTLS(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile))
    runtimes: dict[str, Any] = {"netns": NetnsRuntime(args.state_dir)}
    if args.docker_host or os.path.exists("/var/run/docker.sock"):
        runtimes["docker"] = DockerRuntime(machine_id, args.docker_host)
    machine = Machine(machine_id, str(underlay.address), args.metadata or {}, cpu, memory, tuple(sorted(runtimes)))
    import socket

    node = (args.node_name or socket.gethostname().split(".")[0]) if args.ovs_bridge else ""
    opts = UnitOptions(machine, args.state_dir, args.subnet_file, machine_ttl=args.machine_ttl,
                       resync_interval=args.resync_interval, domain=args.dns_domain, dns_listen=listen,
                       dns_on_gateway=on_gateway, node=node)
    units = UnitAgent(store, runtimes, Overlay(), opts, metrics.registry)
    engine = Engine(store, machine_id, lambda: units.lease, metrics.registry, args.resync_interval)
    log.info("machine %s (%s; metadata %s; %dm CPU, %d MiB), runtimes %s, DNS for %s", machine_id, machine.ip,
             ",".join(f"{k}={v}" for k, v in machine.metadata.items()) or "none", cpu, memory >> 20,
             ", ".join(runtimes), args.dns_domain)
    return units, engine


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    try:  # first of all: a second netd started by mistake must touch nothing of the running one's
        acquire_instance_lock(args.state_dir)
    except (AlreadyRunning, OSError) as exc:
        log.error("%s", exc)
        return 1
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
