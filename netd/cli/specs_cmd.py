"""netctl's commands for netd/v1 objects: validate, diff, apply, delete, get, attach, detach."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from netd.cli.chains_cmd import add_trace_command, print_chains, print_functions, read_reports, run_trace
from netd.cli.common import FlagParser, add_flag, arg_type
from netd.errors import ConfigError, NetdError
from netd.model.flags import parse_ipv4

if TYPE_CHECKING:  # netd.model.specs (pydantic) is imported by the commands that use it, not by every netctl
    from netd.model.specs import Endpoint

SPEC_COMMANDS = ("validate", "diff", "apply", "delete", "get", "attach", "detach", "trace")


def add_spec_commands(p: FlagParser, sub: Any) -> None:
    add_flag(p, "--netd-prefix", default="/netd", help="where netd keeps its own objects in etcd (default %(default)s)")

    def files(q: argparse.ArgumentParser) -> None:
        q.add_argument("-f", "--filename", dest="files", action="append", required=True, metavar="FILE",
                       help="a YAML file of netd/v1 documents (repeat for several)")

    v = sub.add_parser("validate", help="check YAML files (schema and references, against what is stored)")
    files(v)
    v.add_argument("--offline", action="store_true", help="check the files alone, without etcd")
    for name, what in (("diff", "show what apply would add, change and delete"),
                       ("apply", "store the objects of YAML files, in one transaction")):
        q = sub.add_parser(name, help=what)
        files(q)
        q.add_argument("--prune", action="store_true",
                       help="the files are the whole desired state of the kinds they hold: delete stored objects of "
                            "those kinds they do not name (never a tenant network endpoints still use)")
    d = sub.add_parser("delete", help="delete objects: those of files (-f), or KIND NAME")
    d.add_argument("-f", "--filename", dest="files", action="append", metavar="FILE")
    d.add_argument("kind", nargs="?")
    d.add_argument("name", nargs="?")
    d.add_argument("--force", action="store_true", help="a tenant network with endpoints: delete those too")
    g = sub.add_parser("get", help="list objects: tenants, endpoints, sfs, chains")
    g.add_argument("kind", help="tenants (tenantnetworks), endpoints, sfs (servicefunctions) or chains "
                               "(servicechains)")
    g.add_argument("name", nargs="?")
    g.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    a = sub.add_parser("attach", help="create an Endpoint: a container or network namespace on a tenant network")
    a.add_argument("--tenant", required=True)
    a.add_argument("--host", required=True, help="the node (netd --node-name) the container runs on")
    target = a.add_mutually_exclusive_group(required=True)
    target.add_argument("--container", help="a Docker container's name or id")
    target.add_argument("--netns", help="a network namespace's name")
    a.add_argument("--ip", type=arg_type(parse_ipv4), help="the address (default: the lowest free one)")
    a.add_argument("--name", help="the endpoint's name (default: HOST-TARGET)")
    t = sub.add_parser("detach", help="delete an Endpoint")
    t.add_argument("name")
    add_trace_command(sub)


def _store(args: argparse.Namespace) -> Any:
    from netd.adapters.etcd import EtcdTLS
    from netd.adapters.objects import EtcdObjectStore

    return EtcdObjectStore(args.etcd_endpoints, prefix=args.netd_prefix,
                           tls=EtcdTLS(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile))


async def _cluster_network(args: argparse.Namespace) -> ipaddress.IPv4Network | None:
    """The overlay's Network (flannel's config), which tenant subnets must not overlap; None if unset."""
    from netd.cli.common import make_registry
    from netd.model import parse_network_config

    reg = make_registry(args)
    try:
        raw = await reg.get_config()
    finally:
        await reg.close()
    if raw is None:
        return None
    try:
        return parse_network_config(raw).network
    except ConfigError:
        return None


def _endpoint_name(args: argparse.Namespace) -> str:
    if args.name:
        return str(args.name)
    target = (args.container or args.netns).lower()
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in target).strip("-")
    return f"{args.host}-{cleaned}"[:63].strip("-")


#: a commit refused because another came between its read and it is planned again from a new read
#: (the rules are checked again too): netctl runs in parallel (attaches from a script) all land
COMMIT_ATTEMPTS = 5


async def run_spec_command(args: argparse.Namespace) -> int:
    from netd.adapters.specfile import SpecFileError, load_objects
    from netd.core.specplan import PlanError, plan_apply, plan_delete, render_plan
    from netd.errors import ConflictError
    from netd.model.specs import check_objects, parse_object

    if args.cmd == "validate" and args.offline:
        try:
            objs = load_objects(args.files, [])
        except SpecFileError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"{len(objs)} objects valid (checked offline: not against what etcd holds)")
        return 0
    store = _store(args)
    if args.cmd == "trace":
        try:
            return await run_trace(args, store)
        finally:
            await store.close()
    try:
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            stored, unreadable = await store.read()
            for bad in unreadable if attempt == 1 else ():
                print(f"netctl: unreadable key {bad}", file=sys.stderr)
            current = [o for o, _ in stored.objects.values()]
            try:
                if args.cmd in ("validate", "diff", "apply") or (args.cmd == "delete" and args.files):
                    objs = load_objects(args.files, current, await _cluster_network(args))
                    if args.cmd == "validate":
                        print(f"{len(objs)} objects valid")
                        return 0
                    if args.cmd == "delete":
                        plan = plan_delete([(o.kind, o.metadata.name) for o in objs], stored, args.force)
                    else:
                        plan = plan_apply(objs, stored, args.prune)
                elif args.cmd == "delete":
                    if not args.kind or not args.name:
                        raise ConfigError("give -f FILE or KIND NAME", "delete")
                    plan = plan_delete([(_kind(args.kind), args.name)], stored, args.force)
                elif args.cmd == "detach":
                    plan = plan_delete([("Endpoint", args.name)], stored)
                elif args.cmd == "attach":
                    raw = {"apiVersion": "netd/v1", "kind": "Endpoint", "metadata": {"name": _endpoint_name(args)},
                           "spec": {k: v for k, v in (("tenant", args.tenant), ("host", args.host),
                                                      ("container", args.container), ("netns", args.netns),
                                                      ("ip", args.ip)) if v is not None}}
                    obj, issues = parse_object(raw)
                    if obj is not None:
                        issues = check_objects([(0, obj)], current)
                    if issues:
                        for i in issues:
                            where = f"{i.field}: " if i.path else ""
                            print(f"netctl: attach: {where}{i.message}", file=sys.stderr)
                        return 2
                    assert obj is not None
                    if ("Endpoint", obj.metadata.name) in stored.objects:
                        print(f"netctl: endpoint {obj.metadata.name} exists already (detach it first)", file=sys.stderr)
                        return 1
                    plan = plan_apply([obj], stored)
                else:  # get
                    kind = _kind(args.kind)
                    reports = await _endpoint_reports(store) if kind in ("Endpoint", "ServiceFunction") \
                        else Reports({}, frozenset())
                    chains = await read_reports(store, "chains") if kind == "ServiceChain" else {}
                    return _get(args, stored, reports, chains)
            except SpecFileError as exc:
                print(exc, file=sys.stderr)
                return 2
            except PlanError as exc:
                print(f"netctl: {exc}; nothing was written", file=sys.stderr)
                return 1
            if args.cmd == "diff" or plan.empty:
                print(render_plan(plan))
                return 0
            try:
                revision = await store.commit(plan, stored)
            except ConflictError as exc:
                if attempt == COMMIT_ATTEMPTS:
                    print(f"netctl: {exc} ({attempt} times)", file=sys.stderr)
                    return 1
                continue  # another commit came between: read, check and plan again from what it left
            print(render_plan(plan))
            if args.cmd == "attach":
                ip = next(ip for (_, ip), name in plan.add_claims.items() if name == _endpoint_name(args))
                print(f"endpoint {_endpoint_name(args)}: {ip} in tenant {args.tenant}")
            print(f"applied at revision {revision}")
            return 0
        return 1  # (not reached: the last attempt returns)
    except NetdError:
        raise
    finally:
        await store.close()


def _kind(text: str) -> str:
    from netd.model.specs import KIND_ALIASES, KINDS

    kind = KIND_ALIASES.get(text.lower()) or (text if text in KINDS else None)
    if kind is None:
        raise ConfigError(f"unknown kind {text!r} (known: tenants, endpoints, sfs, chains)", "kind")
    return kind


@dataclass(frozen=True)
class Reports:
    """What the hosts say: each endpoint's state (status/endpoints/NAME) and which hosts are up
    (hosts/NODE); both are bound to the host's presence, so they go with it."""

    states: dict[str, str]
    hosts: frozenset[str]

    def state(self, o: Endpoint) -> str:
        if o.metadata.name in self.states:
            return self.states[o.metadata.name]
        if o.spec.host not in self.hosts:
            return f"no report: host {o.spec.host} is not up (no netd there with --ovs-bridge and this --node-name)"
        return "pending"


async def _endpoint_reports(store: Any) -> Reports:
    states: dict[str, str] = {}
    for name, raw in (await store.read_prefix("status/endpoints/")).items():
        try:
            states[name] = str(json.loads(raw)["state"])
        except (ValueError, KeyError, TypeError):
            states[name] = "unreadable report"
    return Reports(states, frozenset(await store.read_prefix("hosts/")))


def _get(args: argparse.Namespace, stored: Any, reports: Reports, chain_reports: dict[str, Any]) -> int:
    from netd.core.specplan import endpoint_mac
    from netd.model.specs import Endpoint, TenantNetwork, to_document

    kind = _kind(args.kind)
    objs: list[Any] = sorted((o for o, _ in stored.objects.values() if o.kind == kind),
                                    key=lambda o: o.metadata.name)
    if args.name:
        objs = [o for o in objs if o.metadata.name == args.name]
        if not objs:
            print(f"netctl: no {kind} {args.name}", file=sys.stderr)
            return 1
    if kind == "ServiceChain":
        return print_chains(args, objs, chain_reports)
    if kind == "ServiceFunction":
        return print_functions(args, objs, stored, reports.states)
    rows: list[dict[str, Any]] = []
    for o in objs:
        doc = to_document(o)
        if isinstance(o, Endpoint):
            ip = stored.address_of(o.metadata.name)
            doc["address"] = {"ip": str(ip) if ip else None, "mac": endpoint_mac(ip) if ip else None}
            doc["state"] = reports.state(o)
        rows.append(doc)
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if args.output == "yaml":
        import yaml

        print(yaml.safe_dump_all(rows, sort_keys=False), end="")
        return 0
    if kind == "TenantNetwork":
        print(f"{'NAME':<20} {'VNI':<9} {'SUBNET':<18} {'GATEWAY':<16} ENDPOINTS")
        for o in objs:
            assert isinstance(o, TenantNetwork)
            print(f"{o.metadata.name:<20} {o.spec.vni:<9} {str(o.spec.subnet):<18} {str(o.spec.gateway or '-'):<16} "
                  f"{len(stored.endpoints_of(o.metadata.name))}")
    else:
        print(f"{'NAME':<24} {'TENANT':<14} {'HOST':<12} {'TARGET':<26} {'IP':<16} {'MAC':<18} STATE")
        for o, doc in zip(objs, rows, strict=True):
            assert isinstance(o, Endpoint)
            print(f"{o.metadata.name:<24} {o.spec.tenant:<14} {o.spec.host:<12} {o.spec.target:<26} "
                  f"{doc['address']['ip'] or '-':<16} {doc['address']['mac'] or '-':<18} {doc['state']}")
    return 0
