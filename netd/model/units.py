"""Units and machines of netd's fleet-like scheduler: a unit's spec from YAML (``kind: Unit``) or
from a fleet unit file (``name.service`` with ``ExecStart`` and ``[X-Fleet]``), and the machines
that run them. Pure: parsing and validation only; every error names the file, the line and the
option (or field).

A fleet unit file is read as fleet read it (go-systemd's unit syntax: ``[Section]`` headers,
``Key=Value`` lines, ``#``/``;`` comments, ``\\`` continuations, an option given several times keeps
every value; in ``[X-Fleet]`` a value of several double-quoted items is several values), with
fleet's specifiers ``%n %N %p %i`` substituted in ``[X-Fleet]`` and ``ExecStart``. ``[X-Fleet]``
takes fleet's options -- MachineID, MachineOf, MachineMetadata, Conflicts, Global, Replaces, and the
deprecated ``X-Condition``/``X-`` spellings fleet still read -- and nothing else. netd's own
options live in ``[X-Netd]``: Image (the docker runtime; ExecStart is then the container's
command), Service, Port, Network, CPU, Memory.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator

#: a unit's name: fleet's (``web.service``, ``web@1.service``) or a YAML unit's (``web-1``)
UNIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_.@-]{0,199}$")
UNIT_TYPES = ("service", "socket", "timer", "path", "device", "mount", "automount")
SERVICE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a DNS label: it becomes a name
METADATA_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
DESIRED_STATES = ("inactive", "loaded", "launched")


class UnitError(ValueError):
    """A unit that cannot be: ``where`` is ``file:line: option`` or ``file: field``."""

    def __init__(self, where: str, message: str) -> None:
        self.where, self.message = where, message
        super().__init__(f"{where}: {message}")


# -- names --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UnitName:
    """fleet's UnitNameInfo: ``foo@bar.service`` -> prefix foo, instance bar, template foo@.service."""

    full: str

    @property
    def name(self) -> str:  # %N: without the type suffix
        return self.full.rsplit(".", 1)[0] if self.has_type else self.full

    @property
    def has_type(self) -> bool:
        return "." in self.full and self.full.rsplit(".", 1)[1] in UNIT_TYPES

    @property
    def prefix(self) -> str:  # %p
        return self.name.split("@", 1)[0]

    @property
    def instance(self) -> str:  # %i
        return self.name.split("@", 1)[1] if "@" in self.name else ""

    @property
    def is_template(self) -> bool:
        return "@" in self.name and not self.instance

    @property
    def template(self) -> str | None:
        """The template an instance comes from (``foo@.service``)."""
        if "@" not in self.name or self.is_template:
            return None
        suffix = "." + self.full.rsplit(".", 1)[1] if self.has_type else ""
        return f"{self.prefix}@{suffix}"

    def printf(self, text: str) -> str:
        """fleet's unitPrintf: %n, %N, %p and %i."""
        out, i = [], 0
        values = {"n": self.full, "N": self.name, "p": self.prefix, "i": self.instance, "%": "%"}
        while i < len(text):  # one pass: %% is a percent sign, and nothing substituted is read again
            if text[i] == "%" and i + 1 < len(text) and text[i + 1] in values:
                out.append(values[text[i + 1]])
                i += 2
            else:
                out.append(text[i])
                i += 1
        return "".join(out)


def check_unit_name(name: str) -> str:
    if not UNIT_NAME.fullmatch(name):
        raise ValueError(f"expected a unit name (letters, digits, ':', '_', '.', '@', '-'; e.g. web@1.service), "
                         f"found {name!r}")
    return name


def default_service(name: str) -> str:
    """The service a unit's endpoint is published under when it names none: its prefix, as a DNS
    label (``Web_API@2.service`` -> ``web-api``)."""
    label = re.sub(r"[^a-z0-9-]+", "-", UnitName(name).prefix.lower()).strip("-")[:63].strip("-")
    return label or "unit"


# -- the spec -----------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Placement(_Strict):
    """Where a unit may run ([X-Fleet]'s options)."""

    machineID: StrictStr | None = None  # noqa: N815 - fleet's names
    machineOf: list[StrictStr] = Field(default_factory=list)  # noqa: N815
    #: key -> values: every key must match, one of its values is enough
    machineMetadata: dict[StrictStr, list[StrictStr]] = Field(default_factory=dict)  # noqa: N815
    conflicts: list[StrictStr] = Field(default_factory=list)
    replaces: list[StrictStr] = Field(default_factory=list)
    #: on every machine whose metadata matches (fleet: Global=true takes MachineMetadata only)
    global_: StrictBool = Field(default=False, alias="global")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _global_alone(self) -> Placement:
        if self.global_ and (self.machineID or self.machineOf or self.conflicts or self.replaces):
            raise ValueError("a global unit takes machineMetadata only (fleet: a unit is invalid if options other "
                             "than MachineMetadata are given alongside Global=true)")
        for key, values in self.machineMetadata.items():
            if not METADATA_KEY.fullmatch(key) or not values or not all(values):
                raise ValueError(f"machineMetadata {key}: expected a key (letters, digits, '_', '.', '-') and at "
                                 f"least one non-empty value, found {values!r}")
        for glob in (*self.conflicts, *self.replaces, *self.machineOf):
            if not glob.strip():
                raise ValueError("an empty unit name or glob")
        return self


class Port(_Strict):
    port: Annotated[StrictInt, Field(ge=1, le=65535)]
    protocol: Literal["tcp", "udp"] = "tcp"
    name: StrictStr = ""


class Resources(_Strict):
    #: millicores (1000 = one core) and bytes; what placement reserves on a machine
    cpu: Annotated[StrictInt, Field(ge=0, le=10_000_000)] = 0
    memory: Annotated[StrictInt, Field(ge=0)] = 0


class UnitSpec(_Strict):
    runtime: Literal["docker", "netns"] = "netns"
    image: StrictStr | None = None
    command: list[StrictStr] = Field(default_factory=list)
    service: StrictStr = ""
    overlay: StrictBool = True
    tenants: list[StrictStr] = Field(default_factory=list)
    ports: list[Port] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    placement: Placement = Field(default_factory=Placement)
    description: StrictStr = ""
    environment: dict[StrictStr, StrictStr] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _runnable(self) -> UnitSpec:
        if self.runtime == "docker" and not self.image:
            raise ValueError("the docker runtime needs an image")
        if self.runtime == "netns" and self.image:
            raise ValueError("an image needs the docker runtime")
        if self.runtime == "netns" and not self.command:
            raise ValueError("the netns runtime needs a command")
        if self.service and not SERVICE_NAME.fullmatch(self.service):
            raise ValueError(f"service: expected a DNS label (a-z, 0-9, '-'), found {self.service!r}")
        return self


@dataclass(frozen=True)
class Unit:
    """A submitted unit: its name, its spec, where it came from, and the text it was written as."""

    name: str
    spec: UnitSpec
    kind: str  # "yaml" or "fleet"
    text: str = field(default="", compare=False)
    #: ignored options worth a warning (a fleet unit's [Service] options netd does not run)
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def hash(self) -> str:
        """fleet's unit hash: SHA1 of the unit's text."""
        return hashlib.sha1(self.text.encode()).hexdigest()

    @functools.cached_property
    def service(self) -> str:
        return self.spec.service or default_service(self.name)

    @property
    def is_template(self) -> bool:
        return UnitName(self.name).is_template

    @property
    def is_global(self) -> bool:
        return self.spec.placement.global_


def _pydantic_message(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append((loc, msg))
    return out


def unit_from_yaml(doc: Mapping[str, Any], source: str, text: str = "") -> Unit:
    """``apiVersion: netd/v1, kind: Unit, metadata.name, spec`` -> a Unit; UnitError naming the field."""
    if doc.get("apiVersion") != "netd/v1" or doc.get("kind") != "Unit":
        raise UnitError(source, f"expected apiVersion netd/v1 and kind Unit, found {doc.get('apiVersion')!r} "
                                f"and {doc.get('kind')!r}")
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not UNIT_NAME.fullmatch(name):
        raise UnitError(f"{source}: metadata.name", f"expected a unit name, found {name!r}")
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        raise UnitError(f"{source}: spec", "expected a mapping")
    raw = dict(spec)
    if "image" in raw and "runtime" not in raw:
        raw["runtime"] = "docker"
    try:
        parsed = UnitSpec.model_validate(raw)
    except ValidationError as exc:
        where, msg = _pydantic_message(exc)[0]
        raise UnitError(f"{source}: spec.{where}" if where else f"{source}: spec", msg) from None
    return Unit(name, parsed, "yaml", text)


# -- fleet unit files ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    section: str
    name: str
    value: str
    line: int


def parse_unit_file(text: str, source: str) -> list[Option]:
    """go-systemd's unit syntax, as fleet read it."""
    options: list[Option] = []
    section: str | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i
        line = lines[i].strip()
        i += 1
        while line.endswith("\\") and i < len(lines):  # a continuation: the next line joins with a space
            line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise UnitError(f"{source}:{start + 1}", f"expected a section header such as [Service], found "
                                                         f"{line!r}")
            section = line[1:-1]
            continue
        if "=" not in line:
            raise UnitError(f"{source}:{start + 1}", f"expected Key=Value, found {line!r}")
        if section is None:
            raise UnitError(f"{source}:{start + 1}", "an option before any [Section]")
        key, _, value = line.partition("=")
        options.append(Option(section, key.strip(), value.strip(), start + 1))
    return options


def _multivalue(value: str) -> list[str]:
    """fleet's parseMultivalueLine: ``"a=b" "c=d"`` -> two values; anything else is one."""
    if not (value.startswith('"') and value.endswith('"')):
        return [value]
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
            continue
        if ch == " " and not quoted:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return out


#: [X-Fleet] options as fleet's job.go read them (deprecated spellings included) -> netd's field
X_FLEET = {"MachineID": "machineID", "X-ConditionMachineID": "machineID",
           "MachineOf": "machineOf", "X-ConditionMachineOf": "machineOf",
           "MachineMetadata": "machineMetadata", "X-ConditionMachineMetadata": "machineMetadata",
           "Conflicts": "conflicts", "X-Conflicts": "conflicts",
           "Global": "global", "Replaces": "replaces"}
X_NETD = ("Image", "Service", "Port", "Network", "CPU", "Memory")
#: [Service] options netd reads; the rest are accepted (a unit written for fleet has them) and noted
SERVICE_READ = ("ExecStart", "Environment")
TRUTHY = ("true", "yes", "1", "on", "t")


def _size(text: str, where: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B?)?", text.strip())
    if not m:
        raise UnitError(where, f"expected a size such as 64M or 1G, found {text!r}")
    return int(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")


def _cpu(text: str, where: str) -> int:
    t = text.strip()
    try:
        return int(t[:-1]) if t.endswith("m") else int(round(float(t) * 1000))
    except ValueError:
        raise UnitError(where, f"expected cores (0.5) or millicores (500m), found {text!r}") from None


def unit_from_file(name: str, text: str, source: str | None = None) -> Unit:
    """A fleet unit file named ``name`` (an instance's name when it comes from a template) -> a Unit."""
    source = source or name
    try:
        check_unit_name(name)
    except ValueError as exc:
        raise UnitError(source, str(exc)) from None
    un = UnitName(name)
    if not un.has_type:
        raise UnitError(source, f"a fleet unit's name ends with its type ({', '.join('.' + t for t in UNIT_TYPES)}), "
                                f"found {name!r}")
    placement: dict[str, Any] = {"machineOf": [], "machineMetadata": {}, "conflicts": [], "replaces": []}
    netd: dict[str, Any] = {}
    ports: list[dict[str, Any]] = []
    tenants: list[str] = []
    overlay = True
    exec_start: list[str] | None = None
    notes: list[str] = []
    description = ""
    environment: dict[str, str] = {}
    for opt in parse_unit_file(text, source):
        where = f"{source}:{opt.line}: {opt.name}"
        if opt.section == "X-Fleet":
            fieldname = X_FLEET.get(opt.name)
            if fieldname is None:
                raise UnitError(where, f"unknown [X-Fleet] option (fleet's are: {', '.join(sorted(set(X_FLEET)))})")
            for value in _multivalue(un.printf(opt.value)):
                if fieldname == "machineID":
                    placement.setdefault("machineID", value)  # fleet: the first one
                elif fieldname == "machineMetadata":
                    key, eq, val = value.partition("=")
                    if not eq or not key or not val:
                        raise UnitError(where, f"expected key=value, found {value!r}")
                    placement["machineMetadata"].setdefault(key, []).append(val)
                elif fieldname == "global":
                    placement["global"] = value.lower() in TRUTHY  # fleet: the last one wins
                else:
                    placement[fieldname].append(value)
        elif opt.section == "X-Netd":
            if opt.name not in X_NETD:
                raise UnitError(where, f"unknown [X-Netd] option (netd's are: {', '.join(X_NETD)})")
            if opt.name == "Port":
                for item in opt.value.split():
                    m = re.fullmatch(r"(\d{1,5})(?:/(tcp|udp))?", item)
                    if not m:
                        raise UnitError(where, f"expected PORT or PORT/udp, found {item!r}")
                    ports.append({"port": int(m.group(1)), "protocol": m.group(2) or "tcp"})
            elif opt.name == "Network":
                for item in opt.value.split():
                    if item == "overlay":
                        overlay = True
                    elif item == "none":
                        overlay = False
                    elif item.startswith("tenant:"):
                        tenants.append(item.split(":", 1)[1])
                    else:
                        raise UnitError(where, f"expected overlay, none or tenant:NAME, found {item!r}")
            elif opt.name == "CPU":
                netd["cpu"] = _cpu(opt.value, where)
            elif opt.name == "Memory":
                netd["memory"] = _size(opt.value, where)
            else:
                netd[opt.name] = un.printf(opt.value)
        elif opt.section == "Service" and opt.name == "ExecStart":
            try:
                exec_start = shlex.split(un.printf(opt.value))
            except ValueError as exc:
                raise UnitError(where, f"cannot split the command: {exc}") from None
            if exec_start and exec_start[0][:1] in "-@+!:":  # systemd's prefixes
                exec_start[0] = exec_start[0].lstrip("-@+!:")
        elif opt.section == "Unit" and opt.name == "Description":
            description = un.printf(opt.value)
        elif opt.section == "Service" and opt.name == "Environment":
            try:
                pairs = shlex.split(un.printf(opt.value))
            except ValueError as exc:
                raise UnitError(where, f"cannot split the assignments: {exc}") from None
            for pair in pairs:
                key, eq, val = pair.partition("=")
                if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                    raise UnitError(where, f"expected NAME=value, found {pair!r}")
                environment[key] = val
        elif opt.section == "Service" and opt.name not in SERVICE_READ:
            notes.append(f"{source}:{opt.line}: {opt.name} is not run by netd (it runs ExecStart, restarting it "
                         "with back-off)")
    if un.is_template:
        exec_start = exec_start or []
    elif not exec_start:
        raise UnitError(source, "a unit needs [Service] ExecStart= (the command it runs)")
    raw: dict[str, Any] = {"command": exec_start or [], "overlay": overlay, "tenants": tenants, "ports": ports,
                           "resources": {k: netd[k] for k in ("cpu", "memory") if k in netd},
                           "service": netd.get("Service", ""), "description": description,
                           "environment": environment}
    if "Image" in netd:
        raw.update(runtime="docker", image=netd["Image"])
    try:
        raw["placement"] = Placement.model_validate({k: v for k, v in placement.items() if v not in ([], {})})
        spec = UnitSpec.model_validate(raw) if not un.is_template else UnitSpec.model_construct(**raw)
    except ValidationError as exc:
        field_name, msg = _pydantic_message(exc)[0]
        raise UnitError(f"{source}: {field_name}" if field_name else source, msg) from None
    return Unit(name, spec, "fleet", text, tuple(notes))


def instantiate(template: Unit, instance_name: str) -> Unit:
    """``web@1.service`` from the template ``web@.service``: its text read again under the instance's
    name (the specifiers take the instance's values)."""
    un = UnitName(instance_name)
    if un.template != template.name:
        raise UnitError(instance_name, f"is not an instance of {template.name}")
    if template.kind == "fleet":
        return unit_from_file(instance_name, template.text, source=f"{template.name} (as {instance_name})")
    return Unit(instance_name, template.spec, template.kind, template.text)


def matches(glob: str, name: str) -> bool:
    """fleet's globMatches (Go's path.Match: *, ?, [...]; '/' never matched)."""
    return "/" not in name and fnmatch.fnmatchcase(name, glob)


# -- machines -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Machine:
    id: str
    ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    cpu: int = 0  # millicores it offers (0: not limited)
    memory: int = 0  # bytes it offers (0: not limited)
    runtimes: tuple[str, ...] = ()  # what it can run (docker, netns); () : not said (anything)

    def __hash__(self) -> int:
        return hash(self.id)


def parse_metadata(text: str) -> dict[str, str]:
    """``--metadata region=us-east,disk=ssd`` -> a dict (fleet's metadata config option)."""
    out: dict[str, str] = {}
    for item in (p.strip() for p in text.split(",") if p.strip()):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not METADATA_KEY.fullmatch(key) or not value:
            raise ValueError(f"expected key=value[,key=value...], found {item!r}")
        out[key] = value
    return out


def units_for(names: Sequence[str], known: Mapping[str, Unit]) -> list[Unit]:
    """The units named: known ones, or instances of a known template (fleet's `start foo@3.service`)."""
    out = []
    for name in names:
        if name in known:
            out.append(known[name])
            continue
        template = UnitName(name).template
        if template is None or template not in known:
            raise UnitError(name, "no such unit (submit it first" + (f", or its template {template}" if template
                                                                     else "") + ")")
        out.append(instantiate(known[template], name))
    return out
