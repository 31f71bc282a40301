"""netctl's views of service chains: `get chains`, `get sfs` (tables and the hosts' reports) and
`trace` (the path of one packet, from the compiler's own decisions: netd.core.chains)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from typing import Any

from netd.cli.common import arg_type
from netd.model.flags import parse_ipv4


def add_trace_command(sub: Any) -> None:
    t = sub.add_parser("trace", help="the path a packet of a tenant takes: hosts, hops, tunnels, final port")
    t.add_argument("--tenant", required=True)
    t.add_argument("--from", dest="source", required=True, metavar="ENDPOINT", help="the endpoint that sends it")
    t.add_argument("--to", dest="dest", required=True, type=arg_type(parse_ipv4), metavar="ADDRESS")
    t.add_argument("--proto", default="icmp", choices=["tcp", "udp", "icmp"])
    t.add_argument("--sport", type=int, default=None, help="source port (tcp/udp; default 40000)")
    t.add_argument("--dport", type=int, default=None, help="destination port (tcp/udp)")
    t.add_argument("--via", action="append", default=[], metavar="HOP=SF",
                   help="for a hop of several functions (OVS's hash picks one per flow), the one to follow")
    t.add_argument("-o", "--output", choices=["table", "json"], default="table")


async def read_reports(store: Any, prefix: str) -> dict[str, Any]:
    """``status/<prefix>/<name>`` records, decoded (an unreadable one as None)."""
    out: dict[str, Any] = {}
    for name, raw in (await store.read_prefix(f"status/{prefix}/")).items():
        try:
            out[name] = json.loads(raw)
        except ValueError:
            out[name] = None
    return out


def print_chains(args: argparse.Namespace, objs: list[Any], reports: dict[str, Any]) -> int:
    from netd.core.chains import summarize_chain
    from netd.model.specs import to_document

    rows = []
    for o in objs:
        s = summarize_chain(o.metadata.name, reports)
        rows.append((o, s, {**to_document(o), "status": {"state": s.state, "hosts": list(s.hosts),
                                                         "hops": [{"hop": h, "function": sf, "up": up}
                                                                  for h, sf, up in s.hops],
                                                         "packets": s.packets}}))
    if args.output != "table":
        return _dump(args, [r for _, _, r in rows])
    print(f"{'NAME':<16} {'TENANT':<12} {'HOPS':<36} {'PACKETS (out of each hop)':<30} {'APPLIED ON':<14} STATE")
    for o, s, _ in rows:
        hops = " > ".join("|".join(f"{sf}{'' if _up(s, i + 1, sf) else ' (missing)'}" for sf in hop)
                          for i, hop in enumerate(o.spec.hops))
        packets = ", ".join(f"{k.split('/', 1)[1]} {n}" for k, n in sorted(s.packets.items())) or "-"
        print(f"{o.metadata.name:<16} {o.spec.tenant:<12} {hops:<36} {packets:<30} "
              f"{','.join(s.hosts) or '-':<14} {s.state}")
    return 0


def _up(s: Any, hop: int, sf: str) -> bool:
    return any(h == hop and f == sf and up for h, f, up in s.hops) or not s.hops


def print_functions(args: argparse.Namespace, objs: list[Any], stored: Any, states: dict[str, str]) -> int:
    from netd.model.specs import to_document

    def leg(name: str) -> str:
        return states.get(name, "no report")

    rows = []
    for o in objs:
        ep = next((e for e, _ in stored.objects.values() if e.kind == "Endpoint" and e.metadata.name == o.spec.ingress),
                  None)
        up = leg(o.spec.ingress) == "wired" and leg(o.spec.egress) == "wired"
        state = "up" if up else f"down: ingress {leg(o.spec.ingress)}; egress {leg(o.spec.egress)}"
        rows.append((o, ep, state, {**to_document(o), "state": state}))
    if args.output != "table":
        return _dump(args, [r for *_, r in rows])
    print(f"{'NAME':<16} {'TENANT':<12} {'HOST':<10} {'TARGET':<26} {'INGRESS':<16} {'EGRESS':<16} STATE")
    for o, ep, state, _ in rows:
        host, target = (ep.spec.host, ep.spec.target) if ep is not None else ("-", "-")
        print(f"{o.metadata.name:<16} {o.spec.tenant:<12} {host:<10} {target:<26} {o.spec.ingress:<16} "
              f"{o.spec.egress:<16} {state}")
    return 0


def _dump(args: argparse.Namespace, rows: list[Any]) -> int:
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        import yaml

        print(yaml.safe_dump_all(rows, sort_keys=False), end="")
    return 0


async def run_trace(args: argparse.Namespace, store: Any) -> int:
    from netd.core.chains import Packet, World, trace_packet

    stored, _ = await store.read()
    objects = [o for o, _ in stored.objects.values()]
    tenants = {o.metadata.name: o for o in objects if o.kind == "TenantNetwork"}
    endpoints = {o.metadata.name: o for o in objects if o.kind == "Endpoint"}
    if args.tenant not in tenants:
        print(f"netctl: trace: no tenant network {args.tenant}", file=sys.stderr)
        return 1
    src = endpoints.get(args.source)
    if src is None or src.spec.tenant != args.tenant:
        print(f"netctl: trace: no endpoint {args.source} in tenant {args.tenant}", file=sys.stderr)
        return 1
    addresses = {name: ip for (_, ip), (name, _) in stored.claims.items()}
    if args.source not in addresses:
        print(f"netctl: trace: endpoint {args.source} has no address", file=sys.stderr)
        return 1
    via: dict[int, str] = {}
    for item in args.via:
        hop, _, sf = item.partition("=")
        if not hop.isdigit() or not sf:
            print(f"netctl: trace: --via {item!r}: expected HOP=SF, e.g. 2=monitor-b", file=sys.stderr)
            return 2
        via[int(hop)] = sf
    hosts = frozenset(await store.read_prefix("hosts/"))
    wired = frozenset(n for n, r in (await read_reports(store, "endpoints")).items()
                      if isinstance(r, dict) and r.get("state") == "wired")
    world = World(tenants, endpoints, {o.metadata.name: o for o in objects if o.kind == "ServiceFunction"},
                  [o for o in objects if o.kind == "ServiceChain"], addresses, hosts, wired)
    ports = args.proto in ("tcp", "udp")
    packet = Packet(addresses[args.source], ipaddress.IPv4Address(args.dest), args.proto,
                    (args.sport or 40000) if ports else None, args.dport if ports else None)
    try:
        trace = trace_packet(world, args.tenant, args.source, packet, via)
    except ValueError as exc:
        print(f"netctl: trace: {exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        print(json.dumps({"tenant": args.tenant, "packet": {"src": str(packet.src), "dst": str(packet.dst),
                                                            "proto": packet.proto, "sport": packet.sport,
                                                            "dport": packet.dport},
                          "chain": trace.chain, "direction": "forward" if trace.forward else "reverse",
                          "chain_state": trace.state,
                          "steps": [{"host": s.host, "action": s.action, "target": s.target, "leg": s.leg,
                                     "choices": list(s.choices), "note": s.note} for s in trace.steps]}, indent=2))
        return 0
    port = (lambda p: f":{p}" if p is not None else "")  # noqa: E731
    print(f"{packet.proto} {packet.src}{port(packet.sport)} -> {packet.dst}{port(packet.dport)} in tenant "
          f"{args.tenant} (VNI {tenants[args.tenant].spec.vni}), from endpoint {args.source} on "
          f"{src.spec.host}")
    print(f"  chain: {trace.chain} ({'its traffic' if trace.forward else 'replies, hops in reverse'}), "
          f"{trace.state}" if trace.chain else "  chain: none takes it (the tenant's own path)")
    for n, s in enumerate(trace.steps, 1):
        if s.action == "tunnel":
            what = f"tunnel to {s.target}" + (f" (tagged for leg {s.leg})" if s.leg else "")
        elif s.action == "output":
            what = f"out to {'leg' if s.leg else 'endpoint'} {s.target}"
        else:
            what = "dropped"
        extra = f"; one of {', '.join(s.choices)} by OVS's hash (--via to follow another)" if s.choices else ""
        print(f"  {n}. {s.host:<10} {what:<40} {s.note}{extra}")
    return 0
