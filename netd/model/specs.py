"""Operators' objects (netd/v1): TenantNetwork and Endpoint, parsed and validated whole.

Documents are Kubernetes-style: ``apiVersion: netd/v1``, ``kind``, ``metadata.name`` (a DNS label),
``spec``. Each kind is a pydantic model (unknown fields refused, types strict, ranges checked); the
cross-references between objects (an Endpoint's tenant, unique VNIs, addresses inside subnets, no
address twice) are checked over the whole set an apply would leave, by ``check_objects``. Every
problem is an Issue naming the document (its index) and the field path; the YAML adapter adds the
file and the line. Nothing here reads files or etcd.

New kinds (ServiceFunction, ServiceChain) slot in by adding a model to KINDS and their rules to
check_objects.
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
    ConfigDict,
    Field,
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
    """The endpoint's interface inside its target: ``t-<tenant>``, cut to the kernel's 15 characters."""
    return f"t-{tenant}"[:15]
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

    @field_validator("ip", mode="before")
    @classmethod
    def _ip(cls, value: Any) -> Any:
        return None if value is None else _ipv4_address(value)

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


SpecObject = TenantNetwork | Endpoint
KINDS: Mapping[str, type[SpecObject]] = {"TenantNetwork": TenantNetwork, "Endpoint": Endpoint}
#: How netctl get names each kind (netctl get tenants, get endpoints).
KIND_ALIASES = {"tenantnetwork": "TenantNetwork", "tenantnetworks": "TenantNetwork", "tenant": "TenantNetwork",
                "tenants": "TenantNetwork", "endpoint": "Endpoint", "endpoints": "Endpoint"}


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
            interfaces.setdefault((obj.spec.host, obj.spec.target, interface_name(obj.spec.tenant)),
                                  []).append(obj.metadata.name)
    for index, obj in new:
        if isinstance(obj, Endpoint):
            iface = interface_name(obj.spec.tenant)
            others = sorted(n for n in interfaces[(obj.spec.host, obj.spec.target, iface)] if n != obj.metadata.name)
            if others:
                field = "netns" if obj.spec.netns is not None else "container"
                issues.append(Issue(index, ("spec", field), f"endpoint {', '.join(others)} is interface {iface} in "
                                    f"{obj.spec.target} on host {obj.spec.host} too: one endpoint per tenant "
                                    f"(and per interface name) in a target", *object_key(obj)))
    for index, obj in new:
        if isinstance(obj, Endpoint) and obj.spec.ip is not None:
            users = addresses.get((obj.spec.tenant, obj.spec.ip), [])
            others = sorted(n for n in users if n != obj.metadata.name)
            if others:
                issues.append(Issue(index, ("spec", "ip"), f"{obj.spec.ip} is also endpoint {', '.join(others)}'s "
                                    f"in tenant {obj.spec.tenant}", *object_key(obj)))
    return sorted(issues, key=lambda i: (i.index if i.index is not None else -1, i.path, i.message))


def to_document(obj: SpecObject) -> dict[str, Any]:
    """The object as stored and shown (JSON-ready, defaults left out)."""
    return obj.model_dump(mode="json", exclude_defaults=True)
