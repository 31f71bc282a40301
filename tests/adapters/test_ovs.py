"""OvsSwitch against a private ovsdb-server + ovs-vswitchd (userspace datapath) in a namespace."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from integration.ovs import OvsServer, ovs_installed
from netd.adapters.ovs import TUNNEL_PORT, OvsSwitch
from netd.core.tenants import CANARY_COOKIE, LocalPort, SwitchView, compile_tenant_flows, tenant_cookie
from netd.errors import DataplaneError
from netd.model.specs import parse_object
from tests.conftest import require

A = ipaddress.IPv4Address


def tenant(name, vni):
    return parse_object({"apiVersion": "netd/v1", "kind": "TenantNetwork", "metadata": {"name": name},
                         "spec": {"vni": vni, "subnet": "10.20.0.0/24"}})[0]


@pytest.fixture
def ovs(ns, tmp_path):
    require(ovs_installed(), "Open vSwitch not installed (apt-get install openvswitch-switch)")
    server = OvsServer(str(tmp_path / "ovs"), netns=ns).start()
    sw = OvsSwitch(server.rundir, bridge="ndtint", datapath="netdev")
    yield server, sw
    sw.close()
    server.stop()


def veth(ns: str, name: str) -> None:
    subprocess.run(["ip", "-n", ns, "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", name, "up"], check=True)


def view(ports, vnis=(("blue", 5001), ("red", 5002))):
    return SwitchView(tuple(tenant(n, v) for n, v in vnis), tuple(ports))


def test_bridge_ports_and_flows_owned_and_synced_by_difference(ns, ovs):
    server, sw = ovs
    sw.ensure_bridge()
    assert server.vsctl("get", "bridge", "ndtint", "fail_mode").strip() == "secure"
    veth(ns, "ep-a")
    veth(ns, "ep-b")
    a, b = sw.ensure_endpoint_port("ep-a", "web1"), sw.ensure_endpoint_port("ep-b", "db1")
    assert sw.endpoint_ports() == {"ep-a": "web1", "ep-b": "db1"}
    ports = [LocalPort("blue", "web1", a, "0a:58:0a:14:00:02", A("10.20.0.2")),
             LocalPort("red", "db1", b, "0a:58:0a:14:00:02", A("10.20.0.2"))]
    server.ofctl("ndtint", "add-flow", "table=5,priority=7,cookie=0x99,actions=drop")  # someone else's
    first = sw.sync_flows(compile_tenant_flows(view(ports)))
    assert first.added == len(compile_tenant_flows(view(ports))) and first.deleted == 0
    assert sw.sync_flows(compile_tenant_flows(view(ports))).empty  # nothing differs: nothing written
    assert sw.canary_present()
    # one tenant changes (a second blue endpoint): only blue's flows are written
    veth(ns, "ep-c")
    c = sw.ensure_endpoint_port("ep-c", "web2")
    more = ports + [LocalPort("blue", "web2", c, "0a:58:0a:14:00:03", A("10.20.0.3"))]
    delta = sw.sync_flows(compile_tenant_flows(view(more)))
    touched = [line for line in delta.commands]
    assert touched and all(f"cookie={tenant_cookie(5001):#x}" in t or t.startswith("delete_strict") for t in touched)
    assert delta.deleted == 0 and delta.modified == 2  # blue's two flood flows gained a port
    # red goes away: its flows are deleted, the foreign flow stays
    gone = sw.sync_flows(compile_tenant_flows(view(more[:1] + more[2:], (("blue", 5001),))))
    assert gone.deleted > 0 and gone.added == 0
    dump = server.ofctl("ndtint", "dump-flows")
    assert "cookie=0x99" in dump and f"{tenant_cookie(5002):#x}" not in dump
    stats = sw.flow_stats()
    assert {s.cookie for s in stats} >= {tenant_cookie(5001), CANARY_COOKIE}
    sw.remove_port("ep-c")
    assert sw.endpoint_ports() == {"ep-a": "web1", "ep-b": "db1"}


def test_a_vswitchd_restart_loses_the_canary_and_a_sync_brings_everything_back(ns, ovs):
    server, sw = ovs
    sw.ensure_bridge()
    veth(ns, "ep-a")
    a = sw.ensure_endpoint_port("ep-a", "web1")
    flows = compile_tenant_flows(view([LocalPort("blue", "web1", a, "0a:58:0a:14:00:02", A("10.20.0.2"))]))
    sw.sync_flows(flows)
    server.kill_vswitchd()
    server.start_vswitchd()
    sw.ensure_bridge()  # (waits for the bridge to be back)
    assert not sw.canary_present()
    assert sw.ofport("ep-a") == a  # the port comes back from OVSDB with its number
    assert sw.sync_flows(flows).added == len(flows)
    assert sw.canary_present()


def test_tunnel_port_and_errors_are_clear(ns, ovs):
    server, sw = ovs
    sw.ensure_bridge()
    assert sw.ensure_tunnel("10.250.0.1") > 0
    assert 'dst_port="4789"' in server.vsctl("list", "interface", TUNNEL_PORT)
    with pytest.raises(DataplaneError, match="cannot reach OVSDB"):
        OvsSwitch("/nonexistent", timeout=1).ensure_bridge()


def test_chain_groups_and_flows_go_in_one_bundle_and_a_resync_writes_nothing(ns, ovs):
    """The chain scenario of tests/unit/test_chains.py as host 1 sees it (a select group for the
    spread hop's replies): written once, then nothing differs; a group no longer wanted is deleted
    with its flows, and someone else's group is never touched."""
    from netd.core.chains import compile_switch
    from tests.unit.test_chains import WEB, obj
    from tests.unit.test_chains import view as chain_view

    server, sw = ovs
    sw.ensure_bridge()
    server.ofctl("ndtint", "add-group", "group_id=7,type=select,bucket=actions=drop")
    prog = compile_switch(chain_view(1))
    assert prog.groups, "the scenario has a spread hop"
    first = sw.sync_flows(prog.flows, prog.groups)
    assert first.groups_written == len(prog.groups) and first.added == len(prog.flows)
    dumped = server.ofctl("ndtint", "dump-groups")
    assert all(f"group_id={g.group_id}," in dumped for g in prog.groups) and "group_id=7," in dumped
    again = sw.sync_flows(prog.flows, prog.groups)
    assert again.empty and again.groups_written == 0  # OVS prints groups as netd writes them
    one = obj("ServiceChain", "web", {**WEB.model_dump(mode="json")["spec"], "hops": ["fw", "mon"]})
    narrower = compile_switch(chain_view(1, chains=(one,)))
    assert not narrower.groups
    third = sw.sync_flows(narrower.flows, narrower.groups)
    assert third.groups_written == len(prog.groups)
    dumped = server.ofctl("ndtint", "dump-groups")
    assert "group_id=7," in dumped and not any(f"group_id={g.group_id}," in dumped for g in prog.groups)
    assert sw.sync_flows(narrower.flows, narrower.groups).empty
