"""Units from fleet unit files (as fleet documented and read them) and from YAML."""

from __future__ import annotations

import pytest

from netd.model.units import (
    UnitError,
    UnitName,
    default_service,
    instantiate,
    matches,
    parse_metadata,
    unit_from_file,
    unit_from_yaml,
    units_for,
)

# fleet's own documentation example (unit-files-and-scheduling.md), with an ExecStart
MONITOR = """\
[Unit]
Description=Some Monitoring Service

[Service]
ExecStart=/bin/monitorme

[X-Fleet]
MachineMetadata=location=chicago
Conflicts=monitor*
"""


def test_fleets_documented_example():
    u = unit_from_file("monitor.service", MONITOR)
    p = u.spec.placement
    assert (u.kind, u.spec.runtime, u.spec.command) == ("fleet", "netns", ["/bin/monitorme"])
    assert p.machineMetadata == {"location": ["chicago"]} and p.conflicts == ["monitor*"]
    assert u.service == "monitor" and not u.is_global and not u.is_template
    assert len(u.hash) == 40 and u.hash == unit_from_file("monitor.service", MONITOR).hash


def test_every_x_fleet_option_and_the_deprecated_spellings():
    text = """\
[Service]
ExecStart=/bin/sh -c "echo %n; sleep 1000"
[X-Fleet]
MachineID=0123456789abcdef
MachineID=ignored-the-first-one-counts
MachineOf=db@%i.service
X-ConditionMachineOf=cache.service
MachineMetadata="region=us-east-1" "diskType=SSD"
MachineMetadata=region=us-west-1
X-ConditionMachineMetadata=rack=r1
Conflicts=web@*.service
X-Conflicts=legacy.*
Replaces=old-web@%i.service
"""
    u = unit_from_file("web@7.service", text)
    p = u.spec.placement
    assert p.machineID == "0123456789abcdef"
    assert p.machineOf == ["db@7.service", "cache.service"]
    assert p.machineMetadata == {"region": ["us-east-1", "us-west-1"], "diskType": ["SSD"], "rack": ["r1"]}
    assert p.conflicts == ["web@*.service", "legacy.*"] and p.replaces == ["old-web@7.service"]
    assert u.spec.command == ["/bin/sh", "-c", "echo web@7.service; sleep 1000"]  # specifiers in ExecStart too
    assert u.service == "web"


@pytest.mark.parametrize("value,is_global", [("true", True), ("yes", True), ("1", True), ("on", True),
                                             ("t", True), ("TRUE", True), ("false", False), ("no", False)])
def test_global_is_truthy_as_fleet_reads_it(value, is_global):
    u = unit_from_file("agent.service", f"[Service]\nExecStart=/bin/agent\n[X-Fleet]\nGlobal={value}\n"
                                        "MachineMetadata=role=worker\n")
    assert u.is_global is is_global


@pytest.mark.parametrize("text,where,message", [
    ("[Service]\nExecStart=/bin/x\n[X-Fleet]\nMachineMetaData=a=b\n", "x.service:4: MachineMetaData",
     "unknown [X-Fleet] option (fleet's are: Conflicts, Global, MachineID, MachineMetadata, MachineOf, Replaces, "
     "X-ConditionMachineID, X-ConditionMachineMetadata, X-ConditionMachineOf, X-Conflicts)"),
    ("[Service]\nExecStart=/bin/x\n[X-Fleet]\nMachineMetadata=region\n", "x.service:4: MachineMetadata",
     "expected key=value, found 'region'"),
    ("[Service]\nExecStart=/bin/x\n[X-Fleet]\nGlobal=true\nConflicts=y*\n", "x.service",
     "a global unit takes machineMetadata only (fleet: a unit is invalid if options other than MachineMetadata "
     "are given alongside Global=true)"),
    ("[Service]\nRestart=always\n", "x.service", "a unit needs [Service] ExecStart= (the command it runs)"),
    ("[Service\nExecStart=/bin/x\n", "x.service:1", "expected a section header such as [Service], found '[Service'"),
    ("ExecStart=/bin/x\n", "x.service:1", "an option before any [Section]"),
    ("[Service]\nExecStart /bin/x\n", "x.service:2", "expected Key=Value, found 'ExecStart /bin/x'"),
    ("[Service]\nExecStart=/bin/sh -c 'unterminated\n", "x.service:2: ExecStart",
     "cannot split the command: No closing quotation"),
    ("[Service]\nExecStart=/bin/x\n[X-Netd]\nPorts=80\n", "x.service:4: Ports",
     "unknown [X-Netd] option (netd's are: Image, Service, Port, Network, CPU, Memory)"),
    ("[Service]\nExecStart=/bin/x\n[X-Netd]\nPort=http\n", "x.service:4: Port", "expected PORT or PORT/udp, "
                                                                               "found 'http'"),
    ("[Service]\nExecStart=/bin/x\n[X-Netd]\nMemory=lots\n", "x.service:4: Memory",
     "expected a size such as 64M or 1G, found 'lots'"),
    ("[Service]\nExecStart=/bin/x\n[X-Netd]\nCPU=two\n", "x.service:4: CPU",
     "expected cores (0.5) or millicores (500m), found 'two'"),
    ("[Service]\nExecStart=/bin/x\n[X-Netd]\nNetwork=bridge\n", "x.service:4: Network",
     "expected overlay, none or tenant:NAME, found 'bridge'"),
    ("[Service]\nExecStart=/bin/x\n[X-Netd]\nService=Web_API\n", "x.service",
     "service: expected a DNS label (a-z, 0-9, '-'), found 'Web_API'"),
])
def test_a_bad_unit_file_is_refused_naming_file_line_and_option(text, where, message):
    with pytest.raises(UnitError) as exc:
        unit_from_file("x.service", text)
    assert (exc.value.where, exc.value.message) == (where, message)
    assert str(exc.value) == f"{where}: {message}"


def test_a_fleet_unit_name_needs_its_type():
    with pytest.raises(UnitError, match="a fleet unit's name ends with its type"):
        unit_from_file("web", "[Service]\nExecStart=/bin/x\n")
    with pytest.raises(UnitError, match="expected a unit name"):
        unit_from_file("web service.service", "[Service]\nExecStart=/bin/x\n")


def test_netd_options_continuations_comments_and_what_is_noted():
    text = """\
# a comment
; another
[Unit]
Description=web
After=docker.service

[Service]
TimeoutStartSec=0
ExecStartPre=-/usr/bin/docker kill %n
ExecStart=/bin/httpd -f \\
          -p 80
Restart=always

[X-Netd]
Image=busybox:latest
Service=www
Port=80 53/udp
Network=overlay tenant:blue
CPU=250m
Memory=64M
"""
    u = unit_from_file("web@1.service", text)
    s = u.spec
    assert (s.runtime, s.image, s.command, u.service) == ("docker", "busybox:latest", ["/bin/httpd", "-f", "-p", "80"],
                                                          "www")
    assert [(p.port, p.protocol) for p in s.ports] == [(80, "tcp"), (53, "udp")]
    assert (s.overlay, s.tenants, s.resources.cpu, s.resources.memory) == (True, ["blue"], 250, 64 << 20)
    assert [n.split(": ", 1)[1].split(" ")[0] for n in u.notes] == ["TimeoutStartSec", "ExecStartPre", "Restart"]
    assert unit_from_file("a.service", "[Service]\nExecStart=/bin/a\n[X-Netd]\nCPU=1.5\nNetwork=none\n"
                                       "Memory=1G\n").spec.resources.cpu == 1500


def test_templates_and_instances():
    template = unit_from_file("web@.service", "[Service]\nExecStart=/bin/web --id %i\n[X-Fleet]\n"
                                              "Conflicts=%p@*.service\n")
    assert template.is_template
    one = instantiate(template, "web@1.service")
    assert one.spec.command == ["/bin/web", "--id", "1"] and one.spec.placement.conflicts == ["web@*.service"]
    assert one.text == template.text and one.hash == template.hash
    with pytest.raises(UnitError, match="is not an instance of web@.service"):
        instantiate(template, "db@1.service")
    known = {"web@.service": template, "db.service": unit_from_file("db.service", "[Service]\nExecStart=/bin/db\n")}
    assert [u.name for u in units_for(["db.service", "web@2.service"], known)] == ["db.service", "web@2.service"]
    with pytest.raises(UnitError, match=r"no such unit \(submit it first, or its template api@.service\)"):
        units_for(["api@1.service"], known)
    with pytest.raises(UnitError, match=r"no such unit \(submit it first\)"):
        units_for(["nope.service"], known)


@pytest.mark.parametrize("name,prefix,instance,template,n", [
    ("foo@bar.service", "foo", "bar", "foo@.service", "foo@bar"),
    ("foo@.service", "foo", "", None, "foo@"),
    ("foo.socket", "foo", "", None, "foo"),
    ("web-1", "web-1", "", None, "web-1"),
    ("a@b@c.service", "a", "b@c", "a@.service", "a@b@c"),
])
def test_unit_names_as_fleet_split_them(name, prefix, instance, template, n):
    un = UnitName(name)
    assert (un.prefix, un.instance, un.template, un.name) == (prefix, instance, template, n)
    assert un.printf("%n|%N|%p|%i") == f"{name}|{n}|{prefix}|{instance}"


@pytest.mark.parametrize("glob,name,hit", [
    ("web*", "web@1.service", True), ("web@?.service", "web@1.service", True), ("web@?.service", "web@10.service",
                                                                                  False),
    ("web@[12].service", "web@2.service", True), ("*", "a/b", False), ("db.service", "db.service", True),
    ("db", "db.service", False),
])
def test_globs_match_as_fleets(glob, name, hit):
    assert matches(glob, name) is hit


def test_default_service_and_machine_metadata():
    assert default_service("Web_API@2.service") == "web-api" and default_service("@@.service") == "unit"
    assert parse_metadata("region=us-east, disk=ssd,") == {"region": "us-east", "disk": "ssd"}
    for bad in ("region", "=x", "a b=c", "k="):
        with pytest.raises(ValueError, match="expected key=value"):
            parse_metadata(bad)


def test_yaml_units():
    doc = {"apiVersion": "netd/v1", "kind": "Unit", "metadata": {"name": "api-1"},
           "spec": {"image": "busybox", "command": ["httpd", "-f"], "ports": [{"port": 8080}],
                    "resources": {"cpu": 500, "memory": 1 << 26},
                    "placement": {"machineMetadata": {"zone": ["a", "b"]}, "conflicts": ["api-*"]}}}
    u = unit_from_yaml(doc, "api.yaml")
    assert (u.kind, u.spec.runtime, u.service, u.spec.ports[0].protocol) == ("yaml", "docker", "api-1", "tcp")
    assert u.spec.placement.machineMetadata == {"zone": ["a", "b"]}
    g = unit_from_yaml({**doc, "spec": {"command": ["agent"], "placement": {"global": True}}}, "g.yaml")
    assert g.is_global and g.spec.runtime == "netns"


@pytest.mark.parametrize("spec,where,message", [
    ({"command": ["x"], "colour": 1}, "f.yaml: spec.colour", "unknown field"),
    ({"runtime": "docker", "command": ["x"]}, "f.yaml: spec", "the docker runtime needs an image"),
    ({}, "f.yaml: spec", "the netns runtime needs a command"),
    ({"command": ["x"], "ports": [{"port": 70000}]}, "f.yaml: spec.ports.0.port",
     "Input should be less than or equal to 65535"),
    ({"command": ["x"], "placement": {"global": True, "machineID": "m1"}}, "f.yaml: spec.placement",
     "a global unit takes machineMetadata only (fleet: a unit is invalid if options other than MachineMetadata are "
     "given alongside Global=true)"),
    ({"command": ["x"], "placement": {"machineMetadata": {"zone": []}}}, "f.yaml: spec.placement",
     "machineMetadata zone: expected a key (letters, digits, '_', '.', '-') and at least one non-empty value, "
     "found []"),
])
def test_a_bad_yaml_unit_names_its_field(spec, where, message):
    with pytest.raises(UnitError) as exc:
        unit_from_yaml({"apiVersion": "netd/v1", "kind": "Unit", "metadata": {"name": "u"}, "spec": spec}, "f.yaml")
    assert (exc.value.where, exc.value.message) == (where, message)


def test_a_yaml_document_that_is_no_unit():
    with pytest.raises(UnitError, match="expected apiVersion netd/v1 and kind Unit"):
        unit_from_yaml({"apiVersion": "netd/v1", "kind": "TenantNetwork"}, "f.yaml")
    with pytest.raises(UnitError, match="f.yaml: metadata.name: expected a unit name, found 'a b'"):
        unit_from_yaml({"apiVersion": "netd/v1", "kind": "Unit", "metadata": {"name": "a b"}, "spec": {}}, "f.yaml")
    with pytest.raises(UnitError, match="f.yaml: spec: expected a mapping"):
        unit_from_yaml({"apiVersion": "netd/v1", "kind": "Unit", "metadata": {"name": "a"}}, "f.yaml")


def test_description_environment_and_a_percent_sign():
    u = unit_from_file("api@3.service", "[Unit]\nDescription=the API, instance %i\n[Service]\n"
                                        "Environment=\"GREETING=hello %i\" MODE=fast\nEnvironment=RATE=100%%\n"
                                        "ExecStart=/bin/api --name %n --load 50%%\n")
    assert u.spec.description == "the API, instance 3"  # (specifiers as systemd substitutes them)
    assert u.spec.environment == {"GREETING": "hello 3", "MODE": "fast", "RATE": "100%"}
    assert u.spec.command == ["/bin/api", "--name", "api@3.service", "--load", "50%"]
    assert UnitName("a@b.service").printf("%%i is %i, %%%p") == "%i is b, %a"  # one pass: never read twice
    with pytest.raises(UnitError, match=r"x.service:2: Environment: expected NAME=value, found '1X=y'"):
        unit_from_file("x.service", "[Service]\nEnvironment=1X=y\nExecStart=/bin/x\n")


def test_exact_refusals_of_names_kinds_and_headers():
    with pytest.raises(UnitError) as exc:
        unit_from_file("web", "[Service]\nExecStart=/bin/x\n", source="f/web")
    assert (exc.value.where, exc.value.message) == ("f/web", "a fleet unit's name ends with its type (.service, "
                                                             ".socket, .timer, .path, .device, .mount, .automount), "
                                                             "found 'web'")
    with pytest.raises(UnitError) as exc:
        unit_from_file("a b.service", "", source="f/ab")
    assert exc.value.where == "f/ab" and exc.value.message.startswith("expected a unit name")
    with pytest.raises(UnitError) as exc:
        unit_from_yaml({"apiVersion": "netd/v2", "kind": "Unit"}, "u.yaml")
    assert (exc.value.where, exc.value.message) == ("u.yaml", "expected apiVersion netd/v1 and kind Unit, found "
                                                              "'netd/v2' and 'Unit'")
    with pytest.raises(UnitError, match=r"^x.service:1: expected a section header such as \[Service\], found '\[\]'$"):
        unit_from_file("x.service", "[]\n")
    assert unit_from_file("x.service", "[X]\n[Service]\nExecStart=/bin/x\n").spec.command == ["/bin/x"]
    with pytest.raises(UnitError, match="metadata.name: expected a unit name, found None"):
        unit_from_yaml({"apiVersion": "netd/v1", "kind": "Unit", "metadata": "web", "spec": {}}, "u.yaml")


def test_continuations_multivalues_sizes_and_networks():
    u = unit_from_file("x.service", "[Service]\nExecStart=/bin/x  \\\n   a \\\nb\n[X-Fleet]\n"
                                    'MachineMetadata="a=1" "b=2 3"\nConflicts="c*" d*\n'
                                    "[X-Netd]\nMemory=1K\nNetwork=none\n")
    assert u.spec.command == ["/bin/x", "a", "b"]
    assert u.spec.placement.machineMetadata == {"a": ["1"], "b": ["2 3"]}  # quoted items keep their spaces
    assert u.spec.placement.conflicts == ['"c*" d*']  # not all quoted: one value, as fleet read it
    assert (u.spec.resources.memory, u.spec.overlay) == (1024, False)
    assert unit_from_file("y.service", "[Service]\nExecStart=/bin/y\n").spec.overlay is True
    for text, size in (("64MiB", 64 << 20), ("2GB", 2 << 30), ("3T", 3 << 40), ("512", 512)):
        assert unit_from_file("z.service", f"[Service]\nExecStart=/bin/z\n[X-Netd]\nMemory={text}\n").spec \
            .resources.memory == size
    assert UnitName("a@b.service").printf("50%") == "50%" and UnitName("a.service").printf("%x%n") == "%xa.service"


def test_yaml_instances_and_templates():
    t = unit_from_yaml({"apiVersion": "netd/v1", "kind": "Unit", "metadata": {"name": "api@"},
                        "spec": {"command": ["api"]}}, "api.yaml", "text")
    one = instantiate(t, "api@1")
    assert (one.name, one.spec, one.kind, one.text) == ("api@1", t.spec, "yaml", "text")
    assert units_for(["api@2"], {"api@": t})[0].name == "api@2"
    assert t.text == "text" and unit_from_yaml({"apiVersion": "netd/v1", "kind": "Unit", "metadata": {"name": "b"},
                                                "spec": {"command": ["b"]}}, "b.yaml").text == ""
