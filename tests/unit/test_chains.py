"""The service-chain compiler and trace (netd.core.chains): golden flows for each host of a
3-host chain, the decisions in tables, and properties the steering rests on."""

from __future__ import annotations

import ipaddress
import re

import pytest

from netd.core.chains import (
    DELIVER,
    DROP,
    GROUP_BASE,
    ChainState,
    HopState,
    Packet,
    World,
    chain_cookie,
    chain_ids,
    classifier_matches,
    classifier_takes,
    classify,
    compile_chains,
    compile_switch,
    group_ids,
    is_chain_cookie,
    is_ours_group,
    next_stop,
    plan_chain,
    port_masks,
    trace_packet,
)
from netd.core.tenants import RESTORE_SOURCE_MAC, LocalPort, RemoteEndpoint, SwitchView, is_ours, leg_tag
from netd.model.specs import Classifier, parse_object
from tests.unit.test_tenant_flows import check_golden

A = ipaddress.IPv4Address
H = {1: A("10.250.1.11"), 2: A("10.250.1.12"), 3: A("10.250.1.13")}


def obj(kind: str, name: str, spec: dict) -> object:
    o, issues = parse_object({"apiVersion": "netd/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})
    assert o is not None, issues
    return o


BLUE = obj("TenantNetwork", "blue", {"vni": 5001, "subnet": "10.30.0.0/24"})
#: endpoint -> (host, address)
EPS = {"client": (1, "10.30.0.11"), "server": (1, "10.30.0.12"), "other": (3, "10.30.0.13"),
       "fw-in": (2, "10.30.0.21"), "fw-out": (2, "10.30.0.22"),
       "mon-in": (3, "10.30.0.31"), "mon-out": (3, "10.30.0.32"),
       "mon2-in": (1, "10.30.0.41"), "mon2-out": (1, "10.30.0.42")}
def _target(name: str) -> dict:
    """A leg lives in its function's namespace, as `in0`/`out0`; the other endpoints in their own."""
    sf, _, leg = name.rpartition("-")
    return {"netns": sf, "interface": f"{leg}0"} if leg in ("in", "out") else {"netns": name}


ENDPOINTS = {n: obj("Endpoint", n, {"tenant": "blue", "host": f"h{h}", "ip": ip, **_target(n)})
             for n, (h, ip) in EPS.items()}
ADDRESSES = {n: A(ip) for n, (_, ip) in EPS.items()}
FUNCS = {n: obj("ServiceFunction", n, {"tenant": "blue", "ingress": f"{n}-in", "egress": f"{n}-out"})
         for n in ("fw", "mon", "mon2")}
WEB = obj("ServiceChain", "web", {"tenant": "blue", "symmetric": True, "hops": ["fw", ["mon", "mon2"]],
                                  "classifier": {"source": "client", "destination": "server", "protocol": "tcp",
                                                 "destinationPorts": [80, "8000-8015"]}})


def test_the_fixtures_are_valid_specs():
    from netd.model.specs import check_objects

    assert check_objects(list(enumerate([BLUE, *ENDPOINTS.values(), *FUNCS.values(), WEB])), []) == []


def view(host: int, down: frozenset[str] = frozenset(), chains: tuple = (WEB,)) -> SwitchView:
    """Host ``host``'s view: its endpoints as ports 1.. in name order, the others behind their host;
    ``down``: endpoints not wired (a leg of those is not in the view at all)."""
    local, remote, port = [], [], 1
    for name in sorted(EPS):
        h, ip = EPS[name]
        if name in down:
            continue
        mac = "0a:58:" + ":".join(f"{b:02x}" for b in A(ip).packed)
        if h == host:
            local.append(LocalPort("blue", name, port, mac, A(ip)))
            port += 1
        else:
            remote.append(RemoteEndpoint("blue", name, mac, A(ip), H[h]))
    return SwitchView((BLUE,), tuple(local), tuple(remote), 9, tuple(v for k, v in H.items() if k != host),
                      tuple(FUNCS.values()), chains, tuple(sorted(ADDRESSES.items())))


def program_text(host: int) -> str:
    prog = compile_switch(view(host))
    return "\n".join([f.text() for f in prog.flows] + [g.text() for g in prog.groups]) + "\n"


@pytest.mark.parametrize("host", [1, 2, 3])
def test_a_symmetric_chain_across_three_hosts_golden(host):
    check_golden(f"chain_web_h{host}.flows", program_text(host))


# -- port ranges and classifiers ------------------------------------------------------------------

@pytest.mark.parametrize("low,high", [(1, 1), (80, 80), (1, 65535), (8000, 8015), (8000, 8080), (1023, 1025),
                                      (0, 65535), (65535, 65535), (32768, 65535), (3, 12)])
def test_port_masks_cover_exactly_the_range(low, high):
    masks = port_masks(low, high)
    covered = {p for p in range(max(0, low - 70), min(65536, high + 70)) if any(p & m == v for v, m in masks)}
    assert covered == set(range(max(0, low - 70), min(65536, high + 70))) & set(range(low, high + 1))
    assert all(v & ~m & 0xFFFF == 0 for v, m in masks)  # no value bit outside its mask


def test_port_masks_are_few():
    assert port_masks(80, 80) == [(80, 0xFFFF)]
    assert port_masks(8000, 8015) == [(8000, 0xFFF0)]
    assert port_masks(1, 65535) == [(1, 0xFFFF), (2, 0xFFFE), (4, 0xFFFC), (8, 0xFFF8), (16, 0xFFF0), (32, 0xFFE0),
                                    (64, 0xFFC0), (128, 0xFF80), (256, 0xFF00), (512, 0xFE00), (1024, 0xFC00),
                                    (2048, 0xF800), (4096, 0xF000), (8192, 0xE000), (16384, 0xC000),
                                    (32768, 0x8000)]


def cl(**kw) -> Classifier:
    return Classifier.model_validate(kw)


@pytest.mark.parametrize("c,want", [
    (cl(), ["ip"]),
    (cl(protocol="icmp"), ["icmp"]),
    (cl(source="client", destination="10.30.0.0/28", protocol="udp"), ["udp,nw_src=10.30.0.11,nw_dst=10.30.0.0/28"]),
    (cl(destination="10.30.0.12/32", protocol="tcp", destinationPorts=[80]), ["tcp,nw_dst=10.30.0.12,tp_dst=80"]),
    (cl(protocol="tcp", sourcePorts=["1024-1025"], destinationPorts=[22, 443]),
     ["tcp,tp_src=0x400/0xfffe,tp_dst=22", "tcp,tp_src=0x400/0xfffe,tp_dst=443"]),
    (cl(source="nobody"), "endpoint nobody has no address yet"),
])
def test_classifier_matches(c, want):
    assert classifier_matches(c, ADDRESSES) == want


@pytest.mark.parametrize("p,takes", [
    (Packet(A("10.30.0.11"), A("10.30.0.12"), "tcp", 40000, 80), True),
    (Packet(A("10.30.0.11"), A("10.30.0.12"), "tcp", 40000, 8015), True),
    (Packet(A("10.30.0.11"), A("10.30.0.12"), "tcp", 40000, 8016), False),
    (Packet(A("10.30.0.11"), A("10.30.0.12"), "tcp", 40000, 7999), False),
    (Packet(A("10.30.0.11"), A("10.30.0.12"), "udp", 40000, 80), False),
    (Packet(A("10.30.0.11"), A("10.30.0.12"), "icmp"), False),
    (Packet(A("10.30.0.13"), A("10.30.0.12"), "tcp", 40000, 80), False),
    (Packet(A("10.30.0.11"), A("10.30.0.13"), "tcp", 40000, 80), False),
])
def test_classifier_takes_what_its_flows_match(p, takes):
    c = WEB.spec.classifier
    assert classifier_takes(c, ADDRESSES, p) is takes
    # the same packet against the match strings: the one tp_dst value/mask pair that covers it
    ok = any(_match_takes(m, p) for m in classifier_matches(c, ADDRESSES))
    assert ok is takes


def _match_takes(match: str, p: Packet) -> bool:
    """A small reading of the match strings this compiler writes (tcp/udp/icmp/ip, nw_*, tp_*)."""
    fields = match.split(",")
    if fields[0] not in ("ip", p.proto):
        return False
    for f in fields[1:]:
        k, v = f.split("=")
        if k in ("nw_src", "nw_dst"):
            if (p.src if k == "nw_src" else p.dst) not in ipaddress.IPv4Network(v):
                return False
        else:
            value, _, mask = v.partition("/")
            port = p.sport if k == "tp_src" else p.dport
            m = int(mask, 16) if mask else 0xFFFF
            if port is None or port & m != int(value, 0) & m:
                return False
    return True


# -- states and the next stop -----------------------------------------------------------------------

def state(live: list[tuple[str, ...]], on_down: str = "drop") -> ChainState:
    chain = obj("ServiceChain", "c", {"tenant": "blue", "classifier": {}, "onHopDown": on_down,
                                      "hops": [list(h) or [f"x{i}"] for i, h in enumerate(live)]})
    return ChainState(chain, 5001, tuple(HopState(i, tuple(chain.spec.hops[i]), live[i]) for i in range(len(live))))


@pytest.mark.parametrize("live,on_down,forward,after,want", [
    ([("a",), ("b",), ("c",)], "drop", True, None, 0),
    ([("a",), ("b",), ("c",)], "drop", True, 0, 1),
    ([("a",), ("b",), ("c",)], "drop", True, 2, DELIVER),
    ([("a",), ("b",), ("c",)], "drop", False, None, 2),
    ([("a",), ("b",), ("c",)], "drop", False, 2, 1),
    ([("a",), ("b",), ("c",)], "drop", False, 0, DELIVER),
    ([("a",), (), ("c",)], "drop", True, None, DROP),   # fails closed where it is classified
    ([("a",), (), ("c",)], "drop", True, 0, DROP),      # and in flight
    ([("a",), (), ("c",)], "bypass", True, 0, 2),       # fails open: skips the hop
    ([("a",), (), ("c",)], "bypass", False, 2, 0),
    ([(), (), ()], "bypass", True, None, DELIVER),
    ([(), ("b",)], "bypass", False, 1, DELIVER),
])
def test_next_stop(live, on_down, forward, after, want):
    assert next_stop(state(live, on_down), forward, after) == want


def test_chain_states_say_what_is_missing_and_what_that_does():
    assert state([("a",), ("b",)]).state == "ready" and state([("a",), ("b",)]).kind == "ready"
    assert state([("a",), ()]).kind == "hop_missing" and state([(), ()], "bypass").kind == "hop_missing"
    assert plan_chain(WEB, 5001, lambda sf: False, {}).kind == "not_classifying"
    assert state([("a",), ()]).state == "hop missing: 2 (x1): its traffic is dropped"
    assert state([(), ("b",)], "bypass").state == "hop missing: 1 (x0): bypassed"
    web = plan_chain(WEB, 5001, lambda sf: sf != "mon", ADDRESSES)
    assert web.state == "ready" and web.hops[1].live == ("mon2",)  # one of two: the hop is up
    assert plan_chain(WEB, 5001, lambda sf: sf == "fw", ADDRESSES).state == \
        "hop missing: 2 (mon/mon2): its traffic is dropped"
    assert plan_chain(WEB, 5001, lambda sf: True, {}).state == "not classifying: endpoint client has no address yet"


def test_group_ids_are_stable_and_distinct():
    ids = group_ids(["web/1/fwd", "web/1/rev", "api/0/fwd"])
    assert len(set(ids.values())) == 3 and all(is_ours_group(i) for i in ids.values())
    assert group_ids(["web/1/fwd", "zzz/0/fwd"])["web/1/fwd"] == ids["web/1/fwd"]  # others do not move it
    assert not is_ours_group(1) and not is_ours_group(GROUP_BASE - 1)


def test_cookies_are_netds_and_each_chain_and_hop_has_its_own():
    ids = chain_ids(["web", "api"])
    c = chain_cookie(ids["web"])
    assert is_ours(c) and is_chain_cookie(c) and not is_chain_cookie(0x4E45544400001389)
    assert len({chain_cookie(ids["web"]), chain_cookie(ids["api"]), chain_cookie(ids["web"], 0),
                chain_cookie(ids["web"], 1), chain_cookie(ids["web"], 1, 1)}) == 5
    assert chain_cookie(ids["web"], 15, 15) >> 9 == c >> 9  # hop bits stay below the chain's
    assert chain_cookie(0x3FFFFF, 30, 15) & 0xFFFFFFFF == 0xFFFFFFFF  # every field in its own bits


def test_chain_ids_never_clash():
    """api-ssh-196 and api-metrics-10 share 22 bits of their CRC: each still gets an id of its own."""
    import zlib

    a, b = "api-ssh-196", "api-metrics-10"
    assert zlib.crc32(a.encode()) & 0x3FFFFF == zlib.crc32(b.encode()) & 0x3FFFFF
    ids = chain_ids([a, b, "web"])
    assert len(set(ids.values())) == 3 and ids["web"] == chain_ids(["web"])["web"]
    assert max(ids.values()) <= 0x3FFFFF


# -- properties of the compiled program --------------------------------------------------------------

def test_legs_get_no_broadcast_no_arp_answer_and_no_forwarding_by_mac():
    for host in (1, 2, 3):
        v = view(host)
        leg_ports = {str(p.ofport) for p in v.local if p.endpoint in v.legs}
        leg_macs = {("0a:58:" + ":".join(f"{b:02x}" for b in p.ip.packed)) for p in v.local + v.remote
                    if p.endpoint in v.legs}
        for f in compile_switch(v).flows:
            if "dl_dst=01:00" in f.match:
                assert not set(re.findall(r"output:(\d+)", f.actions)) & leg_ports, f.text()
            assert not any(f"dl_dst={m}" in f.match for m in leg_macs), f.text()
            assert not any(f"arp_tpa={ADDRESSES[n]}" in f.match for n in v.legs), f.text()


def test_a_leg_sends_ip_only_into_the_chains_table_and_is_never_classified_as_a_sender():
    v = view(2)
    flows = compile_switch(v).flows
    for p in v.local:
        if p.endpoint in v.legs:
            admit = [f for f in flows if f.table == 0 and f.match.startswith(f"in_port={p.ofport},")]
            assert [(f.match, f.actions) for f in admit] == [
                (f"in_port={p.ofport},ip", "set_field:0x1389->reg0,set_field:3->reg1,resubmit(,5)")]


def test_tunnelled_frames_to_a_leg_carry_its_tag_and_have_their_source_mac_restored():
    h1 = compile_switch(view(1))
    to_fw = [f for f in h1.flows if f.table == 5 and "reg1=1" in f.match and "nw_src=10.30.0.11" in f.match]
    assert to_fw and all(f.actions.startswith(f"set_field:{leg_tag(A('10.30.0.21'))}->eth_src,set_field:0x1389->"
                                              "tun_id,set_field:10.250.1.12->tun_dst,output:9") for f in to_fw)
    h2 = compile_switch(view(2))
    fw_in = next(p for p in view(2).local if p.endpoint == "fw-in")
    (rx,) = [f for f in h2.flows if f"dl_src={leg_tag(fw_in.ip)}" in f.match]
    assert rx.table == 10 and "reg1=2" in rx.match and rx.actions.endswith(f"output:{fw_in.ofport}")
    assert rx.actions.startswith(RESTORE_SOURCE_MAC)
    assert RESTORE_SOURCE_MAC == ("move:NXM_OF_IP_SRC[]->NXM_OF_ETH_SRC[0..31],"
                                  "set_field:0a:58:00:00:00:00/ff:ff:00:00:00:00->eth_src")


def test_a_spread_hop_is_one_select_group_each_way_with_the_same_buckets_in_the_same_order():
    """Symmetric replies meet the function their traffic went through: OVS's symmetric hash over the
    same buckets (h2 selects for the traffic after fw, h1 for the replies from the server)."""
    fwd = compile_chains(view(2)).groups
    rev = compile_chains(view(1)).groups
    to_mon = {g.group_id: g for g in fwd if any("10.250.1.13" in a for _, a in g.buckets)}
    assert len(fwd) == 1 and len(to_mon) == 1
    (g_fwd,) = fwd
    (g_rev,) = [g for g in rev if g.group_id != g_fwd.group_id]
    assert "selection_method=hash," in g_fwd.text() and "fields" not in g_fwd.text()
    # bucket i is function i of the hop, both ways: mon (h3) then mon2 (h1)
    assert [i for i, _ in g_fwd.buckets] == [i for i, _ in g_rev.buckets] == [0, 1]
    (_, f0), (_, f1) = g_fwd.buckets
    (_, r0), (_, r1) = g_rev.buckets
    assert leg_tag(A("10.30.0.31")) in f0 and "10.250.1.13" in f0 and leg_tag(A("10.30.0.41")) in f1  # ingresses
    assert leg_tag(A("10.30.0.32")) in r0 and r1.startswith("output:")  # egresses


def test_a_function_down_in_a_spread_hop_keeps_the_others_bucket_ids():
    """OVS scores buckets by id: renumbering the survivors would move flows that were on them."""
    three = obj("ServiceChain", "web", {**WEB.model_dump(mode="json")["spec"], "hops": ["fw", ["mon", "fw2", "mon2"]]})
    funcs = {**FUNCS, "fw2": obj("ServiceFunction", "fw2", {"tenant": "blue", "ingress": "fw-in", "egress": "fw-out"})}
    v = view(2, frozenset({"mon-in"}), (three,))  # mon (bucket 0) down; fw2 reuses fw's legs (here, on h2)
    v = SwitchView(v.tenants, v.local, v.remote, v.tunnel_ofport, v.peers, tuple(funcs.values()), v.chains,
                   v.addresses)
    (g,) = [g for g in compile_chains(v).groups]
    assert [i for i, _ in g.buckets] == [1, 2]


def test_a_hop_down_drops_at_the_classifier_or_is_bypassed():
    down = frozenset({"fw-out"})  # fw not wired (one leg is enough)
    h1 = compile_chains(view(1, down))
    assert h1.states["web"].state == "hop missing: 1 (fw): its traffic is dropped"
    assert {f.actions for f in h1.flows if "reg1=1" in f.match} == {"drop"}
    bypass = obj("ServiceChain", "web", {**WEB.model_dump(mode="json")["spec"], "onHopDown": "bypass"})  # (valid)
    h1 = compile_chains(view(1, down, (bypass,)))
    fwd = [f for f in h1.flows if "reg1=1" in f.match and "nw_src=10.30.0.11" in f.match]
    assert fwd and all(f.actions.startswith("group:") for f in fwd)  # straight to the monitors' hop


def test_counted_flows_name_chain_hop_and_function():
    h3 = compile_chains(view(3))
    assert sorted(set(h3.counters.values()), key=str) == sorted({
        *(c for c in h3.counters.values() if c.sf == "mon")}, key=str)
    assert {(c.chain, c.hop, c.sf) for c in h3.counters.values()} == {("web", 2, "mon")}
    h1 = compile_chains(view(1))
    assert {(c.chain, c.hop, c.sf) for c in h1.counters.values()} == {("web", 2, "mon2")}
    for cookie in h1.counters:
        assert any(f.cookie == cookie for f in h1.flows)


def test_a_chain_change_changes_only_its_own_flows():
    other = obj("ServiceChain", "ssh", {"tenant": "blue", "hops": ["fw"], "priority": 5,
                                        "classifier": {"protocol": "tcp", "destinationPorts": [22]}})
    changed = obj("ServiceChain", "ssh", {"tenant": "blue", "hops": ["fw"], "priority": 5,
                                          "classifier": {"protocol": "tcp", "destinationPorts": [2222]}})
    before = set(compile_switch(view(2, chains=(WEB, other))).flows)
    after = set(compile_switch(view(2, chains=(WEB, changed))).flows)
    ssh = chain_cookie(chain_ids(["web", "ssh"])["ssh"]) >> 9
    assert before ^ after and all(f.cookie >> 9 == ssh for f in before ^ after)


# -- trace ------------------------------------------------------------------------------------------

def world(down: frozenset[str] = frozenset(), chains: tuple = (WEB,), hosts=("h1", "h2", "h3")) -> World:
    return World({"blue": BLUE}, ENDPOINTS, FUNCS, chains, ADDRESSES, frozenset(hosts),
                 frozenset(n for n in EPS if n not in down))


def hops(trace) -> list[tuple[str, str, str]]:
    return [(s.host, s.action, s.target) for s in trace.steps]


def test_trace_follows_the_chain_across_hosts_and_back():
    t = trace_packet(world(), "blue", "client", Packet(A("10.30.0.11"), A("10.30.0.12"), "tcp", 40000, 80))
    assert (t.chain, t.forward, t.state) == ("web", True, "ready")
    assert hops(t) == [("h1", "tunnel", "h2"), ("h2", "output", "fw-in"), ("h2", "tunnel", "h3"),
                       ("h3", "output", "mon-in"), ("h3", "tunnel", "h1"), ("h1", "output", "server")]
    assert t.steps[3].choices == ("mon", "mon2")
    via = trace_packet(world(), "blue", "client", Packet(A("10.30.0.11"), A("10.30.0.12"), "tcp", 1, 80), {2: "mon2"})
    assert hops(via)[2:] == [("h2", "tunnel", "h1"), ("h1", "output", "mon2-in"), ("h1", "output", "server")]


def test_trace_of_replies_passes_the_hops_in_reverse_through_egress_legs():
    t = trace_packet(world(), "blue", "server", Packet(A("10.30.0.12"), A("10.30.0.11"), "tcp", 80, 40000))
    assert (t.chain, t.forward) == ("web", False)
    assert hops(t) == [("h1", "tunnel", "h3"), ("h3", "output", "mon-out"), ("h3", "tunnel", "h2"),
                       ("h2", "output", "fw-out"), ("h2", "tunnel", "h1"), ("h1", "output", "client")]


@pytest.mark.parametrize("p,want", [
    (Packet(A("10.30.0.11"), A("10.30.0.12"), "tcp", 40000, 22), [("h1", "output", "server")]),  # unclassified
    (Packet(A("10.30.0.11"), A("10.30.0.13"), "icmp"), [("h1", "tunnel", "h3"), ("h3", "output", "other")]),
    (Packet(A("10.30.0.11"), A("10.30.0.99"), "icmp"), [("h1", "drop", "")]),
])
def test_trace_of_unclassified_packets_is_the_tenants_path(p, want):
    t = trace_packet(world(), "blue", "client", p)
    assert t.chain == "" and hops(t) == want


def test_trace_of_a_chain_with_a_hop_down():
    t = trace_packet(world(frozenset({"fw-in"})), "blue", "client",
                     Packet(A("10.30.0.11"), A("10.30.0.12"), "tcp", 40000, 80))
    assert hops(t) == [("h1", "drop", "")] and "hop missing: 1 (fw)" in t.steps[0].note
    gone = trace_packet(world(hosts=("h1", "h2")), "blue", "client",  # h3 down: mon2 on h1 carries the hop
                        Packet(A("10.30.0.11"), A("10.30.0.12"), "tcp", 40000, 80))
    assert [s.target for s in gone.steps] == ["h2", "fw-in", "h1", "mon2-in", "server"]


def test_classify_takes_the_highest_priority_and_traffic_before_replies():
    wide = obj("ServiceChain", "wide", {"tenant": "blue", "hops": ["mon"], "priority": 0, "symmetric": True,
                                        "classifier": {"protocol": "tcp"}})
    top = obj("ServiceChain", "top", {"tenant": "blue", "hops": ["fw"], "priority": 9,
                                      "classifier": {"protocol": "tcp", "destinationPorts": [80]}})
    w = world(chains=(wide, top))
    assert classify(w, "blue", Packet(A("10.30.0.11"), A("10.30.0.12"), "tcp", 1, 80))[0] is top
    assert classify(w, "blue", Packet(A("10.30.0.11"), A("10.30.0.12"), "tcp", 1, 81)) == (wide, True)
    assert classify(w, "blue", Packet(A("10.30.0.11"), A("10.30.0.12"), "udp", 1, 81)) == (None, True)


def test_a_remote_leg_counts_only_while_its_host_reports_it_wired():
    from netd.core.tenants import endpoints_for

    objects = [BLUE, *ENDPOINTS.values(), *FUNCS.values()]
    hosts = {"h2": H[2], "h3": H[3]}
    reported = {"fw-in": "wired", "fw-out": "target gone: netns fw-out does not exist",
                "mon-in": "wired", "mon-out": "wired"}
    local, remote, skipped = endpoints_for(objects, ADDRESSES, "h1", hosts, 1450, reported)
    assert {w.endpoint for w in local} == {"client", "server", "mon2-in", "mon2-out"}  # ours: wired here, not asked
    assert {r.endpoint for r in remote} == {"other", "fw-in", "mon-in", "mon-out"}  # non-legs whatever the report
    assert [s.split(":")[0] for s in skipped] == ["fw-out"]
    assert "does not report wired (target gone" in skipped[0]


def test_trace_refuses_a_via_that_is_not_up_in_the_hop_and_a_source_that_sends_nothing():
    p = Packet(A("10.30.0.11"), A("10.30.0.12"), "tcp", 1, 80)
    with pytest.raises(ValueError, match=r"--via 2=fw: hop 2 of chain web has mon, mon2 up"):
        trace_packet(world(), "blue", "client", p, {2: "fw"})
    with pytest.raises(ValueError, match=r"--via 2=mon: hop 2 of chain web has mon2 up"):
        trace_packet(world(frozenset({"mon-in"})), "blue", "client", p, {2: "mon"})
    gone = trace_packet(world(hosts=("h2", "h3")), "blue", "client", p)
    assert hops(gone) == [("h1", "drop", "")] and gone.steps[0].note == \
        "endpoint client sends nothing: its host h1 is not up"
    unwired = trace_packet(world(frozenset({"client"})), "blue", "client", p)
    assert unwired.steps[0].note == "endpoint client sends nothing: its host does not report it wired"
    leg = trace_packet(world(), "blue", "fw-in", p)
    assert hops(leg) == [("h2", "drop", "")] and leg.steps[0].note == \
        "fw-in is a service function's leg: it sends nothing of its own"
    for t in (gone, unwired, leg):
        assert (t.chain, t.forward, t.state) == ("", True, "")


def test_trace_notes_say_hop_chain_and_direction():
    t = trace_packet(world(), "blue", "server", Packet(A("10.30.0.12"), A("10.30.0.11"), "tcp", 80, 40000))
    assert [s.note for s in t.steps] == ["hop 2 of chain web: mon (replies)"] * 2 + \
        ["hop 1 of chain web: fw (replies)"] * 2 + ["delivered to endpoint client"] * 2
    assert [s.leg for s in t.steps] == ["mon-out", "mon-out", "fw-out", "fw-out", "", ""]
    assert t.steps[0].choices == t.steps[1].choices == ("mon", "mon2")
    down = trace_packet(world(hosts=("h1", "h2")), "blue", "client", Packet(A("10.30.0.11"), A("10.30.0.13"), "icmp"))
    assert hops(down) == [("h1", "drop", "")] and down.steps[0].note == "endpoint other's host h3 is not up"


def test_a_packet_to_an_outside_address_goes_to_the_tenants_router():
    routed = obj("TenantNetwork", "blue", {"vni": 5001, "subnet": "10.30.0.0/24", "gateway": "10.30.0.13"})
    w = World({"blue": routed}, ENDPOINTS, FUNCS, (WEB,), ADDRESSES, frozenset({"h1", "h2", "h3"}), frozenset(EPS))
    t = trace_packet(w, "blue", "client", Packet(A("10.30.0.11"), A("192.0.2.9"), "udp", 1, 53))
    assert hops(t) == [("h1", "tunnel", "h3"), ("h3", "output", "other")]  # other holds the gateway address
    no_router = trace_packet(world(), "blue", "client", Packet(A("10.30.0.11"), A("192.0.2.9"), "udp", 1, 53))
    assert no_router.steps[-1].note == "no endpoint of tenant blue has 192.0.2.9"


def test_chain_summaries_merge_the_hosts_reports():
    from netd.core.chains import summarize_chain

    def report(state: str, up: list[str], packets: dict[str, int]) -> dict:
        return {"chains": {"web": {"state": state, "packets": packets,
                                   "hops": [{"hop": 1, "functions": ["fw"], "up": [f for f in up if f == "fw"]},
                                            {"hop": 2, "functions": ["mon", "mon2"],
                                             "up": [f for f in up if f != "fw"]}]}}}

    s = summarize_chain("web", {"h1": report("ready", ["fw", "mon", "mon2"], {}),
                                "h2": report("ready", ["fw", "mon", "mon2"], {"1/fw": 10}),
                                "h3": report("ready", ["fw", "mon2"], {"2/mon": 4}),
                                "h4": {"chains": {"other": {}}}, "h5": None, "h6": {"chains": []}})
    assert s.hosts == ("h1", "h2", "h3") and s.state == "ready"
    assert s.hops == ((1, "fw", True), (2, "mon", False), (2, "mon2", True))  # down where any host sees it down
    assert s.packets == {"1/fw": 10, "2/mon": 4}
    split = summarize_chain("web", {"h1": report("ready", [], {"1/fw": 1}), "h2": report("hop missing: x", [],
                                                                                         {"1/fw": 2})})
    assert split.state == "h1: ready; h2: hop missing: x" and split.packets == {"1/fw": 3}
    assert summarize_chain("web", {}).state.startswith("no report: no host programs it")
