"""`netctl`: the operator's CLI (config get/set, leases, stats; netd/v1 objects in netd.cli.specs_cmd)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.request
from typing import TYPE_CHECKING, Any

from netd.cli.common import FlagParser, add_etcd_flags, add_flag, config_key, make_registry
from netd.cli.specs_cmd import SPEC_COMMANDS, add_spec_commands, run_spec_command
from netd.cli.units_cmd import UNIT_COMMANDS, add_unit_commands, run_unit_command
from netd.errors import ConfigError, NetdError
from netd.model import parse_network_config
from netd.model.config import BACKEND_DEFAULTS, network_config_from_json

if TYPE_CHECKING:  # aetcd and grpc load with the commands that talk to etcd (seconds on a small or emulated CPU)
    from netd.adapters.etcd import EtcdRegistry


def build_parser() -> FlagParser:
    p = FlagParser(prog="netctl", description="operate a netd cluster",
                   epilog="The etcd flags are also environment variables (NETD_ETCD_ENDPOINTS, ...), as for netd.")
    add_etcd_flags(p)
    sub = p.add_subparsers(dest="cmd", required=True)

    cfg = sub.add_parser("config", help="the cluster network config").add_subparsers(dest="action", required=True)
    s = cfg.add_parser("set", help="validate and write <prefix>/config")
    s.add_argument("--network", required=True, help="cluster network CIDR, e.g. 10.5.0.0/16")
    s.add_argument("--subnet-len", type=int, default=0, help="prefix length of each host's subnet")
    s.add_argument("--subnet-min", default=None)
    s.add_argument("--subnet-max", default=None)
    s.add_argument("--backend", choices=sorted(BACKEND_DEFAULTS), default="vxlan")
    s.add_argument("--port", type=int, default=0, help="backend UDP port (default: the backend's)")
    s.add_argument("--vni", type=int, default=0, help="vxlan VNI (default 1)")
    s.add_argument("--ipv6-network", default=None,
                   help="dual stack: the cluster's IPv6 network, e.g. fd00:5::/48 (sets EnableIPv6; udp backend)")
    s.add_argument("--ipv6-subnet-len", type=int, default=0, help="prefix length of each host's IPv6 subnet")
    cfg.add_parser("get", help="print <prefix>/config with defaults filled in")

    leases = sub.add_parser("leases", help="list subnet leases")
    leases.add_argument("-o", "--output", choices=["table", "json"], default="table")

    add_spec_commands(p, sub)
    add_unit_commands(sub)

    stats = sub.add_parser("stats", help="the udp fast path's counters of the local netd (from its /metrics)")
    add_flag(stats, "--url", env="NETD_STATS_URL", default="http://127.0.0.1:9180/metrics",
             help="netd's metrics URL (default %(default)s; also NETD_STATS_URL)")
    stats.add_argument("-o", "--output", choices=["table", "json"], default="table")
    return p


def fast_path_stats(url: str) -> dict[str, object]:
    """Read netd's /metrics and pick out the fast path's counters."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, object] = {"packets": {}, "bytes": {}, "syscalls": {}, "tun_frames": {}, "drops": {},
                              "offloads": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removeprefix("netd_fastpath_").removesuffix("_total")
            if name == "drops":
                out["drops"][f"{sample.labels['direction']}/{sample.labels['reason']}"] = int(sample.value)  # type: ignore[index]
            elif name == "offload":
                out["offloads"][sample.labels["feature"]] = bool(sample.value)  # type: ignore[index]
            elif name in out and sample.name.startswith("netd_fastpath_"):
                key = sample.labels.get("direction") or sample.labels.get("op", "")
                out[name][key] = int(sample.value)  # type: ignore[index]
    return out


def show_stats(args: argparse.Namespace) -> int:
    try:
        stats = fast_path_stats(args.url)
    except OSError as exc:
        print(f"netctl: cannot read {args.url}: {exc} (is netd running with --healthz-port?)", file=sys.stderr)
        return 1
    if not stats["offloads"]:
        print(f"netctl: {args.url} has no fast path counters (the backend is not udp)", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(stats, indent=2))
        return 0
    for section in ("packets", "bytes", "syscalls", "tun_frames", "drops", "offloads"):
        values = stats[section]
        assert isinstance(values, dict)
        print(f"{section}:")
        for key, value in sorted(values.items()):
            print(f"  {key:<22} {value}")
    return 0


async def config_set(reg: EtcdRegistry, args: argparse.Namespace) -> int:
    obj: dict[str, Any] = {"Network": args.network}
    if args.subnet_len:
        obj["SubnetLen"] = args.subnet_len
    if args.subnet_min:
        obj["SubnetMin"] = args.subnet_min
    if args.subnet_max:
        obj["SubnetMax"] = args.subnet_max
    if args.ipv6_network:
        obj["EnableIPv6"] = True
        obj["IPv6Network"] = args.ipv6_network
    if args.ipv6_subnet_len:
        obj["IPv6SubnetLen"] = args.ipv6_subnet_len
    backend: dict[str, Any] = {"Type": args.backend}
    if args.port:
        backend["Port"] = args.port
    if args.vni:
        backend["VNI"] = args.vni
    obj["Backend"] = backend
    network_config_from_json(obj)  # validate whole before writing anything
    await reg.put_config(json.dumps(obj).encode())
    print(json.dumps(obj))
    return 0


async def config_get(reg: EtcdRegistry, args: argparse.Namespace) -> int:
    raw = await reg.get_config()
    source = config_key(args.etcd_prefix)
    if raw is None:
        print(f"netctl: {source} is not set", file=sys.stderr)
        return 1
    cfg = parse_network_config(raw, source=source)
    print(json.dumps(cfg.to_json(), indent=2))
    return 0


async def list_leases(reg: EtcdRegistry, args: argparse.Namespace) -> int:
    snap = await reg.list_subnets()
    rows = []
    for lease in snap.leases:
        ttl = await reg.time_to_live(lease.lease_id) if lease.lease_id else None
        rows.append({
            "subnet": str(lease.subnet),
            "ipv6_subnet": str(lease.ipv6_subnet) if lease.ipv6_subnet else None,
            "public_ip": str(lease.attrs.public_ip),
            "backend": lease.attrs.backend_type,
            "ttl_seconds": ttl,
            "reservation": lease.is_reservation,
            "backend_data": dict(lease.attrs.backend_data),
        })
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        dual = any(r["ipv6_subnet"] for r in rows)  # the column shows only on dual-stack networks
        v6_head = f"{'IPV6 SUBNET':<24} " if dual else ""
        print(f"{'SUBNET':<20} {v6_head}{'PUBLIC IP':<16} {'BACKEND':<8} TTL")
        for r in rows:
            ttl_text = "reserved" if r["reservation"] else f"{r['ttl_seconds']}s"
            v6 = f"{r['ipv6_subnet'] or '-':<24} " if dual else ""
            print(f"{r['subnet']:<20} {v6}{r['public_ip']:<16} {r['backend']:<8} {ttl_text}")
    for bad in snap.invalid:
        print(f"netctl: unparseable key {bad}", file=sys.stderr)
    return 0


async def run(args: argparse.Namespace) -> int:
    if args.cmd == "stats":
        return show_stats(args)
    if args.cmd in SPEC_COMMANDS:
        return await run_spec_command(args)
    if args.cmd in UNIT_COMMANDS:
        return await run_unit_command(args)
    reg = make_registry(args)
    try:
        if args.cmd == "config":
            return await (config_set if args.action == "set" else config_get)(reg, args)
        return await list_leases(reg, args)
    finally:
        await reg.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except ConfigError as exc:
        print(f"netctl: {exc}", file=sys.stderr)
        return 2
    except NetdError as exc:
        print(f"netctl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
