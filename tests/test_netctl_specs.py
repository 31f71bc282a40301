"""netctl validate/diff/apply/delete/get/attach/detach against a real etcd: bad files change nothing
and say file, field and line; good ones are applied in one transaction."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap

import pytest

GOOD = """\
apiVersion: netd/v1
kind: TenantNetwork
metadata:
  name: blue
spec:
  vni: 5001
  subnet: 10.20.0.0/24
  gateway: 10.20.0.1
---
apiVersion: netd/v1
kind: TenantNetwork
metadata:
  name: red
spec:
  vni: 5002
  subnet: 10.20.0.0/24
"""


@pytest.fixture
def netctl(etcd_server, unique_prefix, tmp_path):
    netd_prefix = unique_prefix.replace("/network", "/netd")

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "netd.cli.netctl_main", f"--etcd-endpoints={etcd_server.endpoint}",
                            f"--etcd-prefix={unique_prefix}", f"--netd-prefix={netd_prefix}", *args],
                           capture_output=True, text=True, timeout=60)
        if ok:
            assert r.returncode == 0, r.stderr
        return r

    def keys() -> str:
        return etcd_server.etcdctl("get", "--prefix", netd_prefix + "/", "-w", "json")

    def write(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return str(path)

    run.keys, run.write, run.etcd, run.prefix = keys, write, etcd_server, netd_prefix  # type: ignore[attr-defined]
    return run


BAD = {
    "schema": ("""\
        apiVersion: netd/v1
        kind: TenantNetwork
        metadata: {name: green}
        spec:
          vni: 99999999
          subnet: 10.30.0.0/24
          colour: green
        """, [":5: document 1 (TenantNetwork green): spec.vni: Input should be less than or equal to 16777215",
              ":7: document 1 (TenantNetwork green): spec.colour: unknown field"]),
    "reference": ("""\
        apiVersion: netd/v1
        kind: Endpoint
        metadata: {name: web1}
        spec:
          tenant: purple
          host: h1
          netns: web1
        """, [":5: document 1 (Endpoint web1): spec.tenant: no TenantNetwork 'purple' (neither in these files nor "
              "stored)"]),
    "duplicate VNI": ("""\
        apiVersion: netd/v1
        kind: TenantNetwork
        metadata: {name: green}
        spec:
          subnet: 10.30.0.0/24
          vni: 5001
        """, [":6: document 1 (TenantNetwork green): spec.vni: VNI 5001 is also tenant network blue's"]),
    "overlap": ("""\
        apiVersion: netd/v1
        kind: TenantNetwork
        metadata: {name: green}
        spec:
          vni: 5003
          subnet: 10.5.7.0/24
        """, [":6: document 1 (TenantNetwork green): spec.subnet: 10.5.7.0/24 overlaps the cluster network "
              "10.5.0.0/16"]),
    "address overlap": ("""\
        apiVersion: netd/v1
        kind: Endpoint
        metadata: {name: web1}
        spec: {tenant: blue, host: h1, netns: web1, ip: 10.20.0.9}
        ---
        apiVersion: netd/v1
        kind: Endpoint
        metadata: {name: web2}
        spec: {tenant: blue, host: h1, netns: web2, ip: 10.20.0.9}
        """, [":4: document 1 (Endpoint web1): spec.ip: 10.20.0.9 is also endpoint web2's in tenant blue",
              ":9: document 2 (Endpoint web2): spec.ip: 10.20.0.9 is also endpoint web1's in tenant blue"]),
    "chain schema": ("""\
        apiVersion: netd/v1
        kind: ServiceChain
        metadata: {name: web}
        spec:
          tenant: blue
          classifier: {protocol: icmp, destinationPorts: [80]}
          hops: [fw]
          onHopDown: ignore
        """, [":6: document 1 (ServiceChain web): spec.classifier: ports need protocol tcp or udp",
              ":8: document 1 (ServiceChain web): spec.onHopDown: Input should be 'drop' or 'bypass'"]),
    "chain reference": ("""\
        apiVersion: netd/v1
        kind: ServiceChain
        metadata: {name: web}
        spec:
          tenant: blue
          classifier: {protocol: tcp, destination: 10.21.0.0/24}
          hops: [fw, [mon-a, mon-b]]
        """, [":7: document 1 (ServiceChain web): spec.hops.0.0: no ServiceFunction 'fw' (neither in these files "
              "nor stored)", ":7: document 1 (ServiceChain web): spec.hops.1.1: no ServiceFunction 'mon-b'",
              ":6: document 1 (ServiceChain web): spec.classifier.destination: 10.21.0.0/24 is not inside tenant "
              "blue's subnet 10.20.0.0/24"]),
    "ambiguous chains": ("""\
        apiVersion: netd/v1
        kind: Endpoint
        metadata: {name: fw-in}
        spec: {tenant: blue, host: h1, netns: fw, interface: in0}
        ---
        apiVersion: netd/v1
        kind: Endpoint
        metadata: {name: fw-out}
        spec: {tenant: blue, host: h1, netns: fw, interface: out0}
        ---
        apiVersion: netd/v1
        kind: ServiceFunction
        metadata: {name: fw}
        spec: {tenant: blue, ingress: fw-in, egress: fw-out}
        ---
        apiVersion: netd/v1
        kind: ServiceChain
        metadata: {name: web}
        spec: {tenant: blue, classifier: {protocol: tcp, destinationPorts: [80]}, hops: [fw]}
        ---
        apiVersion: netd/v1
        kind: ServiceChain
        metadata: {name: all-tcp}
        spec: {tenant: blue, classifier: {protocol: tcp}, hops: [fw]}
        """, [":19: document 4 (ServiceChain web): spec.classifier: its traffic is also chain all-tcp's traffic at "
              "priority 0: give one a higher spec.priority",
              ":24: document 5 (ServiceChain all-tcp): spec.classifier: its traffic is also chain web's traffic"]),
    "syntax": ("""\
        apiVersion: netd/v1
        kind: TenantNetwork
        metadata: {name: green
        spec: {vni: 5003, subnet: 10.30.0.0/24}
        """, [":4: not valid YAML"]),
    "duplicate key": ("""\
        apiVersion: netd/v1
        kind: TenantNetwork
        metadata: {name: green}
        spec:
          vni: 5003
          vni: 5004
          subnet: 10.30.0.0/24
        """, [":6: document 1: spec.vni: duplicate key (each may appear once)"]),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_a_bad_file_changes_nothing_and_names_file_field_and_line(netctl, case):
    netctl("config", "set", "--network", "10.5.0.0/16", "--backend", "vxlan")
    good = netctl.write("good.yaml", GOOD)
    netctl("apply", "-f", good)
    before = json.loads(netctl.keys())["kvs"]
    text, want = BAD[case]
    bad = netctl.write("bad.yaml", text)
    for cmd in ("validate", "diff", "apply"):
        r = netctl(cmd, "-f", good, "-f", bad, ok=False)  # with a good file beside it: all or nothing
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        for line in want:
            assert f"{bad}{line}" in r.stderr, (cmd, r.stderr)
    assert json.loads(netctl.keys())["kvs"] == before


def test_apply_diff_get_attach_detach_delete(netctl):
    good = netctl.write("good.yaml", GOOD)
    assert netctl("diff", "-f", good).stdout.splitlines() == ["+ TenantNetwork blue", "+ TenantNetwork red"]
    assert "applied at revision" in netctl("apply", "-f", good).stdout
    assert netctl("apply", "-f", good).stdout.strip() == "no changes"
    changed = netctl.write("changed.yaml", GOOD.replace("vni: 5002", "vni: 6002"))
    assert netctl("diff", "-f", changed).stdout.splitlines() == ["~ TenantNetwork red", "    spec.vni: 5002 -> 6002"]
    out = netctl("attach", "--tenant", "blue", "--host", "h1", "--netns", "web1").stdout
    assert "endpoint h1-web1: 10.20.0.2 in tenant blue" in out  # .1 is the gateway
    taken = netctl("attach", "--tenant", "blue", "--host", "h2", "--netns", "x", "--ip", "10.20.0.2", ok=False)
    assert taken.returncode == 1 and "10.20.0.2 is already endpoint h1-web1's in tenant blue" in taken.stderr
    table = netctl("get", "endpoints").stdout.splitlines()
    assert table[0].split() == ["NAME", "TENANT", "HOST", "TARGET", "IP", "MAC", "STATE"]
    assert table[1].split()[:7] == ["h1-web1", "blue", "h1", "netns", "web1", "10.20.0.2", "0a:58:0a:14:00:02"]
    assert " no report: host h1 is not up " in table[1]
    # what h1's switch loop writes (netd/agent/switch.py): its presence, then the endpoint's state
    prefix = netctl.prefix
    netctl.etcd.etcdctl("put", f"{prefix}/hosts/h1", '{"tunnel_ip": "10.250.1.11"}')
    assert netctl("get", "endpoints").stdout.splitlines()[1].endswith(" pending")
    state = '{"host": "h1", "state": "target gone: netns web1"}'
    netctl.etcd.etcdctl("put", f"{prefix}/status/endpoints/h1-web1", state)
    [row] = json.loads(netctl("get", "endpoints", "h1-web1", "-o", "json").stdout)
    assert row["state"] == "target gone: netns web1" and row["address"]["ip"] == "10.20.0.2"
    for key in (f"{prefix}/hosts/h1", f"{prefix}/status/endpoints/h1-web1"):  # (h1's lease ends)
        netctl.etcd.etcdctl("del", key)
    rows = json.loads(netctl("get", "tenants", "-o", "json").stdout)
    assert [(r["metadata"]["name"], r["spec"]["vni"]) for r in rows] == [("blue", 5001), ("red", 5002)]
    refused = netctl("delete", "tenants", "blue", ok=False)
    assert refused.returncode == 1 and "used by endpoints h1-web1" in refused.stderr
    assert netctl("detach", "h1-web1").stdout.splitlines()[:2] == ["- Endpoint h1-web1",
                                                                  "- address 10.20.0.2 in tenant blue"]
    netctl("delete", "-f", good)
    assert json.loads(netctl("get", "tenants", "-o", "json").stdout) == []
    # nothing left behind (no claims) but the generation key every commit writes

    left = [base64.b64decode(kv["key"]).decode() for kv in json.loads(netctl.keys())["kvs"]]
    assert left == [netctl.prefix + "/generation"], left


def test_attaches_run_in_parallel_all_land(netctl):
    """Every commit conflicts with any other since its read (the generation key): netctl plans again
    from a new read, so a script attaching endpoints in parallel gets them all."""
    netctl("config", "set", "--network", "10.5.0.0/16", "--backend", "vxlan")
    netctl("apply", "-f", netctl.write("good.yaml", GOOD))
    base = [sys.executable, "-m", "netd.cli.netctl_main", f"--etcd-endpoints={netctl.etcd.endpoint}",
            f"--netd-prefix={netctl.prefix}"]
    procs = [subprocess.Popen([*base, "attach", "--tenant", "blue", "--host", "h1", "--netns", f"w{k}",
                               *(["--ip", f"10.20.0.{20 + k}"] if k % 2 else [])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(6)]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    assert all(rc == 0 for rc, _ in results), results
    rows = json.loads(netctl("get", "endpoints", "-o", "json").stdout)
    ips = [r["address"]["ip"] for r in rows]
    assert len(rows) == 6 and len(set(ips)) == 6, rows
