"""What an apply or a delete of netd/v1 objects changes in etcd: a pure plan, and its diff as text.

The store holds one key per object (the document as the operator wrote it) and one claim key per
endpoint address (``ipam/<tenant>/<ip>`` -> endpoint name): the claims are what keep two endpoints
off one address, since each new claim is created only if absent, in the same etcd transaction as
the objects. An endpoint without ``spec.ip`` keeps the address it holds, or gets the lowest free
host address of its tenant's subnet (never the gateway).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from netd.model.specs import (
    Endpoint,
    ServiceChain,
    ServiceFunction,
    SpecObject,
    TenantNetwork,
    is_host_of,
    object_key,
    to_document,
)

ObjKey = tuple[str, str]  # (kind, name)
ClaimKey = tuple[str, ipaddress.IPv4Address]  # (tenant, ip)


@dataclass(frozen=True)
class Stored:
    """What the store holds: the objects (with the mod_revision each key had) and the claims."""

    objects: Mapping[ObjKey, tuple[SpecObject, int]] = field(default_factory=dict)
    claims: Mapping[ClaimKey, tuple[str, int]] = field(default_factory=dict)  # -> (endpoint, mod_revision)
    revision: int = 0
    #: the mod_revision of the store's generation key (0: none yet), which every commit writes: a
    #: commit from this read is refused once any other commit came between
    generation: int = 0

    def address_of(self, endpoint: str) -> ipaddress.IPv4Address | None:
        return next((ip for (_, ip), (name, _) in self.claims.items() if name == endpoint), None)

    def endpoints_of(self, tenant: str) -> list[Endpoint]:
        return sorted((o for o, _ in self.objects.values() if isinstance(o, Endpoint) and o.spec.tenant == tenant),
                      key=lambda o: o.metadata.name)


@dataclass(frozen=True)
class Change:
    action: str  # "add", "change", "delete"
    key: ObjKey
    before: SpecObject | None
    after: SpecObject | None


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...] = ()
    add_claims: Mapping[ClaimKey, str] = field(default_factory=dict)
    drop_claims: tuple[ClaimKey, ...] = ()
    unchanged: tuple[ObjKey, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.changes or self.add_claims or self.drop_claims)


KIND_WORDS = {"TenantNetwork": ("tenant network", "tenant networks"), "Endpoint": ("endpoint", "endpoints"),
              "ServiceFunction": ("service function", "service functions"),
              "ServiceChain": ("service chain", "service chains")}


def users_of(key: ObjKey, objects: Iterable[SpecObject]) -> set[ObjKey]:
    """The objects that name ``key``: a tenant's endpoints, functions and chains; an endpoint's
    function (a leg) and chains (in a classifier); a function's chains."""
    kind, name = key
    out: set[ObjKey] = set()
    for o in objects:
        if kind == "TenantNetwork" and isinstance(o, Endpoint | ServiceFunction | ServiceChain):
            hit = o.spec.tenant == name
        elif kind == "Endpoint" and isinstance(o, ServiceFunction):
            hit = name in (o.spec.ingress, o.spec.egress)
        elif kind == "Endpoint" and isinstance(o, ServiceChain):
            hit = name in (o.spec.classifier.source, o.spec.classifier.destination)
        elif kind == "ServiceFunction" and isinstance(o, ServiceChain):
            hit = any(name in hop for hop in o.spec.hops)
        else:
            hit = False
        if hit:
            out.add(object_key(o))
    return out


def describe(keys: Iterable[ObjKey]) -> str:
    """``endpoints a, b; service chains web``"""
    by: dict[str, list[str]] = {}
    for kind, name in sorted(keys):
        by.setdefault(kind, []).append(name)
    return "; ".join(f"{KIND_WORDS[k][1]} {', '.join(v)}" for k, v in sorted(by.items(), key=lambda kv: list(
        KIND_WORDS).index(kv[0])))


class PlanError(ValueError):
    """The plan cannot be made (an address pool full, a subnet changed under its endpoints)."""


def endpoint_mac(ip: ipaddress.IPv4Address) -> str:
    """A locally administered unicast MAC from the address (0a:58:<ip>, as OVN-Kubernetes does):
    unique within a tenant because the address is."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in ip.packed)


def free_address(tenant: TenantNetwork, taken: Iterable[ipaddress.IPv4Address]) -> ipaddress.IPv4Address:
    """The lowest host address of the tenant's subnet that is neither the gateway nor taken."""
    used = set(taken) | ({tenant.spec.gateway} if tenant.spec.gateway else set())
    for ip in tenant.spec.subnet.hosts():
        if ip not in used:
            return ip
    raise PlanError(f"tenant {tenant.metadata.name}'s subnet {tenant.spec.subnet} has no free address left")


def plan_apply(desired: Sequence[SpecObject], stored: Stored, prune: bool = False) -> Plan:
    """Objects to add, change or (with prune) delete, and the address claims that follow. Raises
    PlanError when addresses do not work out, or a prune would take a tenant from its endpoints.

    Prune deletes the stored objects the files do not name, of the kinds the files hold (as kubectl
    scopes its prune): a file of tenant networks prunes tenants, never the endpoints `netctl attach`
    made. A tenant that endpoints still use is not pruned: the apply is refused."""
    want = {object_key(o): o for o in desired}
    changes: list[Change] = []
    unchanged: list[ObjKey] = []
    for key, obj in sorted(want.items()):
        before = stored.objects.get(key)
        if before is None:
            changes.append(Change("add", key, None, obj))
        elif to_document(before[0]) != to_document(obj):
            changes.append(Change("change", key, before[0], obj))
        else:
            unchanged.append(key)
    if prune:
        kinds = {kind for kind, _ in want}
        pruned = [Change("delete", key, obj, None) for key, (obj, _) in sorted(stored.objects.items())
                  if key not in want and key[0] in kinds]
        gone = {c.key for c in pruned}
        staying = [o for k, (o, _) in stored.objects.items() if k not in gone and k not in want] + list(want.values())
        for kind, name in sorted(gone):
            users = users_of((kind, name), staying)
            if users:
                verb = "detach them" if {k for k, _ in users} == {"Endpoint"} else "delete them"
                raise PlanError(f"--prune would delete {KIND_WORDS[kind][0]} {name}, which {describe(users)} "
                                f"use: {verb} first, or keep {name} in the files")
        changes += pruned
    add, drop = _claims(changes, stored, want)
    return Plan(tuple(changes), add, drop, tuple(unchanged))


def plan_delete(keys: Sequence[ObjKey], stored: Stored, force: bool = False) -> Plan:
    """Delete these objects; a tenant still used by endpoints only with force (which deletes those
    endpoints too). Raises PlanError naming what is missing or still in use."""
    missing = [f"{k} {n}" for k, n in keys if (k, n) not in stored.objects]
    if missing:
        raise PlanError(f"no such object: {', '.join(missing)}")
    doomed = set(keys)
    objects = [o for o, _ in stored.objects.values()]
    todo = list(keys)
    while todo:  # with force, what uses a doomed object is doomed too (a tenant's chains, functions, endpoints)
        kind, name = todo.pop(0)
        users = users_of((kind, name), (o for o in objects if object_key(o) not in doomed))
        if users and not force:
            verb = "detach them" if {k for k, _ in users} == {"Endpoint"} else "delete them"
            raise PlanError(f"{KIND_WORDS[kind][0]} {name} is used by {describe(users)}: {verb} first, or delete "
                            f"with --force (which deletes them too)")
        doomed |= users
        todo += sorted(users)
    changes = [Change("delete", key, stored.objects[key][0], None) for key in sorted(doomed)]
    add, drop = _claims(changes, stored, {})
    return Plan(tuple(changes), add, drop)


def _claims(changes: Sequence[Change], stored: Stored,
            want: Mapping[ObjKey, SpecObject]) -> tuple[dict[ClaimKey, str], tuple[ClaimKey, ...]]:
    """The claims an endpoint change needs: its address (given, kept, or the lowest free), the old
    one released when it moves, every one of a deleted endpoint released."""
    tenants = {o.metadata.name: o for o, _ in stored.objects.values() if isinstance(o, TenantNetwork)}
    tenants.update({o.metadata.name: o for o in want.values() if isinstance(o, TenantNetwork)})
    deleted = {c.key for c in changes if c.action == "delete"}
    for c in changes:  # a tenant whose subnet changes must have no endpoints it would strand
        if c.action == "change" and isinstance(c.after, TenantNetwork) and isinstance(c.before, TenantNetwork) \
                and c.after.spec.subnet != c.before.spec.subnet:
            stranded = [e.metadata.name for e in stored.endpoints_of(c.key[1])
                        if ("Endpoint", e.metadata.name) not in deleted]
            if stranded:
                raise PlanError(f"tenant network {c.key[1]} changes its subnet from {c.before.spec.subnet} to "
                                f"{c.after.spec.subnet} but endpoints {', '.join(stranded)} use it: detach them first")
    owner = {claim: name for claim, (name, _) in stored.claims.items()}
    add: dict[ClaimKey, str] = {}
    drop: set[ClaimKey] = set()
    auto: list[tuple[str, TenantNetwork]] = []
    # first every release (a deleted endpoint's addresses, a moved one's old one), then the claims:
    # an address released in a plan may be taken in the same plan, whatever the names' order
    claiming: list[tuple[str, Endpoint, TenantNetwork]] = []
    for c in changes:
        if c.key[0] != "Endpoint":
            continue
        name = c.key[1]
        held = {claim for claim, who in owner.items() if who == name}
        if c.action == "delete":
            drop |= held
            continue
        ep = c.after
        assert isinstance(ep, Endpoint)
        tenant = tenants.get(ep.spec.tenant)
        if tenant is None:
            raise PlanError(f"endpoint {name}: no tenant network {ep.spec.tenant}")
        keep = {(t, ip) for t, ip in held if t == ep.spec.tenant and (ep.spec.ip is None or ip == ep.spec.ip)
                and is_host_of(ip, tenant.spec.subnet)}
        drop |= held - keep
        if not keep:
            claiming.append((name, ep, tenant))
    for name, ep, tenant in claiming:
        if ep.spec.ip is None:
            auto.append((name, tenant))
            continue
        claim = (ep.spec.tenant, ep.spec.ip)
        other = add.get(claim) or (owner.get(claim) if claim not in drop else None)
        if other is not None and other != name:
            raise PlanError(f"endpoint {name}: {ep.spec.ip} is already endpoint {other}'s in tenant {ep.spec.tenant}")
        add[claim] = name
    for name, tenant in auto:  # after the addresses asked for, so none is handed out twice
        t = tenant.metadata.name
        taken = {ip for tt, ip in owner if tt == t and (tt, ip) not in drop} | {ip for tt, ip in add if tt == t}
        add[(t, free_address(tenant, taken))] = name
    # a claim released and taken again in one plan is one put (a transaction names a key once)
    return add, tuple(sorted(drop - set(add)))


def render_plan(plan: Plan) -> str:
    """The diff, one line per object and one per changed field:
    ``+ TenantNetwork blue``, ``~ TenantNetwork red`` with ``    spec.vni: 5001 -> 5002``, ``- Endpoint web1``."""
    lines: list[str] = []
    for c in plan.changes:
        mark = {"add": "+", "change": "~", "delete": "-"}[c.action]
        lines.append(f"{mark} {c.key[0]} {c.key[1]}")
        if c.action == "change" and c.before is not None and c.after is not None:
            for path, old, new in _field_changes(to_document(c.before), to_document(c.after)):
                lines.append(f"    {path}: {_show(old)} -> {_show(new)}")
    for (tenant, ip), name in sorted(plan.add_claims.items()):
        lines.append(f"+ address {ip} in tenant {tenant} for endpoint {name}")
    for tenant, ip in plan.drop_claims:
        lines.append(f"- address {ip} in tenant {tenant}")
    return "\n".join(lines) if lines else "no changes"


def _field_changes(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(a) | set(b)):
            out += _field_changes(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{path}.{k}" if path else k)
        return out
    return [] if a == b else [(path, a, b)]


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value) if isinstance(value, str) else str(value)
