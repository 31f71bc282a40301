"""netctl's scheduler commands, in fleetctl's shape: list-machines, submit, load, start, stop, unload,
destroy, list-units, list-unit-files, status, journal, endpoints.

Units are given as files (a fleet unit file, named as its unit: ``web@.service``; or a YAML file of
``kind: Unit`` documents) or, once submitted, by name; ``start web@3.service`` makes the instance
from its submitted template, as fleetctl did. Desired states as fleet's: submit leaves a unit
``inactive``, load makes it ``loaded`` (placed, not started), start ``launched``, stop ``loaded``
again, unload ``inactive``; destroy removes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from typing import Any

UNIT_COMMANDS = ("list-machines", "submit", "load", "start", "stop", "unload", "destroy", "list-units",
                 "list-unit-files", "status", "journal", "endpoints")
DESIRED = {"load": "loaded", "start": "launched", "stop": "loaded", "unload": "inactive"}
UNIT_FIELDS = ("unit", "machine", "active", "sub", "ip", "restarts", "message")
FILE_FIELDS = ("unit", "hash", "dstate", "state", "target", "desc")


def add_unit_commands(sub: Any) -> None:
    def table(q: argparse.ArgumentParser, fields: tuple[str, ...] | None = None) -> None:
        q.add_argument("-o", "--output", choices=["table", "json"], default="table")
        q.add_argument("--no-legend", action="store_true", help="no header line")
        q.add_argument("-l", "--full", action="store_true", help="full machine IDs and hashes")
        if fields:
            q.add_argument("--fields", default=",".join(fields[:4] if fields is UNIT_FIELDS else fields[:5]),
                           help=f"columns, of: {', '.join(fields)}")

    table(sub.add_parser("list-machines", help="the machines (every netd): MACHINE IP METADATA"))
    s = sub.add_parser("submit", help="store units (files), inactive")
    s.add_argument("units", nargs="+", metavar="FILE")
    for name, what in (("load", "place units (submitting files first)"), ("start", "place and run units"),
                       ("stop", "stop units (they stay placed)"), ("unload", "take units off their machines"),
                       ("destroy", "remove units")):
        q = sub.add_parser(name, help=what)
        q.add_argument("units", nargs="+", metavar="UNIT|FILE")
        q.add_argument("--no-block", action="store_true", help="(fleetctl's flag: netctl never waits)")
    table(sub.add_parser("list-units", help="units and where they run: UNIT MACHINE ACTIVE SUB"), UNIT_FIELDS)
    table(sub.add_parser("list-unit-files", help="submitted units: UNIT HASH DSTATE STATE TARGET"), FILE_FIELDS)
    st = sub.add_parser("status", help="one unit: where, what it runs, its state")
    st.add_argument("unit")
    j = sub.add_parser("journal", help="a unit's output (from its machine's netd)")
    j.add_argument("unit")
    j.add_argument("-n", "--lines", type=int, default=50)
    j.add_argument("--machine", default="", help="a global unit: the machine whose instance (default: the first)")
    e = sub.add_parser("endpoints", help="published endpoints: SERVICE UNIT IP PORTS MACHINE")
    e.add_argument("service", nargs="?")
    e.add_argument("-o", "--output", choices=["table", "json"], default="table")
    e.add_argument("--watch", action="store_true", help="print again on every change (Ctrl-C ends)")


def _read_units(paths: list[str]) -> tuple[list[Any], list[str]]:
    """Files -> UnitRecords (each checked whole first), and names (arguments that are no file)."""
    import yaml

    from netd.adapters.fleet import UnitRecord
    from netd.model.units import UnitError, unit_from_file, unit_from_yaml

    records, names, errors = [], [], []
    for path in paths:
        if not os.path.exists(path):
            names.append(path)
            continue
        with open(path) as fh:
            text = fh.read()
        base = os.path.basename(path)
        try:
            if base.endswith((".yaml", ".yml")):
                try:
                    docs = [d for d in yaml.safe_load_all(text) if d is not None]
                except yaml.YAMLError as exc:
                    mark = getattr(exc, "problem_mark", None)
                    raise UnitError(f"{path}:{mark.line + 1}" if mark else path, "not valid YAML") from None
                for i, doc in enumerate(docs):
                    if not isinstance(doc, dict):
                        raise UnitError(f"{path}: document {i + 1}", "expected a mapping")
                    u = unit_from_yaml(doc, f"{path}: document {i + 1}", yaml.safe_dump(doc, sort_keys=False))
                    records.append((UnitRecord(u.name, "yaml", u.text), u))
            else:
                u = unit_from_file(base, text, source=path)
                records.append((UnitRecord(u.name, "fleet", text), u))
        except UnitError as exc:
            errors.append(str(exc))
    if errors:
        raise SystemExit("netctl: " + "\nnetctl: ".join(errors) + "\nnothing was written")
    return records, names


async def run_unit_command(args: argparse.Namespace) -> int:
    from netd.adapters.etcd import EtcdTLS
    from netd.adapters.fleet import EtcdFleetStore

    store = EtcdFleetStore(args.etcd_endpoints, prefix=args.netd_prefix,
                           tls=EtcdTLS(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile))
    try:
        if args.cmd == "endpoints":
            return await _endpoints(args, store)
        view = await store.read_fleet()
        if args.cmd == "list-machines":
            return _list_machines(args, view)
        if args.cmd in ("list-units", "list-unit-files", "status", "journal"):
            states: dict[str, list[dict[str, Any]]] = {}  # unit -> what each machine running it reports
            for key, value in sorted((await store.read_json("state/")).items()):
                if isinstance(value, dict):
                    states.setdefault(key.rsplit("/", 1)[0], []).append(value)
            unplaced = await store.get_json("engine/unplaced") or {}
            if args.cmd == "list-units":
                return _list_units(args, view, states, unplaced)
            if args.cmd == "list-unit-files":
                return _list_unit_files(args, view, states)
            if args.cmd == "status":
                return _status(args, view, states, unplaced)
            return _journal(args, view, states)
        return await _change(args, store, view)
    finally:
        await store.close()


def _full(args: argparse.Namespace) -> bool:
    """Whole machine IDs and hashes: asked for (-l), or for a program (-o json)."""
    return bool(getattr(args, "full", False)) or getattr(args, "output", "table") == "json"


def _short(text: str, full: bool, n: int = 8) -> str:
    return text if full or len(text) <= n else text[:n] + "..."


def _print_table(args: argparse.Namespace, fields: list[str], rows: list[dict[str, Any]]) -> None:
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return
    widths = {f: max([len(f), *(len(str(r.get(f, "-"))) for r in rows)]) for f in fields}
    if not getattr(args, "no_legend", False):
        print("\t".join(f.upper().ljust(widths[f]) for f in fields).rstrip())
    for r in rows:
        print("\t".join(str(r.get(f, "-") if r.get(f) not in (None, "") else "-").ljust(widths[f])
                        for f in fields).rstrip())


def _list_machines(args: argparse.Namespace, view: Any) -> int:
    rows = [{"machine": _short(mid, _full(args)), "ip": m.ip, "metadata": ",".join(f"{k}={v}" for k, v in
                                                                             sorted(m.metadata.items())) or "-",
             "cpu": m.cpu, "memory": m.memory, **({"id": mid} if args.output == "json" else {})}
            for mid, (m, _, _) in sorted(view.machines.items())]
    _print_table(args, ["machine", "ip", "metadata"], rows)
    return 0


def _fields(args: argparse.Namespace, allowed: tuple[str, ...]) -> list[str]:
    fields = [f.strip().lower() for f in args.fields.split(",") if f.strip()]
    bad = [f for f in fields if f not in allowed]
    if bad:
        raise SystemExit(f"netctl: --fields: unknown {', '.join(bad)} (known: {', '.join(allowed)})")
    return fields


def _machine_label(mid: str, view: Any, full: bool) -> str:
    m = view.machines.get(mid)
    return f"{_short(mid, full)}/{m[0].ip}" if m else _short(mid, full)


def _list_units(args: argparse.Namespace, view: Any, states: dict[str, list[dict[str, Any]]],
                unplaced: dict[str, str]) -> int:
    """A row per unit and machine running it (a global unit: one per machine); a wanted unit that
    runs nowhere yet: placed or unplaced, and why."""
    rows = []
    for name in sorted(set(view.units) | set(states)):
        rec = view.units.get(name, (None, 0))[0]
        reported = states.get(name, [])
        if not reported:
            if rec is None or rec.desired == "inactive" or name.split("@")[-1].startswith("."):
                continue  # listed by list-unit-files only (as fleetctl: list-units shows what is placed or runs)
            mid = view.placements.get(name, ("", 0))[0]
            rows.append({"unit": name, "machine": _machine_label(mid, view, _full(args)) if mid else "-",
                         "active": "inactive" if mid else "-", "sub": "placed" if mid else "unplaced",
                         "ip": "", "restarts": 0, "message": unplaced.get(name, "")})
            continue
        for st in reported:
            rows.append({"unit": name, "machine": _machine_label(st.get("machine", ""), view, _full(args)),
                         "active": st.get("active", "-"), "sub": st.get("sub", "-"), "ip": st.get("ip") or "",
                         "restarts": st.get("restarts", 0), "message": st.get("message") or ""})
    _print_table(args, _fields(args, UNIT_FIELDS), rows)
    return 0


def _list_unit_files(args: argparse.Namespace, view: Any, states: dict[str, list[dict[str, Any]]]) -> int:
    from netd.model.units import UnitError

    rows = []
    for name, (rec, _) in sorted(view.units.items()):
        reported = states.get(name, [])
        placed = view.placements.get(name, ("", 0))[0]
        try:
            u = rec.unit()
            desc, h, glob = u.spec.description, u.hash, u.is_global
        except UnitError as exc:
            desc, h, glob = f"unreadable: {exc}", "", False
        state = ("launched" if any(st.get("sub") == "running" for st in reported) else "loaded" if placed or reported
                 else "inactive")
        rows.append({"unit": name, "hash": h if _full(args) else h[:7], "dstate": rec.desired, "state": state,
                     "target": "global" if glob else (_machine_label(placed, view, _full(args)) if placed else "-"),
                     "desc": desc})
    _print_table(args, _fields(args, FILE_FIELDS), rows)
    return 0


def _status(args: argparse.Namespace, view: Any, states: dict[str, list[dict[str, Any]]],
            unplaced: dict[str, str]) -> int:
    if args.unit not in view.units:
        print(f"netctl: no unit {args.unit}", file=sys.stderr)
        return 1
    rec = view.units[args.unit][0]
    u = rec.unit()
    print(f"● {args.unit} - {u.spec.description or u.service}")
    print(f"   Desired: {rec.desired}")
    placed = view.placements.get(args.unit, ("", 0))[0]
    print(f"    Target: {placed or ('every matching machine (global)' if u.is_global else '-')}"
          + (f"  (no machine: {unplaced[args.unit]})" if args.unit in unplaced else ""))
    for st in states.get(args.unit, []):
        print(f"    Active: {st.get('active')} ({st.get('sub')}) on {st.get('machine')}"
              + (f", {st.get('restarts')} restarts" if st.get("restarts") else ""))
        if st.get("ip"):
            print(f"   Address: {st['ip']} (service {u.service})")
        if st.get("message"):
            print(f"   Message: {st['message']}")
    print(f"   Runtime: {u.spec.runtime}" + (f" image {u.spec.image}" if u.spec.image else "")
          + f", command: {' '.join(u.spec.command)}")
    return 0


def _journal(args: argparse.Namespace, view: Any, states: dict[str, list[dict[str, Any]]]) -> int:
    reported = [st for st in states.get(args.unit, []) if not args.machine or st.get("machine") == args.machine]
    if not reported:
        print(f"netctl: unit {args.unit} runs nowhere" + (f" on {args.machine}" if args.machine else "")
              + " (see netctl list-units)", file=sys.stderr)
        return 1
    st = reported[0]
    m = view.machines.get(st.get("machine", ""))
    api = m[2] if m else ""
    if not api:
        print(f"netctl: machine {st.get('machine')} serves no journal (its netd runs without --healthz-port)",
              file=sys.stderr)
        return 1
    url = f"{api}/journal?unit={urllib.parse.quote(args.unit)}&lines={args.lines}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            sys.stdout.write(resp.read().decode(errors="replace"))
    except OSError as exc:
        print(f"netctl: {url}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _change(args: argparse.Namespace, store: Any, view: Any) -> int:
    from netd.errors import ConflictError
    from netd.model.units import UnitError, units_for

    records, names = _read_units(args.units)
    try:
        if args.cmd == "submit":
            if names:
                print(f"netctl: submit takes files; not found: {', '.join(names)}", file=sys.stderr)
                return 1
            await store.submit([r for r, _ in records], view, [u.name for _, u in records if u.is_global])
            for r, u in records:
                print(f"Unit {r.name} {'submitted' if r.name not in view.units else 'unchanged'}")
                for note in u.notes:
                    print(f"  note: {note}")
            return 0
        if records:  # load/start FILE: submitted first, as fleetctl does
            await store.submit([r for r, _ in records], view, [u.name for _, u in records if u.is_global])
            view = await store.read_fleet()
        wanted = [r.name for r, _ in records] + names
        if args.cmd == "destroy":
            missing = [n for n in wanted if n not in view.units]
            await store.destroy(wanted, view)
            for n in wanted:
                print(f"Destroyed {n}" if n not in missing else f"netctl: no unit {n}")
            return 1 if missing else 0
        from netd.adapters.fleet import UnitRecord

        known = {}
        for name, (rec, _) in view.units.items():
            try:
                known[name] = rec.unit()
            except UnitError:
                continue
        try:
            units = units_for(wanted, known)
        except UnitError as exc:
            print(f"netctl: {exc}", file=sys.stderr)
            return 1
        new = [UnitRecord(u.name, known[u.name].kind if u.name in known else "fleet", u.text,
                          DESIRED[args.cmd]) for u in units if u.name not in view.units]
        templates = [u.name for u in units if u.is_template]
        if templates:
            print(f"netctl: {', '.join(templates)}: a template runs nowhere; start instances of it "
                  f"(e.g. {templates[0].replace('@.', '@1.')})", file=sys.stderr)
            return 1
        await store.set_desired({u.name: DESIRED[args.cmd] for u in units if u.name in view.units}, view, new,
                                [u.name for u in units if u.is_global])
        verb = {"load": "loaded", "start": "launched", "stop": "stopped (loaded)", "unload": "unloaded"}[args.cmd]
        for u in units:
            print(f"Unit {u.name} {verb}")
        return 0
    except ConflictError as exc:
        print(f"netctl: {exc}", file=sys.stderr)
        return 1


async def _endpoints(args: argparse.Namespace, store: Any) -> int:
    from netd.core.dns import parse_published

    def rows(found: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for key, value in sorted(found.items()):
            service, _, unit = key.partition("/")
            if args.service and service != args.service:
                continue
            try:
                p = parse_published(service, unit, value)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            out.append({"service": service, "unit": unit, "ip": str(p.ip),
                        "ports": ",".join(f"{n}/{proto}" for n, proto in p.ports) or "-", "machine": p.machine})
        return out

    last = None
    events = store.watch_prefix(store.key("endpoints/"), None) if args.watch else None
    while True:
        current = rows(await store.read_json("endpoints/"))
        if current != last:
            if args.output == "json":
                print(json.dumps(current, indent=2) if not args.watch else json.dumps(current), flush=True)
            else:
                if args.watch and last is not None:
                    print(f"--- {time.strftime('%H:%M:%S')}")
                _print_table(argparse.Namespace(output="table", no_legend=False),
                             ["service", "unit", "ip", "ports", "machine"], current)
                sys.stdout.flush()
            last = current
        if events is None:
            return 0
        await events.__anext__()  # the next change under endpoints/ (Ctrl-C ends)
