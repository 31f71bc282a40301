"""DNS for the published endpoints, pure: the names a unit's endpoint answers to, and the answer
to one question, from the endpoints as etcd holds them (``endpoints/<service>/<unit>``).

Names (``--dns-domain``, default ``netd.local``):
  * ``<unit>.<service>.<domain>``: that unit's address (A) and ports (SRV);
  * ``<service>.<domain>``: every unit of the service (A: each address; SRV: each unit's ports,
    its target the unit's own name).
A unit's label is its name made a DNS label: the type suffix dropped, anything but a-z, 0-9 and
'-' made '-' (``web@1.service`` -> ``web-1``). TTL 1 s: a moved unit is found at its new place
within a second of its new endpoint.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from netd.model.units import UnitName

TTL = 1
NOERROR, NXDOMAIN = 0, 3


def unit_label(unit: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", UnitName(unit).name.lower()).strip("-")
    return label[:63].strip("-") or "unit"


@dataclass(frozen=True, order=True)
class Published:
    """One endpoint: ``endpoints/<service>/<unit>``."""

    service: str
    unit: str
    ip: ipaddress.IPv4Address
    ports: tuple[tuple[int, str], ...] = ()  # (port, protocol)
    machine: str = ""


def parse_published(service: str, unit: str, value: Mapping[str, object]) -> Published:
    """The record's JSON ({"ip", "ports": [{"port", "protocol"}], "machine"}) -> Published; ValueError."""
    ports = value.get("ports", [])
    if not isinstance(ports, list):
        raise ValueError("ports: expected a list")
    return Published(service, unit, ipaddress.IPv4Address(str(value["ip"])),
                     tuple((int(p["port"]), str(p.get("protocol", "tcp"))) for p in ports),
                     str(value.get("machine", "")))


@dataclass(frozen=True)
class Answer:
    rtype: str  # "A" or "SRV"
    name: str
    ip: str = ""  # A
    port: int = 0  # SRV
    target: str = ""  # SRV


def answer(qname: str, qtype: str, endpoints: Iterable[Published], domain: str) -> tuple[int, list[Answer]]:
    """(rcode, answers) for one question. A name of the domain that no endpoint has: NXDOMAIN; a
    known name asked for another type: no answers (NOERROR, as a name server says "no data")."""
    name = qname.lower().rstrip(".")
    suffix = "." + domain.lower().rstrip(".")
    if not name.endswith(suffix):
        return NXDOMAIN, []
    rest = name[: -len(suffix)]
    eps = sorted(endpoints)
    if "." in rest:  # <unit>.<service>
        label, service = rest.split(".", 1)
        hits = [e for e in eps if e.service == service and unit_label(e.unit) == label]
    else:
        hits = [e for e in eps if e.service == rest]
    if not hits:
        return NXDOMAIN, []
    out: list[Answer] = []
    for e in hits:
        if qtype in ("A", "ANY"):
            out.append(Answer("A", name, ip=str(e.ip)))
        if qtype in ("SRV", "ANY"):
            target = f"{unit_label(e.unit)}.{e.service}{suffix}"
            out += [Answer("SRV", name, port=port, target=target) for port, _ in e.ports]
    return NOERROR, out


def additional(answers: Iterable[Answer], endpoints: Iterable[Published], domain: str) -> list[Answer]:
    """The A records of SRV targets (so a client needs no second question)."""
    out: list[Answer] = []
    seen: set[str] = set()
    for a in answers:
        if a.rtype == "SRV" and a.target not in seen:
            seen.add(a.target)
            out += answer(a.target, "A", endpoints, domain)[1]
    return out
