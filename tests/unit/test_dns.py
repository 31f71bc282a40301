"""DNS for published endpoints: names, answers, and the wire format (dnslib)."""

from __future__ import annotations

import ipaddress

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from netd.adapters.dns import respond
from netd.core.dns import NOERROR, NXDOMAIN, Answer, Published, answer, parse_published, unit_label

A = ipaddress.IPv4Address
EPS = [Published("web", "web@1.service", A("10.5.1.10"), ((80, "tcp"),), "m1"),
       Published("web", "web@2.service", A("10.5.2.10"), ((80, "tcp"), (443, "tcp")), "m2"),
       Published("db", "db.service", A("10.5.3.10"), (), "m3")]


@pytest.mark.parametrize("unit,label", [("web@1.service", "web-1"), ("db.service", "db"), ("API_2", "api-2"),
                                        ("@.service", "unit")])
def test_unit_labels(unit, label):
    assert unit_label(unit) == label


@pytest.mark.parametrize("qname,qtype,want", [
    ("web-1.web.netd.local", "A", (NOERROR, [Answer("A", "web-1.web.netd.local", ip="10.5.1.10")])),
    ("WEB-1.Web.NETD.local.", "A", (NOERROR, [Answer("A", "web-1.web.netd.local", ip="10.5.1.10")])),
    ("web.netd.local", "A", (NOERROR, [Answer("A", "web.netd.local", ip="10.5.1.10"),
                                       Answer("A", "web.netd.local", ip="10.5.2.10")])),
    ("web.netd.local", "SRV", (NOERROR, [Answer("SRV", "web.netd.local", port=80, target="web-1.web.netd.local"),
                                         Answer("SRV", "web.netd.local", port=80, target="web-2.web.netd.local"),
                                         Answer("SRV", "web.netd.local", port=443, target="web-2.web.netd.local")])),
    ("db.netd.local", "SRV", (NOERROR, [])),  # a name without ports: no data, not NXDOMAIN
    ("db.netd.local", "AAAA", (NOERROR, [])),
    ("nope.netd.local", "A", (NXDOMAIN, [])),
    ("web-3.web.netd.local", "A", (NXDOMAIN, [])),
    ("example.com", "A", (NXDOMAIN, [])),
])
def test_answers(qname, qtype, want):
    assert answer(qname, qtype, EPS, "netd.local") == want


def test_published_records_parse_as_the_agent_writes_them():
    p = parse_published("web", "web@1.service", {"ip": "10.5.1.10", "machine": "m1", "unit": "web@1.service",
                                                 "ports": [{"port": 80, "protocol": "tcp", "name": "http"}]})
    assert p == EPS[0]
    with pytest.raises(ValueError):
        parse_published("web", "x", {"ip": "not-an-ip"})
    with pytest.raises(KeyError):
        parse_published("web", "x", {"ports": []})


def test_the_wire_format():
    q = DNSRecord.question("web.netd.local", "SRV")
    reply = DNSRecord.parse(respond(bytes(q.pack()), EPS, "netd.local"))
    assert reply.header.id == q.header.id and reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
    assert sorted((str(r.rdata.target), r.rdata.port) for r in reply.rr) == [
        ("web-1.web.netd.local.", 80), ("web-2.web.netd.local.", 80), ("web-2.web.netd.local.", 443)]
    assert sorted(str(r.rdata) for r in reply.ar) == ["10.5.1.10", "10.5.2.10"]  # the targets' addresses
    assert all(r.ttl == 1 for r in reply.rr + reply.ar)
    a = DNSRecord.parse(respond(bytes(DNSRecord.question("db.service.db.netd.local", "A").pack()), EPS, "netd.local"))
    assert a.header.rcode == RCODE.NXDOMAIN
    one = DNSRecord.parse(respond(bytes(DNSRecord.question("db.db.netd.local", "A").pack()), EPS, "netd.local"))
    assert [(QTYPE[r.rtype], str(r.rdata)) for r in one.rr] == [("A", "10.5.3.10")]
    other = DNSRecord.parse(respond(bytes(DNSRecord.question("example.com", "A").pack()), EPS, "netd.local"))
    assert other.header.rcode == RCODE.REFUSED and not other.rr  # no recursion: said, not timed out
    assert respond(b"\x00garbage", EPS, "netd.local") is None


@pytest.mark.parametrize("unit,label", [("-web-@-1-.service", "web---1"), ("x" * 80 + ".service", "x" * 63),
                                        ("a" * 62 + "_b.service", "a" * 62), ("X.service", "x")])
def test_unit_labels_are_dns_labels(unit, label):
    assert unit_label(unit) == label


def test_published_records_defaults_and_refusals():
    p = parse_published("s", "u", {"ip": "10.5.1.2"})
    assert (p.ports, p.machine) == ((), "")
    assert parse_published("s", "u", {"ip": "10.5.1.2", "ports": [{"port": "53"}]}).ports == ((53, "tcp"),)
    with pytest.raises(ValueError, match="^ports: expected a list$"):
        parse_published("s", "u", {"ip": "10.5.1.2", "ports": "80"})


def test_names_in_another_case_a_trailing_dot_a_domain_given_with_a_dot_and_deeper_names():
    assert answer("db.db.NETD.local.", "A", EPS, "netd.local.")[1] == [Answer("A", "db.db.netd.local",
                                                                             ip="10.5.3.10")]
    assert answer("x.db.db.netd.local", "A", EPS, "netd.local") == (NXDOMAIN, [])  # no such service db.db
    assert answer("netd.local", "A", EPS, "netd.local") == (NXDOMAIN, [])
    both = answer("web-2.web.netd.local", "ANY", EPS, "netd.local")[1]
    assert [a.rtype for a in both] == ["A", "SRV", "SRV"]
