"""Operators' objects (netd/v1): TenantNetwork, Endpoint, ServiceFunction and ServiceChain, parsed
and validated whole.

Documents are Kubernetes-style: ``apiVersion: netd/v1``, ``kind``, ``metadata.name`` (a DNS label),
``spec``. Each kind is a pydantic model (unknown fields refused, types strict, ranges checked); the
cross-references between objects (an Endpoint's tenant, unique VNIs, addresses inside subnets, no
address twice) are checked over the whole set an apply would leave, by ``check_objects``. Every
problem is an Issue naming the document (its index) and the field path; the YAML adapter adds the
file and the line. Nothing here reads files or etcd.

A kind slots in by adding a model to KINDS and its rules to check_objects (the chains' rules are
in check_chains).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

API_VERSION = "netd/v1"
#: A DNS label (RFC 1123), as Kubernetes names are: it appears in etcd keys and port names.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
MAX_VNI = (1 << 24) - 1



def _dns_label(value: str) -> str:
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(f"expected a DNS label (a-z, 0-9 and '-', at most 63, starting and ending with a letter "
                         f"or digit), found {value!r}")
    return value


Name = Annotated[StrictStr, AfterValidator(_dns_label)]

#: a network namespace's name as `ip netns add` makes it (a file of /run/netns): never a path, never
#: "." or "..", so a spec cannot name the host's own namespace (/proc/1/ns/net) or any other file
NETNS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$"
#: a Docker container's name or id, as Docker allows them ([a-zA-Z0-9][a-zA-Z0-9_.-]+)
CONTAINER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$"


def _netns_name(value: str) -> str:
    if not re.fullmatch(NETNS_PATTERN, value):
        raise ValueError(f"expected a network namespace's name (as `ip netns list` shows it: letters, digits, "
                         f"'_', '.' and '-', not a path), found {value!r}")
    return value


def _container_name(value: str) -> str:
    if not re.fullmatch(CONTAINER_PATTERN, value):
        raise ValueError(f"expected a Docker container's name or id (letters, digits, '_', '.' and '-'), "
                         f"found {value!r}")
    return value


def interface_name(tenant: str) -> str:
    """An endpoint's default interface inside its target: ``t-<tenant>``, cut to the kernel's 15 characters."""
    return f"t-{tenant}"[:15]


#: an interface name as the kernel takes it (at most 15 characters, no '/', no spaces)
IFNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$"


def _ifname(value: str) -> str:
    if not re.fullmatch(IFNAME_PATTERN, value):
        raise ValueError(f"expected an interface name (letters, digits, '_', '.' and '-', at most 15), found {value!r}")
    return value
Path = tuple[str | int, ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metadata(_Strict):
    name: Name
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)


def _ipv4_network(value: Any) -> ipaddress.IPv4Network:
    if not isinstance(value, str):
        raise ValueError(f"expected an IPv4 CIDR such as 10.20.0.0/24, found {value!r}")
    try:
        net = ipaddress.IPv4Network(value)
    except ValueError as exc:
        raise ValueError(f"expected an IPv4 CIDR such as 10.20.0.0/24, found {value!r} ({exc})") from None
    if not 8 <= net.prefixlen <= 30:
        raise ValueError(f"expected a prefix length of 8 to 30, found /{net.prefixlen}")
    return net


def _ipv4_address(value: Any) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise ValueError(f"expected an IPv4 address, found {value!r}")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"expected an IPv4 address, found {value!r}") from None


class TenantNetworkSpec(_Strict):
    vni: Annotated[StrictInt, Field(ge=1, le=MAX_VNI)]
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None = None
    mtu: Annotated[StrictInt, Field(ge=576, le=9000)] | None = None
    description: StrictStr = ""

    _subnet = field_validator("subnet", mode="before")(_ipv4_network)

    @field_validator("gateway", mode="before")
    @classmethod
    def _gateway(cls, value: Any, info: ValidationInfo) -> Any:
        """An address of the subnet (checked here, not after the model, so the error names
        spec.gateway and its line; the subnet is validated first, being declared first)."""
        if value is None:
            return None
        gateway = _ipv4_address(value)
        subnet = info.data.get("subnet")
        if subnet is not None and not is_host_of(gateway, subnet):
            raise ValueError(f"{gateway} is not a host address of subnet {subnet}")
        return gateway


class EndpointSpec(_Strict):
    tenant: Name
    host: Name
    container: Annotated[StrictStr, AfterValidator(_container_name)] | None = None
    netns: Annotated[StrictStr, AfterValidator(_netns_name)] | None = None
    ip: ipaddress.IPv4Address | None = None
    #: its name inside the target (default t-<tenant>): a service function's two legs need two
    interface: Annotated[StrictStr, AfterValidator(_ifname)] | None = None

    @field_validator("ip", mode="before")
    @classmethod
    def _ip(cls, value: Any) -> Any:
        return None if value is None else _ipv4_address(value)

    @property
    def inner(self) -> str:
        """The interface's name inside the target."""
        return self.interface or interface_name(self.tenant)

    @model_validator(mode="after")
    def _one_target(self) -> EndpointSpec:
        if (self.container is None) == (self.netns is None):
            raise ValueError("exactly one of container and netns is required")
        return self

    @property
    def target(self) -> str:
        return f"container {self.container}" if self.container is not None else f"netns {self.netns}"


class TenantNetwork(_Strict):
    apiVersion: Literal["netd/v1"]  # noqa: N815 - the documents' field names
    kind: Literal["TenantNetwork"]
    metadata: Metadata
    spec: TenantNetworkSpec


class Endpoint(_Strict):
    apiVersion: Literal["netd/v1"]  # noqa: N815
    kind: Literal["Endpoint"]
    metadata: Metadata
    spec: EndpointSpec


class ServiceFunctionSpec(_Strict):
    """A transparent function (a firewall, a monitor) in one target with two legs, each an Endpoint
    of the tenant: classified frames enter by ``ingress`` and come back by ``egress`` (replies of a
    symmetric chain the other way), unchanged or dropped."""

    tenant: Name
    ingress: Name
    egress: Name
    description: StrictStr = ""


class ServiceFunction(_Strict):
    apiVersion: Literal["netd/v1"]  # noqa: N815
    kind: Literal["ServiceFunction"]
    metadata: Metadata
    spec: ServiceFunctionSpec


MAX_HOPS, MAX_SPREAD, MAX_CHAIN_PRIORITY = 16, 16, 1000
PROTOCOLS = ("tcp", "udp", "icmp")


def _port_range(value: Any) -> tuple[int, int]:
    """80 or "8000-8080" -> (low, high)."""
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and re.fullmatch(r"\d{1,5}(-\d{1,5})?", value.strip()):
        a, _, b = value.strip().partition("-")
        low, high = int(a), int(b or a)
    else:
        raise ValueError(f"expected a port (80) or a range (\"8000-8080\"), found {value!r}")
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"expected ports 1 to 65535, low to high, found {value!r}")
    return low, high


def _selector(value: Any) -> Any:
    """An endpoint's name, or an IPv4 CIDR (an address alone is its /32)."""
    if not isinstance(value, str):
        raise ValueError(f"expected an endpoint's name or an IPv4 CIDR, found {value!r}")
    if re.fullmatch(r"[0-9./]+", value):
        try:
            return ipaddress.IPv4Network(value)
        except ValueError as exc:
            raise ValueError(f"expected an IPv4 CIDR such as 10.20.0.0/28, found {value!r} ({exc})") from None
    return _dns_label(value)


Selector = Annotated[ipaddress.IPv4Network | StrictStr, BeforeValidator(_selector)]
PortRange = Annotated[tuple[int, int], BeforeValidator(_port_range),
                      PlainSerializer(lambda r: r[0] if r[0] == r[1] else f"{r[0]}-{r[1]}")]


class Classifier(_Strict):
    """Which of the tenant's IPv4 traffic a chain takes: every field given must match (none: all)."""

    source: Selector | None = None
    destination: Selector | None = None
    protocol: Literal["tcp", "udp", "icmp"] | None = None
    sourcePorts: list[PortRange] = Field(default_factory=list, max_length=16)  # noqa: N815
    destinationPorts: list[PortRange] = Field(default_factory=list, max_length=16)  # noqa: N815

    @model_validator(mode="after")
    def _ports_need_a_protocol(self) -> Classifier:
        if (self.sourcePorts or self.destinationPorts) and self.protocol not in ("tcp", "udp"):
            raise ValueError("ports need protocol tcp or udp")
        return self

    def reversed(self) -> Classifier:
        """What the replies of this traffic look like."""
        return Classifier.model_construct(source=self.destination, destination=self.source, protocol=self.protocol,
                                          sourcePorts=list(self.destinationPorts),
                                          destinationPorts=list(self.sourcePorts))


def _hop(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Hop = Annotated[list[Name], BeforeValidator(_hop), Field(min_length=1, max_length=MAX_SPREAD)]


class ServiceChainSpec(_Strict):
    tenant: Name
    classifier: Classifier
    #: in order; a hop is one ServiceFunction's name, or a list of several (flows spread over them)
    hops: Annotated[list[Hop], Field(min_length=1, max_length=MAX_HOPS)]
    symmetric: StrictBool = False
    onHopDown: Literal["drop", "bypass"] = "drop"  # noqa: N815
    #: the higher wins where two chains' classifiers meet (equal ones there are refused)
    priority: Annotated[StrictInt, Field(ge=0, le=MAX_CHAIN_PRIORITY)] = 0
    description: StrictStr = ""

    @field_validator("hops")
    @classmethod
    def _once_each(cls, hops: list[list[str]]) -> list[list[str]]:
        seen: set[str] = set()
        for hop in hops:
            for sf in hop:
                if sf in seen:
                    raise ValueError(f"service function {sf} is in the chain twice (a frame could not tell "
                                     "which of its visits it is on)")
                seen.add(sf)
        return hops


class ServiceChain(_Strict):
    apiVersion: Literal["netd/v1"]  # noqa: N815
    kind: Literal["ServiceChain"]
    metadata: Metadata
    spec: ServiceChainSpec


SpecObject = TenantNetwork | Endpoint | ServiceFunction | ServiceChain
KINDS: Mapping[str, type[SpecObject]] = {"TenantNetwork": TenantNetwork, "Endpoint": Endpoint,
                                         "ServiceFunction": ServiceFunction, "ServiceChain": ServiceChain}
#: How netctl get names each kind (netctl get tenants, get endpoints, get sfs, get chains).
KIND_ALIASES = {"tenantnetwork": "TenantNetwork", "tenantnetworks": "TenantNetwork", "tenant": "TenantNetwork",
                "tenants": "TenantNetwork", "endpoint": "Endpoint", "endpoints": "Endpoint",
                "servicefunction": "ServiceFunction", "servicefunctions": "ServiceFunction", "sf": "ServiceFunction",
                "sfs": "ServiceFunction", "servicechain": "ServiceChain", "servicechains": "ServiceChain",
                "chain": "ServiceChain", "chains": "ServiceChain"}


def is_host_of(ip: ipaddress.IPv4Address, subnet: ipaddress.IPv4Network) -> bool:
    return ip in subnet and ip not in (subnet.network_address, subnet.broadcast_address)


@dataclass(frozen=True, order=True)
class Issue:
    """One problem: in document ``index`` (None: not tied to one), at field ``path``."""

    index: int | None
    path: Path
    message: str
    kind: str = ""
    name: str = ""
    related: int | None = None  # another document the problem is about (the first of a duplicate)

    @property
    def field(self) -> str:
        return ".".join(str(p) for p in self.path)


def object_key(obj: SpecObject) -> tuple[str, str]:
    return obj.kind, obj.metadata.name


def parse_object(raw: Any, index: int = 0) -> tuple[SpecObject | None, list[Issue]]:
    """One decoded document -> its object, or the issues that make it none (all of them)."""
    if not isinstance(raw, Mapping):
        return None, [Issue(index, (), f"expected a mapping with apiVersion, kind, metadata and spec, found "
                                        f"{type(raw).__name__}")]
    kind, name = raw.get("kind"), _name_of(raw)
    if raw.get("apiVersion") != API_VERSION:
        return None, [Issue(index, ("apiVersion",), f"expected {API_VERSION}, found {raw.get('apiVersion')!r}",
                            str(kind or ""), name)]
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        return None, [Issue(index, ("kind",), f"unknown kind {kind!r} (known: {', '.join(sorted(KINDS))})",
                            str(kind or ""), name)]
    try:
        return model.model_validate(raw), []
    except ValidationError as exc:
        return None, [Issue(index, tuple(err["loc"]), _message(err), str(kind), name)
                      for err in exc.errors(include_url=False)]


def _name_of(raw: Mapping[str, Any]) -> str:
    meta = raw.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) else ""


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "required"
    if "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], Mapping):
        msg += f", found {err['input']!r}"
    return msg


def check_objects(new: Sequence[tuple[int, SpecObject]], stored: Iterable[SpecObject],
                  cluster_network: ipaddress.IPv4Network | None = None) -> list[Issue]:
    """The rules between objects, over the set an apply would leave: the ``new`` ones (with their
    document index) replacing the ``stored`` ones of the same kind and name.

    * a kind and name once per apply;
    * a TenantNetwork's VNI unique among all of them; its subnet not overlapping the cluster's
      overlay Network (a container on both could not tell them apart); two tenants may overlap;
    * an Endpoint's tenant exists; its ip a host address of the tenant's subnet and no other
      endpoint of that tenant's; no other endpoint in its target (host and netns or container)
      with its interface name (``t-<tenant>``, cut to 15 characters): one would delete the other's.
      Its ip may be the tenant's gateway, given explicitly: that endpoint is the tenant's router (the
      other endpoints' default route goes to it); allocation never picks it.
    """
    issues: list[Issue] = []
    seen: dict[tuple[str, str], int] = {}
    for index, obj in new:
        key = object_key(obj)
        if key in seen:
            issues.append(Issue(index, ("metadata", "name"), f"{obj.kind} {obj.metadata.name!r} is defined twice",
                                *key, related=seen[key]))
        seen.setdefault(key, index)
    replaced = set(seen)
    union: list[tuple[int | None, SpecObject]] = [(None, o) for o in stored if object_key(o) not in replaced]
    union += [(i, o) for i, o in new]
    tenants = {o.metadata.name: o for _, o in union if isinstance(o, TenantNetwork)}
    vnis: dict[int, list[tuple[int | None, TenantNetwork]]] = {}
    for where, obj in union:
        if isinstance(obj, TenantNetwork):
            vnis.setdefault(obj.spec.vni, []).append((where, obj))
            if cluster_network is not None and obj.spec.subnet.overlaps(cluster_network) and where is not None:
                issues.append(Issue(where, ("spec", "subnet"), f"{obj.spec.subnet} overlaps the cluster network "
                                    f"{cluster_network} (a container on both could not tell them apart)",
                                    *object_key(obj)))
    for vni, holders in sorted(vnis.items()):
        for where, obj in holders:
            others = sorted(o.metadata.name for i, o in holders if o is not obj)
            if others and where is not None:
                issues.append(Issue(where, ("spec", "vni"), f"VNI {vni} is also tenant network "
                                    f"{', '.join(others)}'s: every tenant needs its own", *object_key(obj)))
    addresses: dict[tuple[str, ipaddress.IPv4Address], list[str]] = {}
    for where, obj in union:
        if not isinstance(obj, Endpoint):
            continue
        tenant = tenants.get(obj.spec.tenant)
        if tenant is None:
            if where is not None:
                issues.append(Issue(where, ("spec", "tenant"), f"no TenantNetwork {obj.spec.tenant!r} (neither in "
                                    "these files nor stored)", *object_key(obj)))
            continue
        ip = obj.spec.ip
        if ip is None:
            continue
        addresses.setdefault((tenant.metadata.name, ip), []).append(obj.metadata.name)
        if where is None:
            continue
        if not is_host_of(ip, tenant.spec.subnet):
            issues.append(Issue(where, ("spec", "ip"), f"{ip} is not a host address of tenant "
                                f"{tenant.metadata.name}'s subnet {tenant.spec.subnet}", *object_key(obj)))
    interfaces: dict[tuple[str, str, str], list[str]] = {}  # (host, target, interface) -> endpoints
    for _, obj in union:
        if isinstance(obj, Endpoint):
            interfaces.setdefault((obj.spec.host, obj.spec.target, obj.spec.inner), []).append(obj.metadata.name)
    for index, obj in new:
        if isinstance(obj, Endpoint):
            iface = obj.spec.inner
            others = sorted(n for n in interfaces[(obj.spec.host, obj.spec.target, iface)] if n != obj.metadata.name)
            if others:
                field = "netns" if obj.spec.netns is not None else "container"
                field = "interface" if obj.spec.interface else field
                issues.append(Issue(index, ("spec", field), f"endpoint {', '.join(others)} is interface {iface} in "
                                    f"{obj.spec.target} on host {obj.spec.host} too: one interface name per target "
                                    f"(give the endpoints different spec.interface)", *object_key(obj)))
    for index, obj in new:
        if isinstance(obj, Endpoint) and obj.spec.ip is not None:
            users = addresses.get((obj.spec.tenant, obj.spec.ip), [])
            others = sorted(n for n in users if n != obj.metadata.name)
            if others:
                issues.append(Issue(index, ("spec", "ip"), f"{obj.spec.ip} is also endpoint {', '.join(others)}'s "
                                    f"in tenant {obj.spec.tenant}", *object_key(obj)))
    issues += check_chains(union, tenants)
    return sorted(issues, key=lambda i: (i.index if i.index is not None else -1, i.path, i.message))


def check_chains(union: Sequence[tuple[int | None, SpecObject]], tenants: Mapping[str, TenantNetwork]) -> list[Issue]:
    """The rules of service functions and chains, over the set an apply would leave (``where`` None:
    stored and not replaced, so not reported):

    * a ServiceFunction's tenant exists; its legs are two different endpoints of that tenant, in one
      target on one host, and legs of no other function;
    * a ServiceChain's tenant exists; its hops are functions of that tenant; its classifier's
      CIDRs inside the tenant's subnet, its endpoint names endpoints of the tenant that are not legs;
    * no two chains of a tenant at one priority take the same traffic (their classifiers, and a
      symmetric chain's replies, meet): which one a frame is in would be OVS's choice, not the operator's.
    """
    issues: list[Issue] = []
    endpoints = {o.metadata.name: o for _, o in union if isinstance(o, Endpoint)}
    sfs = {o.metadata.name: o for _, o in union if isinstance(o, ServiceFunction)}
    legs: dict[str, list[str]] = {}
    for sf in sfs.values():
        for leg in {sf.spec.ingress, sf.spec.egress}:
            legs.setdefault(leg, []).append(sf.metadata.name)
    for where, obj in union:
        if where is None:
            continue
        key = object_key(obj)
        if isinstance(obj, ServiceFunction):
            s = obj.spec
            if s.tenant not in tenants:
                issues.append(Issue(where, ("spec", "tenant"), f"no TenantNetwork {s.tenant!r} (neither in these "
                                    "files nor stored)", *key))
            found = {}
            for field in ("ingress", "egress"):
                name = getattr(s, field)
                ep = endpoints.get(name)
                if ep is None:
                    issues.append(Issue(where, ("spec", field), f"no Endpoint {name!r} (neither in these files nor "
                                        "stored)", *key))
                elif ep.spec.tenant != s.tenant:
                    issues.append(Issue(where, ("spec", field), f"endpoint {name} is in tenant {ep.spec.tenant}, "
                                        f"not {s.tenant}", *key))
                else:
                    found[field] = ep
                    others = sorted(n for n in legs.get(name, []) if n != obj.metadata.name)
                    if others:
                        issues.append(Issue(where, ("spec", field), f"endpoint {name} is a leg of service function "
                                            f"{', '.join(others)} too: a leg belongs to one function", *key))
            if s.ingress == s.egress:
                issues.append(Issue(where, ("spec", "egress"), f"the ingress and egress legs are one endpoint "
                                    f"({s.ingress}): a function needs two", *key))
            elif len(found) == 2 and (found["ingress"].spec.host, found["ingress"].spec.target) != \
                    (found["egress"].spec.host, found["egress"].spec.target):
                i, e = found["ingress"].spec, found["egress"].spec
                issues.append(Issue(where, ("spec", "egress"), f"the legs are in two places ({i.target} on "
                                    f"{i.host}, {e.target} on {e.host}): a function's legs are in one target", *key))
        elif isinstance(obj, ServiceChain):
            issues += _chain_issues(where, obj, tenants.get(obj.spec.tenant), endpoints, sfs, legs)
    chains = sorted(((w, o) for w, o in union if isinstance(o, ServiceChain)), key=lambda x: x[1].metadata.name)
    for n, (wa, a) in enumerate(chains):
        for wb, b in chains[n + 1:]:
            if a.spec.tenant != b.spec.tenant or a.spec.priority != b.spec.priority or (wa is None and wb is None):
                continue
            meet = _chains_meet(a, b, endpoints)
            if meet:
                for where, obj, other in ((wa, a, b), (wb, b, a)):
                    if where is not None:
                        issues.append(Issue(where, ("spec", "classifier"), f"{meet.replace('@', other.metadata.name)}"
                                            f" at priority {obj.spec.priority}: give one a higher spec.priority, or "
                                            "narrow a classifier", *object_key(obj)))
    return issues


def _chain_issues(where: int, obj: ServiceChain, tenant: TenantNetwork | None, endpoints: Mapping[str, Endpoint],
                  sfs: Mapping[str, ServiceFunction], legs: Mapping[str, list[str]]) -> list[Issue]:
    s, key = obj.spec, object_key(obj)
    issues: list[Issue] = []
    if tenant is None:
        issues.append(Issue(where, ("spec", "tenant"), f"no TenantNetwork {s.tenant!r} (neither in these files nor "
                            "stored)", *key))
    if s.symmetric and _same_both_ways(s.classifier, endpoints):
        issues.append(Issue(where, ("spec", "symmetric"), "the classifier takes the same traffic both ways (its "
                            "source and destination, and its source and destination ports, are the same), so "
                            "replies cannot be told from traffic: narrow one side, or set symmetric: false", *key))
    for i, hop in enumerate(s.hops):
        for j, name in enumerate(hop):
            sf = sfs.get(name)
            if sf is None:
                issues.append(Issue(where, ("spec", "hops", i, j), f"no ServiceFunction {name!r} (neither in these "
                                    "files nor stored)", *key))
            elif sf.spec.tenant != s.tenant:
                issues.append(Issue(where, ("spec", "hops", i, j), f"service function {name} is in tenant "
                                    f"{sf.spec.tenant}, not {s.tenant}", *key))
    for field in ("source", "destination"):
        sel = getattr(s.classifier, field)
        path = ("spec", "classifier", field)
        if isinstance(sel, ipaddress.IPv4Network):
            if tenant is not None and not sel.subnet_of(tenant.spec.subnet):
                issues.append(Issue(where, path, f"{sel} is not inside tenant {s.tenant}'s subnet "
                                    f"{tenant.spec.subnet}", *key))
        elif sel is not None:
            ep = endpoints.get(sel)
            if ep is None or ep.spec.tenant != s.tenant:
                issues.append(Issue(where, path, f"no Endpoint {sel!r} in tenant {s.tenant}", *key))
            elif sel in legs:
                issues.append(Issue(where, path, f"endpoint {sel} is a leg of service function "
                                    f"{', '.join(sorted(legs[sel]))}: legs carry chained traffic, not their own", *key))
    return issues


def _chains_meet(a: ServiceChain, b: ServiceChain, endpoints: Mapping[str, Endpoint]) -> str:
    """Why some frame would match both chains ('@' for b's name), or "" when none would."""
    ways = [(a.spec.classifier, "traffic"), *([(a.spec.classifier.reversed(), "replies")] if a.spec.symmetric else [])]
    theirs = [(b.spec.classifier, "traffic"), *([(b.spec.classifier.reversed(), "replies")] if b.spec.symmetric
                                                else [])]
    for ca, wa in ways:
        for cb, wb in theirs:
            if classifiers_meet(ca, cb, endpoints):
                return f"its {wa} {'are' if wa == 'replies' else 'is'} also chain @'s {wb}"
    return ""


def classifiers_meet(a: Classifier, b: Classifier, endpoints: Mapping[str, Endpoint]) -> bool:
    """Whether one frame could match both (an endpoint without a given address could be anywhere)."""
    def sel_meet(x: Any, y: Any) -> bool:
        if x is None or y is None:
            return True
        if isinstance(x, str) and isinstance(y, str):  # two endpoints: one address each, never shared
            return x == y
        nx, ny = _as_network(x, endpoints), _as_network(y, endpoints)
        # an endpoint whose address is not given may be claimed anywhere in the subnet
        return nx is None or ny is None or nx.overlaps(ny)

    def ports_meet(x: list[tuple[int, int]], y: list[tuple[int, int]]) -> bool:
        return not x or not y or any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in x for lo2, hi2 in y)

    if a.protocol is not None and b.protocol is not None and a.protocol != b.protocol:
        return False
    return (sel_meet(a.source, b.source) and sel_meet(a.destination, b.destination)
            and ports_meet(a.sourcePorts, b.sourcePorts) and ports_meet(a.destinationPorts, b.destinationPorts))


def _same_both_ways(c: Classifier, endpoints: Mapping[str, Endpoint]) -> bool:
    """Whether ``c`` and its reversal take the same frames (a symmetric chain could not tell its
    replies; where they only partly meet, a chain's traffic outranks its replies)."""
    def norm(sel: Any) -> Any:  # an endpoint as its address (or its name, while it has none)
        return sel if sel is None else (_as_network(sel, endpoints) or sel)

    return norm(c.source) == norm(c.destination) and sorted(c.sourcePorts) == sorted(c.destinationPorts)


def _as_network(sel: Any, endpoints: Mapping[str, Endpoint]) -> ipaddress.IPv4Network | None:
    if isinstance(sel, ipaddress.IPv4Network):
        return sel
    ep = endpoints.get(sel)
    return ipaddress.IPv4Network(ep.spec.ip) if ep is not None and ep.spec.ip is not None else None


def to_document(obj: SpecObject) -> dict[str, Any]:
    """The object as stored and shown (JSON-ready, defaults left out)."""
    return obj.model_dump(mode="json", exclude_defaults=True)
