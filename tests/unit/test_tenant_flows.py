"""The tenant flow compiler: golden flows, and the properties isolation rests on."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from netd.core.tenants import (
    CANARY_COOKIE,
    SHARED_COOKIE,
    LocalPort,
    RemoteEndpoint,
    SwitchView,
    clashing_vnis,
    compile_tenant_flows,
    endpoints_for,
    flows_by_tenant,
    is_ours,
    tenant_cookie,
)
from netd.model.specs import parse_object

A = ipaddress.IPv4Address
GOLDEN = Path(__file__).parent / "golden"


def tenant(name, vni, subnet="10.20.0.0/24"):
    return parse_object({"apiVersion": "netd/v1", "kind": "TenantNetwork", "metadata": {"name": name},
                         "spec": {"vni": vni, "subnet": subnet}})[0]


BLUE, RED = tenant("blue", 5001), tenant("red", 5002)  # overlapping subnets, on purpose
H2, H3 = A("10.250.1.12"), A("10.250.1.13")
VIEW = SwitchView(
    tenants=(BLUE, RED),
    local=(LocalPort("blue", "b1", 1, "0a:58:0a:14:00:02", A("10.20.0.2")),
           LocalPort("red", "r1", 2, "0a:58:0a:14:00:02", A("10.20.0.2"))),  # same address and MAC, other tenant
    remote=(RemoteEndpoint("blue", "b2", "0a:58:0a:14:00:03", A("10.20.0.3"), H2),
            RemoteEndpoint("red", "r3", "0a:58:0a:14:00:04", A("10.20.0.4"), H3)),
    tunnel_ofport=9, peers=(H2, H3))


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed: rerun with UPDATE_GOLDEN=1 after checking the diff"


def test_two_tenants_on_three_hosts_golden():
    check_golden("two_tenants.flows", "\n".join(f.text() for f in compile_tenant_flows(VIEW)) + "\n")


def test_every_forwarding_flow_is_inside_one_tenant():
    vni_of = {tenant_cookie(5001): "0x1389", tenant_cookie(5002): "0x138a"}
    for f in compile_tenant_flows(VIEW):
        assert is_ours(f.cookie)
        if f.table == 10 and f.cookie in vni_of:
            assert f.match.startswith(f"reg0={vni_of[f.cookie]},"), f.text()
        if f.table == 0 and f.priority > 0:  # admission tags the frame with exactly its tenant
            assert re.search(rf"set_field:{vni_of[f.cookie]}->reg0", f.actions), f.text()


def test_outputs_never_reach_another_tenants_port():
    ports = {"0x1389": {"1"}, "0x138a": {"2"}}
    for f in compile_tenant_flows(VIEW):
        m = re.match(r"reg0=(0x[0-9a-f]+)", f.match)
        if f.table == 10 and m:
            for out in re.findall(r"output:(\d+)", f.actions):
                assert out in ports[m.group(1)] | {"9"}, f.text()
            for vni in re.findall(r"set_field:(0x[0-9a-f]+)->tun_id", f.actions):
                assert vni == m.group(1), f.text()


def test_a_port_is_admitted_only_with_its_own_addresses():
    admit = [f for f in compile_tenant_flows(VIEW) if f.table == 0 and "in_port=1," in f.match]
    assert sorted(f.match for f in admit) == [
        "in_port=1,dl_src=0a:58:0a:14:00:02,arp,arp_spa=10.20.0.2,arp_sha=0a:58:0a:14:00:02",
        "in_port=1,dl_src=0a:58:0a:14:00:02,ip,nw_src=10.20.0.2"]


def test_one_tenant_changing_changes_only_its_flows():
    before = flows_by_tenant(compile_tenant_flows(VIEW))
    more = SwitchView(VIEW.tenants, VIEW.local + (LocalPort("blue", "b9", 7, "0a:58:0a:14:00:09", A("10.20.0.9")),),
                      VIEW.remote, VIEW.tunnel_ofport, VIEW.peers)
    after = flows_by_tenant(compile_tenant_flows(more))
    assert after[5002] == before[5002] and after[0] == before[0]
    assert after[5001] != before[5001]


def test_a_lone_host_without_tunnels_and_unknown_tenants():
    flows = compile_tenant_flows(SwitchView((BLUE,), VIEW.local, VIEW.remote, None, ()))
    assert not any("tun_" in f.text() for f in flows)
    assert not any(f.cookie == tenant_cookie(5002) for f in flows)  # red is not a tenant here: r1 gets nothing
    empty = compile_tenant_flows(SwitchView())
    assert [(f.table, f.cookie) for f in empty] == [(0, SHARED_COOKIE), (5, SHARED_COOKIE), (5, SHARED_COOKIE),
                                                 (10, SHARED_COOKIE), (10, SHARED_COOKIE), (250, CANARY_COOKIE)]


def endpoint(name, tenant_name, host):
    return parse_object({"apiVersion": "netd/v1", "kind": "Endpoint", "metadata": {"name": name},
                         "spec": {"tenant": tenant_name, "host": host, "netns": name}})[0]


def test_endpoints_split_into_local_remote_and_skipped_with_their_routes_and_mtu():
    routed = parse_object({"apiVersion": "netd/v1", "kind": "TenantNetwork", "metadata": {"name": "green"},
                           "spec": {"vni": 7, "subnet": "10.30.0.0/24", "gateway": "10.30.0.1", "mtu": 1400}})[0]
    objects = [BLUE, routed, endpoint("router", "green", "h1"), endpoint("web", "green", "h1"),
               endpoint("b1", "blue", "h1"), endpoint("b2", "blue", "h2"), endpoint("b9", "blue", "h9"),
               endpoint("lost", "nope", "h1"), endpoint("new", "blue", "h1")]
    addresses = {"router": A("10.30.0.1"), "web": A("10.30.0.5"), "b1": A("10.20.0.2"), "b2": A("10.20.0.3"),
                 "b9": A("10.20.0.9"), "lost": A("10.99.0.1")}  # "new" has no address yet
    local, remote, skipped = endpoints_for(objects, addresses, "h1", {"h1": A("10.250.1.11"), "h2": H2}, 1450)
    assert [(w.endpoint, w.tenant.metadata.name, w.ip, w.mac, w.mtu, w.gateway) for w in local] == [
        ("b1", "blue", A("10.20.0.2"), "0a:58:0a:14:00:02", 1450, None),  # no gateway, the default MTU
        ("router", "green", A("10.30.0.1"), "0a:58:0a:1e:00:01", 1400, None),  # it is the gateway: no route to itself
        ("web", "green", A("10.30.0.5"), "0a:58:0a:1e:00:05", 1400, A("10.30.0.1"))]
    assert remote == [RemoteEndpoint("blue", "b2", "0a:58:0a:14:00:03", A("10.20.0.3"), H2)]
    assert skipped == ["b9: its host h9 is not up (no record under hosts/)", "lost: no tenant network nope",
                       "new: no address"]


def test_tenants_that_share_a_vni_are_neither_programmed():
    twin = tenant("twin", 5001, "10.40.0.0/24")  # blue's VNI: stored by two racing applies, or by hand
    assert clashing_vnis((BLUE, RED, twin)) == {
        "blue": "tenant network blue: VNI 5001 is also twin's; neither is programmed until one changes",
        "twin": "tenant network twin: VNI 5001 is also blue's; neither is programmed until one changes"}
    flows = compile_tenant_flows(SwitchView((BLUE, RED, twin), VIEW.local, VIEW.remote, 9, VIEW.peers))
    assert {f.cookie for f in flows} == {SHARED_COOKIE, CANARY_COOKIE, tenant_cookie(5002)}
    three = clashing_vnis((BLUE, twin, tenant("third", 5001, "10.41.0.0/24")))
    assert three["blue"] == ("tenant network blue: VNI 5001 is also third, twin's; neither is programmed until "
                             "one changes")
    assert clashing_vnis((BLUE, RED)) == {}


def test_arp_is_answered_for_local_senders_only():
    responders = [f for f in compile_tenant_flows(VIEW) if "arp_op=1" in f.match]
    assert responders and all(",reg1=1,arp," in f.match for f in responders), responders


def test_a_peers_frame_is_never_tunnelled_on_and_an_untagged_leg_frame_is_dropped():
    """Two peers whose views are out of step would bounce a frame between them for ever; and a frame
    tagged for a leg this host no longer has must not reach its destination past that function."""
    flows = compile_tenant_flows(VIEW)
    for f in flows:
        if f.table == 10 and "output:9" in f.actions and "dl_dst=01:00" not in f.match:
            assert "reg1=0x1/0x1," in f.match, f.text()  # from this host only (1: an endpoint, 3: a leg)
    (tagged,) = [f for f in flows if f.table == 10 and f.priority == 115]
    assert (tagged.match, tagged.actions) == ("reg1=2,dl_src=0e:00:00:00:00:00/ff:ff:00:00:00:00", "drop")
