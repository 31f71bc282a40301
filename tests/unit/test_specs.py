"""netd/v1 objects: the schema, the rules between objects, the plan of an apply, its diff."""

from __future__ import annotations

import ipaddress

import pytest

from netd.core.specplan import PlanError, Stored, endpoint_mac, free_address, plan_apply, plan_delete, render_plan
from netd.model.specs import (
    Endpoint,
    Issue,
    TenantNetwork,
    check_objects,
    interface_name,
    object_key,
    parse_object,
    to_document,
)

N, A = ipaddress.IPv4Network, ipaddress.IPv4Address


def tenant(name="blue", vni=5001, subnet="10.20.0.0/24", **spec):
    obj, issues = parse_object({"apiVersion": "netd/v1", "kind": "TenantNetwork", "metadata": {"name": name},
                                "spec": {"vni": vni, "subnet": subnet, **spec}})
    assert obj is not None, issues
    return obj


def endpoint(name="web1", tenant="blue", ip=None, **spec):
    s = {"tenant": tenant, "host": "h1", "netns": name, **spec}
    if ip:
        s["ip"] = ip
    obj, issues = parse_object({"apiVersion": "netd/v1", "kind": "Endpoint", "metadata": {"name": name}, "spec": s})
    assert obj is not None, issues
    return obj


def issues_of(raw):
    obj, issues = parse_object(raw)
    assert obj is None
    return [(i.field, i.message) for i in issues]


def doc(kind="TenantNetwork", name="blue", **spec):
    return {"apiVersion": "netd/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize("raw,want", [
    ([], [("", "expected a mapping with apiVersion, kind, metadata and spec, found list")]),
    ({**doc(vni=1, subnet="10.0.0.0/24"), "apiVersion": "v1"}, [("apiVersion", "expected netd/v1, found 'v1'")]),
    ({**doc(vni=1, subnet="10.0.0.0/24"), "kind": "Pod"},
     [("kind", "unknown kind 'Pod' (known: Endpoint, ServiceChain, ServiceFunction, TenantNetwork)")]),
    (doc(vni=0, subnet="10.0.0.0/24"), [("spec.vni", "Input should be greater than or equal to 1, found 0")]),
    (doc(vni=16777216, subnet="10.0.0.0/24"),
     [("spec.vni", "Input should be less than or equal to 16777215, found 16777216")]),
    (doc(vni="5", subnet="10.0.0.0/24"), [("spec.vni", "Input should be a valid integer, found '5'")]),
    (doc(vni=True, subnet="10.0.0.0/24"), [("spec.vni", "Input should be a valid integer, found True")]),
    (doc(vni=1, subnet="10.0.0.1/24"),
     [("spec.subnet", "expected an IPv4 CIDR such as 10.20.0.0/24, found '10.0.0.1/24' "
                      "(10.0.0.1/24 has host bits set)")]),
    (doc(vni=1, subnet="10.0.0.0/31"), [("spec.subnet", "expected a prefix length of 8 to 30, found /31")]),
    (doc(vni=1, subnet="10.0.0.0/7"), [("spec.subnet", "expected a prefix length of 8 to 30, found /7")]),
    (doc(vni=1, subnet=5), [("spec.subnet", "expected an IPv4 CIDR such as 10.20.0.0/24, found 5")]),
    (doc(vni=1, subnet="10.0.0.0/24", gateway="10.0.1.1"),
     [("spec.gateway", "10.0.1.1 is not a host address of subnet 10.0.0.0/24")]),
    (doc(vni=1, subnet="10.0.0.0/24", gateway="10.0.0.255"),
     [("spec.gateway", "10.0.0.255 is not a host address of subnet 10.0.0.0/24")]),
    (doc(vni=1, subnet="10.0.0.0/24", colour="red"), [("spec.colour", "unknown field")]),
    (doc(subnet="10.0.0.0/24"), [("spec.vni", "required")]),
    (doc(vni=1, subnet="10.0.0.0/24", mtu=100),
     [("spec.mtu", "Input should be greater than or equal to 576, found 100")]),
    (doc(name="Blue", vni=1, subnet="10.0.0.0/24"),
     [("metadata.name", "expected a DNS label (a-z, 0-9 and '-', at most 63, starting and ending with a letter or "
                        "digit), found 'Blue'")]),
    (doc(name="a" * 64, vni=1, subnet="10.0.0.0/24"), [("metadata.name", pytest.approx)]),
    (doc("Endpoint", "e", tenant="blue", host="h1"), [("spec", "exactly one of container and netns is required")]),
    (doc("Endpoint", "e", tenant="blue", host="h1", netns="x", container="y"),
     [("spec", "exactly one of container and netns is required")]),
    (doc("Endpoint", "e", tenant="blue", host="h1", netns="x", ip="10.0.0.256"),
     [("spec.ip", "expected an IPv4 address, found '10.0.0.256'")]),
])
def test_schema_errors_name_the_field(raw, want):
    got = issues_of(raw)
    if want[0][1] is pytest.approx:  # (just that the field is refused)
        assert [f for f, _ in got] == [want[0][0]]
    else:
        assert got == want


def test_good_documents_and_what_is_stored():
    t = tenant(gateway="10.20.0.1", mtu=1400)
    assert (t.spec.vni, t.spec.subnet, t.spec.gateway, t.spec.mtu) == (5001, N("10.20.0.0/24"), A("10.20.0.1"), 1400)
    assert to_document(t) == {"apiVersion": "netd/v1", "kind": "TenantNetwork", "metadata": {"name": "blue"},
                              "spec": {"vni": 5001, "subnet": "10.20.0.0/24", "gateway": "10.20.0.1", "mtu": 1400}}
    assert parse_object(to_document(t))[0] == t
    e = endpoint(ip="10.20.0.5")
    assert e.spec.target == "netns web1" and str(e.spec.ip) == "10.20.0.5"
    assert parse_object(to_document(e))[0] == e


def test_rules_between_objects():
    blue, red = tenant(), tenant("red", 5002)  # two tenants may overlap
    assert check_objects([(0, blue), (1, red)], []) == []
    dup = tenant("green", 5001, "10.30.0.0/24")
    got = check_objects([(0, blue), (1, dup)], [])
    assert [(i.index, i.field, i.message) for i in got] == [
        (0, "spec.vni", "VNI 5001 is also tenant network green's: every tenant needs its own"),
        (1, "spec.vni", "VNI 5001 is also tenant network blue's: every tenant needs its own")]
    # against what is stored: a stored tenant with the VNI counts; one being replaced does not
    assert [i.index for i in check_objects([(0, dup)], [blue])] == [0]
    assert check_objects([(0, tenant(vni=7))], [blue]) == []
    twice = check_objects([(0, blue), (1, blue)], [])
    assert [(i.index, i.field, i.related) for i in twice] == [(1, "metadata.name", 0)]
    over = check_objects([(0, tenant(subnet="10.5.3.0/24"))], [], N("10.5.0.0/16"))
    assert [i.message for i in over] == ["10.5.3.0/24 overlaps the cluster network 10.5.0.0/16 (a container on "
                                         "both could not tell them apart)"]


def test_endpoint_rules():
    blue = tenant(gateway="10.20.0.1")
    assert check_objects([(0, endpoint(tenant="nope"))], [blue])[0].message == \
        "no TenantNetwork 'nope' (neither in these files nor stored)"
    assert check_objects([(0, endpoint(ip="10.20.0.7"))], [blue]) == []
    assert check_objects([(0, endpoint(ip="10.20.0.1"))], [blue]) == []  # the gateway, given: the tenant's router
    for ip, msg in (("10.21.0.7", "10.21.0.7 is not a host address of tenant blue's subnet 10.20.0.0/24"),
                    ("10.20.0.255", "10.20.0.255 is not a host address of tenant blue's subnet 10.20.0.0/24"),
                    ("10.20.0.0", "10.20.0.0 is not a host address of tenant blue's subnet 10.20.0.0/24")):
        assert [i.message for i in check_objects([(0, endpoint(ip=ip))], [blue])] == [msg]
    for netns in ("/proc/1/ns/net", "../../proc/1/ns/net", ".", "..", "a/b", "-x", ""):  # never the host's, nor a path
        obj, issues = parse_object({"apiVersion": "netd/v1", "kind": "Endpoint", "metadata": {"name": "x"},
                                    "spec": {"tenant": "blue", "host": "h1", "netns": netns}})
        assert obj is None and [i.field for i in issues] == ["spec.netns"], netns
        assert issues[0].message.startswith("expected a network namespace's name"), issues
    obj, issues = parse_object({"apiVersion": "netd/v1", "kind": "Endpoint", "metadata": {"name": "x"},
                                "spec": {"tenant": "blue", "host": "h1", "container": "../etc"}})
    assert obj is None and [i.field for i in issues] == ["spec.container"]
    assert endpoint("x", netns="web.1_A-b").spec.netns == "web.1_A-b"
    # two endpoints of one tenant in one target would both be t-blue there
    same = check_objects([(0, endpoint("b", netns="web"))], [blue, endpoint("a", netns="web")])
    assert [(i.field, i.message) for i in same] == [
        ("spec.netns", "endpoint a is interface t-blue in netns web on host h1 too: one interface name per target"
                       " (give the endpoints different spec.interface)")]
    long1, long2 = tenant("customer-alpha-1", 7), tenant("customer-alpha-2", 8, "10.21.0.0/24")
    cut = check_objects([(0, endpoint("a", "customer-alpha-1", netns="web")),
                         (1, endpoint("b", "customer-alpha-2", netns="web"))], [long1, long2])
    assert [(i.index, i.field) for i in cut] == [(0, "spec.netns"), (1, "spec.netns")]  # both t-customer-alp
    assert check_objects([(0, endpoint("b", "red", netns="web"))], [blue, tenant("red", 5002),
                                                                    endpoint("a", netns="web")]) == []
    taken = check_objects([(0, endpoint("b", ip="10.20.0.7"))], [blue, endpoint("a", ip="10.20.0.7")])
    assert [i.message for i in taken] == ["10.20.0.7 is also endpoint a's in tenant blue"]
    red = tenant("red", 5002)  # the same address in another tenant is fine
    assert check_objects([(0, endpoint("b", "red", ip="10.20.0.7"))], [blue, red, endpoint("a", ip="10.20.0.7")]) == []


def stored_of(*objs, claims=()):
    return Stored({object_key(o): (o, 10 + i) for i, o in enumerate(objs)},
                  {(t, A(ip)): (name, 50 + i) for i, (t, ip, name) in enumerate(claims)}, 99)


def test_plan_adds_changes_keeps_and_prunes():
    blue, red = tenant(), tenant("red", 5002)
    stored = stored_of(blue, red)
    plan = plan_apply([tenant(vni=6000), tenant("green", 5003, "10.30.0.0/24")], stored, prune=True)
    assert [(c.action, c.key) for c in plan.changes] == [
        ("change", ("TenantNetwork", "blue")), ("add", ("TenantNetwork", "green")),
        ("delete", ("TenantNetwork", "red"))]
    assert render_plan(plan) == ("~ TenantNetwork blue\n    spec.vni: 5001 -> 6000\n+ TenantNetwork green\n"
                                 "- TenantNetwork red")
    assert plan_apply([blue], stored).empty and render_plan(plan_apply([blue], stored)) == "no changes"
    assert plan_apply([blue], stored).unchanged == (("TenantNetwork", "blue"),)


def test_prune_deletes_only_the_kinds_the_files_hold_and_never_a_tenant_in_use():
    blue, red, green = tenant(), tenant("red", 5002), tenant("green", 5003, "10.30.0.0/24")
    a = endpoint("a", ip="10.20.0.2")  # blue's, made by netctl attach: in no file
    stored = stored_of(blue, red, a, claims=[("blue", "10.20.0.2", "a")])
    plan = plan_apply([blue], stored, prune=True)  # a file of tenants: prunes red, never the endpoint
    assert [(c.action, c.key) for c in plan.changes] == [("delete", ("TenantNetwork", "red"))]
    assert plan.drop_claims == ()
    with pytest.raises(PlanError, match=r"^--prune would delete tenant network blue, which endpoints a use: "
                                        r"detach them first, or keep blue in the files$"):
        plan_apply([red], stored, prune=True)
    with pytest.raises(PlanError, match="which endpoints b use"):  # an endpoint in the files names it
        plan_apply([green, endpoint("b", "blue")], stored_of(blue, green), prune=True)
    # endpoints in the files too: a is pruned, so blue can go
    both = plan_apply([green, endpoint("b", "green", ip="10.30.0.5")], stored, prune=True)
    assert [(c.action, c.key) for c in both.changes] == [
        ("add", ("Endpoint", "b")), ("add", ("TenantNetwork", "green")), ("delete", ("Endpoint", "a")),
        ("delete", ("TenantNetwork", "blue")), ("delete", ("TenantNetwork", "red"))]
    assert both.drop_claims == (("blue", A("10.20.0.2")),)


def test_addresses_are_claimed_lowest_first_never_twice_and_kept():
    blue = tenant(gateway="10.20.0.1")
    plan = plan_apply([blue, endpoint("a"), endpoint("b", ip="10.20.0.2"), endpoint("c")], stored_of(blue))
    assert plan.add_claims == {("blue", A("10.20.0.2")): "b", ("blue", A("10.20.0.3")): "a",
                               ("blue", A("10.20.0.4")): "c"}  # the explicit one first, the gateway skipped
    stored = stored_of(blue, endpoint("a"), claims=[("blue", "10.20.0.3", "a")])
    assert plan_apply([endpoint("a")], stored).empty  # kept
    moved = plan_apply([endpoint("a", ip="10.20.0.9")], stored)
    assert moved.add_claims == {("blue", A("10.20.0.9")): "a"} and moved.drop_claims == (("blue", A("10.20.0.3")),)
    with pytest.raises(PlanError, match="10.20.0.3 is already endpoint a's in tenant blue"):
        plan_apply([endpoint("z", ip="10.20.0.3")], stored)
    full = tenant("tiny", 9, "10.9.0.0/30", gateway="10.9.0.1")
    with pytest.raises(PlanError, match="tenant tiny's subnet 10.9.0.0/30 has no free address left"):
        plan_apply([endpoint("x", "tiny"), endpoint("y", "tiny")], stored_of(full))
    assert free_address(full, []) == A("10.9.0.2") and endpoint_mac(A("10.20.0.3")) == "0a:58:0a:14:00:03"


def test_a_subnet_change_under_endpoints_is_refused():
    stored = stored_of(tenant(), endpoint("a"), claims=[("blue", "10.20.0.1", "a")])
    with pytest.raises(PlanError, match="changes its subnet from 10.20.0.0/24 to 10.21.0.0/24 but endpoints a use it"):
        plan_apply([tenant(subnet="10.21.0.0/24")], stored)


def test_delete_a_tenant_only_without_endpoints_or_with_force():
    stored = stored_of(tenant(), endpoint("a"), claims=[("blue", "10.20.0.1", "a")])
    with pytest.raises(PlanError, match="tenant network blue is used by endpoints a: detach them first"):
        plan_delete([("TenantNetwork", "blue")], stored)
    plan = plan_delete([("TenantNetwork", "blue")], stored, force=True)
    assert [c.key for c in plan.changes] == [("Endpoint", "a"), ("TenantNetwork", "blue")]
    assert plan.drop_claims == (("blue", A("10.20.0.1")),)
    with pytest.raises(PlanError, match="no such object: Endpoint zz"):
        plan_delete([("Endpoint", "zz")], stored)
    detach = plan_delete([("Endpoint", "a")], stored)
    assert [c.action for c in detach.changes] == ["delete"] and detach.drop_claims == (("blue", A("10.20.0.1")),)


def test_types():
    assert isinstance(tenant(), TenantNetwork) and isinstance(endpoint(), Endpoint)


KNOWN = "(known: Endpoint, ServiceChain, ServiceFunction, TenantNetwork)"


def _doc(kind="TenantNetwork", meta=None, spec=None, api="netd/v1"):
    return {"apiVersion": api, "kind": kind, "metadata": {"name": "blue"} if meta is None else meta,
            "spec": {"vni": 1, "subnet": "10.20.0.0/24"} if spec is None else spec}


@pytest.mark.parametrize("raw, want", [
    ([1], [Issue(3, (), "expected a mapping with apiVersion, kind, metadata and spec, found list")]),
    (_doc(api="v1"), [Issue(3, ("apiVersion",), "expected netd/v1, found 'v1'", "TenantNetwork", "blue")]),
    (_doc(kind="Pod"), [Issue(3, ("kind",), f"unknown kind 'Pod' {KNOWN}", "Pod", "blue")]),
    (_doc(kind=["TenantNetwork"]), [Issue(3, ("kind",), f"unknown kind ['TenantNetwork'] {KNOWN}", "['TenantNetwork']",
                                          "blue")]),
    (_doc(kind=None, meta="blue"), [Issue(3, ("kind",), f"unknown kind None {KNOWN}")]),
    (_doc(meta={"name": 5}, api="x"), [Issue(3, ("apiVersion",), "expected netd/v1, found 'x'", "TenantNetwork")]),
    (_doc(spec={"vni": 1, "subnet": "10.0.0.0/7"}),
     [Issue(3, ("spec", "subnet"), "expected a prefix length of 8 to 30, found /7", "TenantNetwork", "blue")]),
    (_doc(spec={"vni": 1, "subnet": "10.0.0.0/31"}),
     [Issue(3, ("spec", "subnet"), "expected a prefix length of 8 to 30, found /31", "TenantNetwork", "blue")]),
    (_doc(spec={"vni": 1, "subnet": "10.0.0.0/24", "gateway": 7}),
     [Issue(3, ("spec", "gateway"), "expected an IPv4 address, found 7", "TenantNetwork", "blue")]),
    (_doc("Endpoint", spec={"tenant": "blue", "host": "h1", "container": "a b"}),
     [Issue(3, ("spec", "container"), "expected a Docker container's name or id (letters, digits, '_', '.' and "
            "'-'), found 'a b'", "Endpoint", "blue")]),
])
def test_every_issue_of_a_document_whole(raw, want):
    assert parse_object(raw, 3) == (None, want)


def test_subnet_prefix_bounds_and_interface_names():
    for ok in ("10.0.0.0/8", "10.0.0.0/30"):
        assert parse_object(_doc(spec={"vni": 1, "subnet": ok}))[0] is not None
    assert interface_name("customer-alpha-1") == "t-customer-alph" and len(interface_name("x" * 40)) == 15
    assert parse_object(_doc())[1] == [] and parse_object({"x": 1})[1][0].index == 0  # the default index


def test_every_issue_between_objects_whole():
    blue, twin = tenant(), tenant("twin", 5001, "10.30.0.0/24")
    assert check_objects([(0, blue), (1, blue)], []) == [
        Issue(1, ("metadata", "name"), "TenantNetwork 'blue' is defined twice", "TenantNetwork", "blue", related=0)]
    assert check_objects([(2, tenant(subnet="10.5.3.0/24"))], [], N("10.5.0.0/16")) == [
        Issue(2, ("spec", "subnet"), "10.5.3.0/24 overlaps the cluster network 10.5.0.0/16 (a container on both "
              "could not tell them apart)", "TenantNetwork", "blue")]
    third = tenant("third", 5001, "10.31.0.0/24")
    assert check_objects([(0, twin), (1, third)], [blue]) == [
        Issue(0, ("spec", "vni"), "VNI 5001 is also tenant network blue, third's: every tenant needs its own",
              "TenantNetwork", "twin"),
        Issue(1, ("spec", "vni"), "VNI 5001 is also tenant network blue, twin's: every tenant needs its own",
              "TenantNetwork", "third")]
    assert check_objects([(4, endpoint(tenant="nope"))], [blue]) == [
        Issue(4, ("spec", "tenant"), "no TenantNetwork 'nope' (neither in these files nor stored)", "Endpoint", "web1")]
    assert check_objects([(4, endpoint(ip="10.21.0.1"))], [blue]) == [
        Issue(4, ("spec", "ip"), "10.21.0.1 is not a host address of tenant blue's subnet 10.20.0.0/24", "Endpoint",
              "web1")]
    assert check_objects([(4, endpoint("b", ip="10.20.0.7", netns="b"))], [blue, endpoint("a", ip="10.20.0.7")]) == [
        Issue(4, ("spec", "ip"), "10.20.0.7 is also endpoint a's in tenant blue", "Endpoint", "b")]
    assert check_objects([(4, endpoint("b", netns="web"))], [blue, endpoint("a", netns="web")]) == [
        Issue(4, ("spec", "netns"), "endpoint a is interface t-blue in netns web on host h1 too: one interface name"
              " per target (give the endpoints different spec.interface)", "Endpoint", "b")]
    # stored objects' own problems are not this apply's: nothing reported for them
    assert check_objects([], [blue, twin, endpoint(tenant="nope")], N("10.20.0.0/16")) == []


def test_stored_lookups():
    stored = stored_of(tenant(), endpoint("z"), endpoint("a"), claims=[("blue", "10.20.0.9", "z")])
    assert stored.address_of("z") == A("10.20.0.9") and stored.address_of("a") is None
    assert [e.metadata.name for e in stored.endpoints_of("blue")] == ["a", "z"]
    assert free_address(tenant(), []) == A("10.20.0.1")  # no gateway: the first host address


def test_claims_follow_every_endpoint_of_a_plan():
    blue, red = tenant(), tenant("red", 5002)
    claims = [("blue", "10.20.0.5", "a"), ("blue", "10.20.0.7", "d"), ("red", "10.20.0.1", "r"),
              ("blue", "10.99.0.5", "odd")]  # odd's claim lies outside blue's subnet (written by hand)
    stored = stored_of(blue, red, endpoint("a"), endpoint("d", ip="10.20.0.7"), endpoint("r", "red"),
                       endpoint("odd"), claims=claims)
    # a moves host: it keeps its address, whatever is lower and free
    assert plan_apply([endpoint("a", host="h2")], stored).empty is False
    moved_host = plan_apply([endpoint("a", host="h2")], stored)
    assert moved_host.add_claims == {} and moved_host.drop_claims == ()
    # a moves to red: blue's claim goes, red's lowest free (10.20.0.1 is r's) comes
    to_red = plan_apply([endpoint("a", "red")], stored)
    assert to_red.add_claims == {("red", A("10.20.0.2")): "a"} and to_red.drop_claims == (("blue", A("10.20.0.5")),)
    # a claim outside the subnet is not kept
    odd = plan_apply([endpoint("odd", host="h2")], stored)
    assert odd.add_claims == {("blue", A("10.20.0.1")): "odd"} and odd.drop_claims == (("blue", A("10.99.0.5")),)
    # new ones: red's addresses do not count in blue, blue's own do, a dropped one is free again
    new = plan_apply([endpoint("x"), endpoint("y", "red")], stored)
    assert new.add_claims == {("blue", A("10.20.0.1")): "x", ("red", A("10.20.0.2")): "y"}
    # one plan: a kept, b new; d deleted and e takes d's address; two endpoints moving
    plan = plan_apply([endpoint("a"), endpoint("b"), endpoint("e", ip="10.20.0.7"),
                       endpoint("r", "red", ip="10.20.0.9"), endpoint("odd", ip="10.20.0.8")], stored, prune=True)
    assert plan.add_claims == {("blue", A("10.20.0.1")): "b", ("blue", A("10.20.0.7")): "e",
                               ("blue", A("10.20.0.8")): "odd", ("red", A("10.20.0.9")): "r"}
    assert plan.drop_claims == (("blue", A("10.99.0.5")), ("red", A("10.20.0.1")))  # d's .7 is e's: one put
    both = plan_delete([("Endpoint", "a"), ("Endpoint", "d")], stored)
    assert both.drop_claims == (("blue", A("10.20.0.5")), ("blue", A("10.20.0.7"))) and both.add_claims == {}
    assert [c.before for c in both.changes] == [stored.objects[("Endpoint", "a")][0],
                                                stored.objects[("Endpoint", "d")][0]]
    with pytest.raises(PlanError, match=r"^endpoint y: 10.20.0.3 is already endpoint x's in tenant blue$"):
        plan_apply([endpoint("x", ip="10.20.0.3"), endpoint("y", ip="10.20.0.3")], stored)
    # a moves off .5 and a new 0a (named before it) takes it, in one plan
    swap = plan_apply([endpoint("0a", ip="10.20.0.5"), endpoint("a", ip="10.20.0.6")], stored)
    assert swap.add_claims == {("blue", A("10.20.0.5")): "0a", ("blue", A("10.20.0.6")): "a"}
    assert swap.drop_claims == ()
    with pytest.raises(PlanError, match=r"^endpoint q: no tenant network nope$"):
        plan_apply([endpoint("q", "nope")], stored)


def test_refusals_name_every_endpoint_in_the_way():
    blue = tenant()
    stored = stored_of(blue, endpoint("a"), endpoint("b"),
                       claims=[("blue", "10.20.0.1", "a"), ("blue", "10.20.0.2", "b")])
    with pytest.raises(PlanError, match=r"^tenant network blue is used by endpoints a, b: detach"):
        plan_delete([("TenantNetwork", "blue")], stored)
    with pytest.raises(PlanError, match=r"but endpoints a, b use it: detach them first$"):
        plan_apply([tenant(subnet="10.21.0.0/24")], stored)
    with pytest.raises(PlanError, match=r"^--prune would delete tenant network blue, which endpoints a, b use"):
        plan_apply([tenant("red", 5002)], stored, prune=True)
    with pytest.raises(PlanError, match=r"^no such object: Endpoint x, TenantNetwork y$"):
        plan_delete([("Endpoint", "x"), ("TenantNetwork", "y")], stored)
    # the tenant and its endpoints named together need no --force
    assert len(plan_delete([("TenantNetwork", "blue"), ("Endpoint", "a"), ("Endpoint", "b")], stored).changes) == 3
    # a prune that deletes an endpoint still checks the tenants after it
    with pytest.raises(PlanError, match="which endpoints c use"):
        plan_apply([tenant("red", 5002), endpoint("c", ip="10.20.0.9")], stored, prune=True)
    # a subnet change whose endpoints go in the same plan (pruned) is fine
    moved = plan_apply([tenant(subnet="10.21.0.0/24"), endpoint("c", ip="10.21.0.9")], stored, prune=True)
    assert [(c.action, c.key[1]) for c in moved.changes] == [("add", "c"), ("change", "blue"), ("delete", "a"),
                                                            ("delete", "b")]
    pruned = plan_apply([blue], stored_of(blue, tenant("red", 5002)), prune=True)
    assert pruned.changes[0].before == tenant("red", 5002)


def test_the_diff_shows_every_field_and_address():
    blue = tenant()
    stored = stored_of(blue, endpoint("a"), claims=[("blue", "10.20.0.5", "a")])
    changed = tenant(vni=6000, gateway="10.20.0.1", description="x")
    labelled = parse_object({"apiVersion": "netd/v1", "kind": "TenantNetwork",
                             "metadata": {"name": "blue", "labels": {"team": "a"}},
                             "spec": {"vni": 5001, "subnet": "10.20.0.0/24"}})[0]
    assert render_plan(plan_apply([changed], stored)) == (
        "~ TenantNetwork blue\n    spec.description: (absent) -> 'x'\n    spec.gateway: (absent) -> '10.20.0.1'\n"
        "    spec.vni: 5001 -> 6000")
    assert render_plan(plan_apply([labelled], stored)) == "~ TenantNetwork blue\n    metadata.labels: (absent) -> " \
                                                          "{'team': 'a'}"
    assert render_plan(plan_apply([endpoint("a", ip="10.20.0.9")], stored)) == (
        "~ Endpoint a\n    spec.ip: (absent) -> '10.20.0.9'\n+ address 10.20.0.9 in tenant blue for endpoint a\n"
        "- address 10.20.0.5 in tenant blue")
