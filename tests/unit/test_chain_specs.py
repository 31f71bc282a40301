"""ServiceFunction and ServiceChain documents: the schema, the rules between them and the
tenants and endpoints they name, and delete/prune refusals for what chains still use."""

from __future__ import annotations

import pytest

from netd.core.specplan import PlanError, Stored, plan_apply, plan_delete
from netd.model.specs import check_objects, classifiers_meet, parse_object
from tests.unit.test_specs import doc, endpoint, issues_of, tenant


def sf(name="fw", tenant="blue", ingress="fw-in", egress="fw-out"):
    obj, issues = parse_object(doc("ServiceFunction", name, tenant=tenant, ingress=ingress, egress=egress))
    assert obj is not None, issues
    return obj


def chain(name="web", tenant="blue", hops=("fw",), classifier=None, **spec):
    obj, issues = parse_object(doc("ServiceChain", name, tenant=tenant, hops=list(hops),
                                   classifier=classifier if classifier is not None else {"protocol": "tcp"}, **spec))
    assert obj is not None, issues
    return obj


def legs(prefix="fw", host="h2", ns=None, tenant="blue", n=21):
    ns = ns or prefix
    return [endpoint(f"{prefix}-in", tenant, f"10.20.0.{n}", netns=ns, interface="in0", host=host),
            endpoint(f"{prefix}-out", tenant, f"10.20.0.{n + 1}", netns=ns, interface="out0", host=host)]


BASE = [tenant(), tenant("red", 5002), endpoint("client", ip="10.20.0.11"), endpoint("server", ip="10.20.0.12"),
        *legs(), sf()]


@pytest.mark.parametrize("spec,want", [
    ({"tenant": "blue", "classifier": {}, "hops": []}, [("spec.hops", "List should have at least 1 item after "
                                                                      "validation, not 0, found []")]),
    ({"tenant": "blue", "classifier": {}, "hops": ["fw", ["a", "fw"]]},
     [("spec.hops", "service function fw is in the chain twice (a frame could not tell which of its visits it "
                    "is on)")]),
    ({"tenant": "blue", "classifier": {"protocol": "icmp", "destinationPorts": [80]}, "hops": ["fw"]},
     [("spec.classifier", "ports need protocol tcp or udp")]),
    ({"tenant": "blue", "classifier": {"protocol": "tcp", "destinationPorts": ["90-80"]}, "hops": ["fw"]},
     [("spec.classifier.destinationPorts.0", "expected ports 1 to 65535, low to high, found '90-80'")]),
    ({"tenant": "blue", "classifier": {"protocol": "tcp", "sourcePorts": [0]}, "hops": ["fw"]},
     [("spec.classifier.sourcePorts.0", "expected ports 1 to 65535, low to high, found 0")]),
    ({"tenant": "blue", "classifier": {"protocol": "sctp"}, "hops": ["fw"]},
     [("spec.classifier.protocol", "Input should be 'tcp', 'udp' or 'icmp', found 'sctp'")]),
    ({"tenant": "blue", "classifier": {"source": "10.20.0.300/32"}, "hops": ["fw"]},
     [("spec.classifier.source", "expected an IPv4 CIDR such as 10.20.0.0/28, found '10.20.0.300/32' "
                                 "(Octet 300 (> 255) not permitted in '10.20.0.300')")]),
    ({"tenant": "blue", "classifier": {"source": "Web_1"}, "hops": ["fw"]},
     [("spec.classifier.source", "expected a DNS label (a-z, 0-9 and '-', at most 63, starting and ending with a "
                                 "letter or digit), found 'Web_1'")]),
    ({"tenant": "blue", "classifier": {}, "hops": ["fw"], "onHopDown": "ignore"},
     [("spec.onHopDown", "Input should be 'drop' or 'bypass', found 'ignore'")]),
    ({"tenant": "blue", "classifier": {}, "hops": ["fw"], "priority": 1001},
     [("spec.priority", "Input should be less than or equal to 1000, found 1001")]),
    ({"tenant": "blue", "classifier": {}, "hops": ["fw"], "symmetric": "yes"},
     [("spec.symmetric", "Input should be a valid boolean, found 'yes'")]),
    ({"tenant": "blue", "classifier": {"dport": 80}, "hops": ["fw"]}, [("spec.classifier.dport", "unknown field")]),
])
def test_chain_schema_errors_name_the_field(spec, want):
    assert issues_of(doc("ServiceChain", "web", **spec)) == want


def test_a_port_range_and_one_port_are_kept_as_written():
    c = chain(classifier={"protocol": "udp", "destinationPorts": [53, "8000-8080"], "sourcePorts": ["1024-1024"]})
    assert c.spec.classifier.destinationPorts == [(53, 53), (8000, 8080)]
    assert c.model_dump(mode="json")["spec"]["classifier"]["destinationPorts"] == [53, "8000-8080"]
    assert c.model_dump(mode="json")["spec"]["classifier"]["sourcePorts"] == [1024]
    assert chain(hops=["fw", ["a", "b"]]).spec.hops == [["fw"], ["a", "b"]]


def found(objs, stored=()):
    return [(i.index, i.field, i.message) for i in check_objects(list(enumerate(objs)), stored)]


@pytest.mark.parametrize("objs,want", [
    ([*BASE, chain()], []),
    ([*BASE, sf("x", ingress="nope", egress="fw-out")],
     [(6, "spec.egress", "endpoint fw-out is a leg of service function x too: a leg belongs to one function"),
      (7, "spec.egress", "endpoint fw-out is a leg of service function fw too: a leg belongs to one function"),
      (7, "spec.ingress", "no Endpoint 'nope' (neither in these files nor stored)")]),
    ([*BASE[:-1], sf(ingress="fw-in", egress="fw-in")],
     [(6, "spec.egress", "the ingress and egress legs are one endpoint (fw-in): a function needs two")]),
    ([*BASE[:4], endpoint("fw-in", ip="10.20.0.21", host="h2", netns="a"),
      endpoint("fw-out", ip="10.20.0.22", host="h3", netns="a", interface="out0"), sf()],
     [(6, "spec.egress", "the legs are in two places (netns a on h2, netns a on h3): a function's legs are in "
                         "one target")]),
    ([*BASE, endpoint("r-in", "red", "10.20.0.31"), sf("x", ingress="r-in", egress="fw-in")],
     [(6, "spec.ingress", "endpoint fw-in is a leg of service function x too: a leg belongs to one function"),
      (8, "spec.egress", "endpoint fw-in is a leg of service function fw too: a leg belongs to one function"),
      (8, "spec.ingress", "endpoint r-in is in tenant red, not blue")]),
    ([*BASE, sf("x", tenant="green", ingress="c1", egress="c2")],
     [(7, "spec.egress", "no Endpoint 'c2' (neither in these files nor stored)"),
      (7, "spec.ingress", "no Endpoint 'c1' (neither in these files nor stored)"),
      (7, "spec.tenant", "no TenantNetwork 'green' (neither in these files nor stored)")]),
    ([*BASE, chain(hops=["fw", "nope"])],
     [(7, "spec.hops.1.0", "no ServiceFunction 'nope' (neither in these files nor stored)")]),
    ([*BASE, chain(tenant="red")],
     [(7, "spec.hops.0.0", "service function fw is in tenant blue, not red")]),
    ([*BASE, chain(tenant="green")],
     [(7, "spec.hops.0.0", "service function fw is in tenant blue, not green"),
      (7, "spec.tenant", "no TenantNetwork 'green' (neither in these files nor stored)")]),
    ([*BASE, chain(classifier={"source": "10.21.0.0/24", "destination": "10.20.0.0/16"})],
     [(7, "spec.classifier.destination", "10.20.0.0/16 is not inside tenant blue's subnet 10.20.0.0/24"),
      (7, "spec.classifier.source", "10.21.0.0/24 is not inside tenant blue's subnet 10.20.0.0/24")]),
    ([*BASE, chain(classifier={"source": "fw-in"})],
     [(7, "spec.classifier.source", "endpoint fw-in is a leg of service function fw: legs carry chained traffic, "
                                    "not their own")]),
    ([*BASE, chain(classifier={"destination": "ghost"})],
     [(7, "spec.classifier.destination", "no Endpoint 'ghost' in tenant blue")]),
])
def test_function_and_chain_rules(objs, want):
    assert found(objs) == want


def test_two_chains_taking_the_same_traffic_at_one_priority_are_refused_both_named():
    a = chain("a", classifier={"protocol": "tcp", "destinationPorts": ["80-90"]})
    b = chain("b", classifier={"protocol": "tcp", "destinationPorts": [85], "destination": "server"})
    assert found([*BASE, a, b]) == [
        (7, "spec.classifier", "its traffic is also chain b's traffic at priority 0: give one a higher "
                               "spec.priority, or narrow a classifier"),
        (8, "spec.classifier", "its traffic is also chain a's traffic at priority 0: give one a higher "
                               "spec.priority, or narrow a classifier")]
    assert found([*BASE, a, chain("b", classifier=b.spec.classifier.model_dump(mode="json"), priority=1)]) == []
    assert found([*BASE, a, chain("b", classifier={"protocol": "tcp", "destinationPorts": [91]})]) == []
    assert found([*BASE, a, chain("b", classifier={"protocol": "udp", "destinationPorts": [85]})]) == []
    # a symmetric chain's replies count: b's traffic (from port 85, to 1000) is a's replies
    sym = chain("a", classifier={"protocol": "tcp", "destinationPorts": [85]}, symmetric=True)
    rev = chain("b", classifier={"protocol": "tcp", "sourcePorts": [85], "destinationPorts": [1000]})
    assert found([*BASE, sym, rev])[0] == (7, "spec.classifier", "its replies are also chain b's traffic at priority "
                                                                 "0: give one a higher spec.priority, or narrow a "
                                                                 "classifier")
    assert found([*BASE, chain("a", classifier={"protocol": "tcp", "destinationPorts": [85]}), rev]) == []
    # stored chains are checked against the new ones, and only the new one is reported
    assert [i for i, *_ in found([*BASE, b], [a])] == [7]


@pytest.mark.parametrize("x,y,meet", [
    ({"source": "client"}, {"source": "server"}, False),  # two endpoints: one address each
    ({"source": "client"}, {"source": "10.20.0.11/32"}, True),
    ({"source": "client"}, {"source": "10.20.0.12/32"}, False),
    ({"source": "10.20.0.0/25"}, {"source": "10.20.0.128/25"}, False),
    ({"protocol": "tcp", "sourcePorts": [1]}, {"protocol": "tcp", "sourcePorts": [2]}, False),
    ({"protocol": "tcp", "sourcePorts": ["1-2"]}, {"protocol": "tcp", "sourcePorts": ["2-3"]}, True),
    ({"protocol": "tcp"}, {}, True),
    ({"destination": "unaddressed"}, {"destination": "10.20.0.12/32"}, True),  # could be anywhere
])
def test_classifiers_meet(x, y, meet):
    eps = {e.metadata.name: e for e in [endpoint("client", ip="10.20.0.11"), endpoint("server", ip="10.20.0.12"),
                                        endpoint("unaddressed")]}
    cx, cy = chain("x", classifier=x).spec.classifier, chain("y", classifier=y).spec.classifier
    assert classifiers_meet(cx, cy, eps) is meet and classifiers_meet(cy, cx, eps) is meet


def stored(objs):
    return Stored({(o.kind, o.metadata.name): (o, 1) for o in objs})


def test_deleting_what_a_chain_uses_is_refused_unless_forced():
    s = stored([*BASE, chain()])
    with pytest.raises(PlanError, match="service function fw is used by service chains web: delete them first"):
        plan_delete([("ServiceFunction", "fw")], s)
    with pytest.raises(PlanError, match="endpoint fw-in is used by service functions fw: delete them first"):
        plan_delete([("Endpoint", "fw-in")], s)
    forced = plan_delete([("ServiceFunction", "fw")], s, force=True)
    assert {c.key for c in forced.changes} == {("ServiceFunction", "fw"), ("ServiceChain", "web")}
    everything = plan_delete([("TenantNetwork", "blue")], s, force=True)
    assert {k for k, _ in (c.key for c in everything.changes)} == {"TenantNetwork", "Endpoint", "ServiceFunction",
                                                                   "ServiceChain"}
    with pytest.raises(PlanError, match="--prune would delete service function fw, which service chains web use"):
        plan_apply([sf("other", ingress="fw-in", egress="fw-out")], s, prune=True)


@pytest.mark.parametrize("classifier,refused", [
    ({"protocol": "tcp"}, True),                                             # every tcp frame, both ways
    ({}, True),
    ({"source": "10.20.0.0/25", "destination": "10.20.0.0/25"}, True),
    ({"source": "client", "destination": "10.20.0.11/32"}, True),            # client's address both ways
    ({"protocol": "tcp", "sourcePorts": [80], "destinationPorts": [80]}, True),
    ({"protocol": "tcp", "destinationPorts": [80]}, False),                  # replies come from port 80
    ({"source": "client", "destination": "server"}, False),
    ({"source": "client"}, False),
    ({"source": "10.20.0.0/25", "destination": "10.20.0.0/24"}, False),
])
def test_a_symmetric_chain_must_tell_its_replies_from_its_traffic(classifier, refused):
    sym = chain(classifier=classifier, symmetric=True)
    issues = [(f, m) for _, f, m in found([*BASE, sym])]
    want = [("spec.symmetric", "the classifier takes the same traffic both ways (its source and destination, and "
                               "its source and destination ports, are the same), so replies cannot be told from "
                               "traffic: narrow one side, or set symmetric: false")]
    assert issues == (want if refused else [])
    assert found([*BASE, chain(classifier=classifier)]) == []  # not symmetric: fine
