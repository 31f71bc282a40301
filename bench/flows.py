"""Tenant networks on OVS: what the flow compiler and the bundle writer cost, and what the tenant
data path moves against netd's vxlan overlay.

Part 1 (a private ovs-vswitchd, userspace datapath; one host's view of a 3-host cluster):
  * compile and apply TENANTS tenant networks with ENDPOINTS endpoints each (spread over the 3
    hosts, so a third are local ports and the rest remote, behind two peers): time, flows/s;
  * the same flows again (a resync with nothing to do): time, flows written (must be 0);
  * one tenant changed (an endpoint added on this host): flows touched and time, against writing
    the whole table again as one bundle (ovs-ofctl replace-flows) -- the naive way, measured in the
    same run on the same bridge.
Part 2 (2 namespace hosts, each its own OVS and netd): iperf3 TCP between two endpoints of one
tenant on two hosts (OVS userspace datapath, VXLAN on 4789), as a ratio to the same hosts'
containers over netd's vxlan overlay (kernel VXLAN), rounds interleaved.
Part 3 (a private ovs-vswitchd): compile and apply CHAINS service chains with their tenants (one
tenant each: a client and a server here, a 3-function symmetric chain whose second hop spreads over
two functions, one of them on a peer): flows, groups, time, flows/s; a resync; one chain changed
(a classifier port): flows touched and time.
Part 4 (2 namespace hosts): iperf3 TCP from a client on host 1 to a server on host 2 through 0, 1, 2
and 3 hops (functions alternating between the hosts, each a Linux bridge in a namespace), as ratios
to the tenant path with no chain, rounds interleaved.

These machines are noisy and differ between sessions: only ratios from one run mean anything.

Run: python bench/flows.py [--tenants 1000] [--endpoints 10] [--chains 1000] [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.datapath import iperf  # noqa: E402
from integration.cluster import Cluster  # noqa: E402
from integration.ovs import OvsServer  # noqa: E402
from integration.tenants import apply_specs, attach, wait_wired  # noqa: E402
from netd.adapters.ovs import OvsSwitch  # noqa: E402
from netd.core.chains import compile_switch  # noqa: E402
from netd.core.specplan import endpoint_mac  # noqa: E402
from netd.core.tenants import (  # noqa: E402
    COOKIE_MASK,
    SHARED_COOKIE,
    LocalPort,
    RemoteEndpoint,
    SwitchView,
    compile_tenant_flows,
)
from netd.model.specs import ServiceChain, ServiceFunction, TenantNetwork  # noqa: E402

IPv4 = ipaddress.IPv4Address
PEERS = (IPv4("10.250.1.12"), IPv4("10.250.1.13"))


def tenant(i: int) -> TenantNetwork:
    return TenantNetwork.model_validate({"apiVersion": "netd/v1", "kind": "TenantNetwork",
                                         "metadata": {"name": f"t{i}"},
                                         "spec": {"vni": 10_000 + i, "subnet": "10.20.0.0/24"}})


def view(tenants: int, endpoints: int, tunnel_ofport: int, extra: int = 0) -> SwitchView:
    """Host 1's view: endpoint j of every tenant lives on host j % 3 (0: here); ``extra`` more
    local endpoints in tenant 0 (the change)."""
    local, remote, ofport = [], [], 10
    for i in range(tenants):
        for j in range(endpoints + (extra if i == 0 else 0)):
            ip = IPv4("10.20.0.10") + j
            if j >= endpoints:  # a new port: OVS numbers it after every other
                local.append(LocalPort(f"t{i}", f"t{i}-e{j}", 60_000 + j, endpoint_mac(ip), ip))
            elif j % 3 == 0:
                local.append(LocalPort(f"t{i}", f"t{i}-e{j}", ofport, endpoint_mac(ip), ip))
                ofport += 1
            else:
                remote.append(RemoteEndpoint(f"t{i}", f"t{i}-e{j}", endpoint_mac(ip), ip, PEERS[j % 3 - 1]))
    return SwitchView(tuple(tenant(i) for i in range(tenants)), tuple(local), tuple(remote), tunnel_ofport, PEERS)


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def flow_count(server: OvsServer) -> int:
    return sum(1 for line in server.ofctl("netd-int", "dump-flows").splitlines() if "cookie=" in line)


def part1(tenants: int, endpoints: int) -> bool:
    server = OvsServer().start()
    sw = OvsSwitch(server.rundir, "netd-int", "netdev", timeout=120)
    try:
        sw.ensure_bridge()
        tunnel = sw.ensure_tunnel("10.250.1.11")
        v, t_view = timed(view, tenants, endpoints, tunnel)
        flows, t_compile = timed(compile_tenant_flows, v)
        delta, t_apply = timed(sw.sync_flows, flows)
        n = len(flows)
        print(f"{tenants} tenants x {endpoints} endpoints ({len(v.local)} local, {len(v.remote)} remote, "
              f"{len(PEERS)} peers): {n} flows")
        print(f"  compile           {t_compile:8.3f} s  {n / t_compile:10.0f} flows/s  (building the view: "
              f"{t_view:.3f} s)")
        print(f"  apply (empty)     {t_apply:8.3f} s  {n / t_apply:10.0f} flows/s  ({delta.added} added)")
        print(f"  compile + apply   {t_compile + t_apply:8.3f} s  {n / (t_compile + t_apply):10.0f} flows/s")
        ok = flow_count(server) == n and delta.added == n
        again, t_again = timed(sw.sync_flows, flows)
        print(f"  resync, no change {t_again:8.3f} s  {len(again.commands)} flows written")
        ok = ok and again.empty
        changed, t_recompile = timed(compile_tenant_flows, view(tenants, endpoints, tunnel, extra=1))
        delta, t_change = timed(sw.sync_flows, changed)
        touched = delta.added + delta.modified + delta.deleted
        print(f"  one tenant changed (an endpoint added here): {touched} flows touched ({delta.added} added, "
              f"{delta.modified} modified, {delta.deleted} deleted) in {t_change:.3f} s (diff + bundle; "
              f"compiling took {t_recompile:.3f} s more)")
        ok = ok and 0 < touched < 10 and flow_count(server) == len(changed)
        # the same change written two other ways, on the same bridge, each from the first flows:
        #   replace-flows: OVS's own diff (as quick, but it deletes every flow not in the file, other owners' too)
        #   a whole reinstall: delete netd's cookies and add everything, one bundle (counters all lost)
        path = os.path.join(server.workdir, "bench.flows")
        other: dict[str, float] = {}
        for label, body in (("replace-flows", None),
                            ("whole reinstall", f"delete cookie={SHARED_COOKIE:#x}/{COOKIE_MASK:#x}\n"
                                                + "".join(f"add {f.text()}\n" for f in changed))):
            sw.sync_flows(flows)
            t0 = time.perf_counter()
            with open(path, "w") as fh:
                fh.write(body if body is not None else "".join(f.text() + "\n" for f in changed))
            cmd = "replace-flows" if body is None else "add-flows"
            subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--bundle", cmd, f"unix:{server.rundir}/netd-int.mgmt",
                            path], check=True, timeout=600)
            other[label] = time.perf_counter() - t0
            ok = ok and flow_count(server) == len(changed)
        print(f"  the same change by ovs-ofctl replace-flows {other['replace-flows']:.3f} s (delta/that = "
              f"{t_change / other['replace-flows']:.2f}); as a whole reinstall {other['whole reinstall']:.3f} s "
              f"(delta/that = {t_change / other['whole reinstall']:.2f}); none of the three includes compiling")
        ok = ok and flow_count(server) == len(changed)
        return ok
    finally:
        sw.close()
        server.stop()


def two_hosts() -> Cluster:
    """2 namespace hosts, each with its OVS and netd (vxlan overlay), ready."""
    c = Cluster(2, etcd_tick_ms=100, ovs=True)
    try:
        c.set_config({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}})
        for i in (1, 2):
            c.start_netd(i, "--log-level=info", resync=5.0)
        c.wait_ready(timeout=60)
    except BaseException:
        c.close()
        raise
    return c


def part2(rounds: int, seconds: float) -> bool:
    c = two_hosts()
    try:
        c.wait_mesh()
        overlay = (c.add_container(1), c.add_container(2))
        apply_specs(c, "apiVersion: netd/v1\nkind: TenantNetwork\nmetadata: {name: blue}\n"
                       "spec: {vni: 5001, subnet: 10.20.0.0/24}\n")
        tenant_pair = (attach(c, 1, "blue", "10.20.0.11"), attach(c, 2, "blue", "10.20.0.12"))
        wait_wired(c, "blue1", "blue2")
        results: dict[str, list[float]] = {"vxlan overlay": [], "tenant (OVS)": []}
        for r in range(rounds):
            for label, (a, b) in (("vxlan overlay", overlay), ("tenant (OVS)", tenant_pair)):
                out = iperf(a, b, seconds, udp=False)
                gbit = out["server"]["end"]["sum_received"]["bits_per_second"] / 1e9
                results[label].append(gbit)
                print(f"round {r + 1} {label:<14} TCP {gbit:6.2f} Gbit/s", flush=True)
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"medians of {rounds} interleaved rounds of {seconds:g} s: overlay {med['vxlan overlay']:.2f} Gbit/s, "
              f"tenant {med['tenant (OVS)']:.2f} Gbit/s; tenant/overlay = "
              f"{med['tenant (OVS)'] / med['vxlan overlay']:.3f}")
        return all(v > 0 for v in med.values())
    finally:
        c.close()


def chain_view(chains: int, tunnel_ofport: int, port: int = 80) -> SwitchView:
    """Host 1's view of ``chains`` tenants, each with a client and a server here and a symmetric
    chain client -> server tcp/``port`` and 8000-8015 through fw (here), then mon-a (here) or mon-b
    (on a peer); chain 0's classifier port is ``port`` (the change)."""
    tenants, local, remote, functions, specs, addresses = [], [], [], [], [], []
    ofport = 10
    for i in range(chains):
        t = f"t{i}"
        tenants.append(tenant(i))
        ends = {"client": IPv4("10.20.0.11"), "server": IPv4("10.20.0.12"), "fw-in": IPv4("10.20.0.21"),
                "fw-out": IPv4("10.20.0.22"), "mona-in": IPv4("10.20.0.31"), "mona-out": IPv4("10.20.0.32"),
                "monb-in": IPv4("10.20.0.41"), "monb-out": IPv4("10.20.0.42")}
        for name, ip in ends.items():
            full = f"{t}-{name}"
            addresses.append((full, ip))
            if name.startswith("monb"):
                remote.append(RemoteEndpoint(t, full, endpoint_mac(ip), ip, PEERS[0]))
            else:
                local.append(LocalPort(t, full, ofport, endpoint_mac(ip), ip))
                ofport += 1
        for sf in ("fw", "mona", "monb"):
            functions.append(ServiceFunction.model_validate({
                "apiVersion": "netd/v1", "kind": "ServiceFunction", "metadata": {"name": f"{t}-{sf}"},
                "spec": {"tenant": t, "ingress": f"{t}-{sf}-in", "egress": f"{t}-{sf}-out"}}))
        specs.append(ServiceChain.model_validate({
            "apiVersion": "netd/v1", "kind": "ServiceChain", "metadata": {"name": f"{t}-web"},
            "spec": {"tenant": t, "symmetric": True, "hops": [f"{t}-fw", [f"{t}-mona", f"{t}-monb"]],
                     "classifier": {"source": f"{t}-client", "destination": f"{t}-server", "protocol": "tcp",
                                    "destinationPorts": [port if i == 0 else 80, "8000-8015"]}}}))
    return SwitchView(tuple(tenants), tuple(local), tuple(remote), tunnel_ofport, PEERS, tuple(functions),
                      tuple(specs), tuple(sorted(addresses)))


def part3(chains: int) -> bool:
    server = OvsServer().start()
    sw = OvsSwitch(server.rundir, "netd-int", "netdev", timeout=120)
    try:
        sw.ensure_bridge()
        tunnel = sw.ensure_tunnel("10.250.1.11")
        v = chain_view(chains, tunnel)
        prog, t_compile = timed(compile_switch, v)
        delta, t_apply = timed(sw.sync_flows, prog.flows, prog.groups)
        n, g = len(prog.flows), len(prog.groups)
        chain_flows = sum(1 for f in prog.flows if f.table == 5)
        print(f"{chains} chains with their tenants: {n} flows ({chain_flows} of them in the chains' table), {g} groups")
        print(f"  compile           {t_compile:8.3f} s  {n / t_compile:10.0f} flows/s")
        print(f"  apply (empty)     {t_apply:8.3f} s  {n / t_apply:10.0f} flows/s  ({delta.added} flows added, "
              f"{delta.groups_written} groups)")
        print(f"  compile + apply   {t_compile + t_apply:8.3f} s  {n / (t_compile + t_apply):10.0f} flows/s")
        ok = flow_count(server) == n and delta.added == n and delta.groups_written == g
        again, t_again = timed(sw.sync_flows, prog.flows, prog.groups)
        print(f"  resync, no change {t_again:8.3f} s  {len(again.commands)} flows, {again.groups_written} groups "
              "written")
        ok = ok and again.empty
        changed, t_recompile = timed(compile_switch, chain_view(chains, tunnel, port=443))
        delta, t_change = timed(sw.sync_flows, changed.flows, changed.groups)
        touched = delta.added + delta.modified + delta.deleted
        print(f"  one chain changed (a classifier port): {touched} flows touched ({delta.added} added, "
              f"{delta.modified} modified, {delta.deleted} deleted), {delta.groups_written} groups, in "
              f"{t_change:.3f} s (diff + bundle; compiling took {t_recompile:.3f} s more)")
        # chain 0's flows with port 80 (traffic and replies, where it starts and out of fw and mon-a)
        return ok and 0 < touched <= 12 and flow_count(server) == len(changed.flows)
    finally:
        sw.close()
        server.stop()


def part4(rounds: int, seconds: float) -> bool:
    from integration.chains import ns_name

    c = two_hosts()
    try:
        sfs = [(f"sf{k}", 2 if k % 2 else 1) for k in (1, 2, 3)]  # h2, h1, h2: every hop crosses the tunnel
        docs = ("apiVersion: netd/v1\nkind: TenantNetwork\nmetadata: {name: blue}\n"
                "spec: {vni: 5001, subnet: 10.20.0.0/24}\n")
        for name, host in sfs:
            c.netns_add(host, ns_name(c, name))
            for leg in ("in", "out"):
                docs += (f"---\napiVersion: netd/v1\nkind: Endpoint\nmetadata: {{name: {name}-{leg}}}\nspec: {{tenant: "
                         f"blue, host: {c.node_name(host)}, netns: {ns_name(c, name)}, interface: {leg}0}}\n")
            docs += (f"---\napiVersion: netd/v1\nkind: ServiceFunction\nmetadata: {{name: {name}}}\n"
                     f"spec: {{tenant: blue, ingress: {name}-in, egress: {name}-out}}\n")
        for hops in (1, 2, 3):
            docs += (f"---\napiVersion: netd/v1\nkind: ServiceChain\nmetadata: {{name: hops{hops}}}\n"
                     f"spec: {{tenant: blue, classifier: {{protocol: tcp, destinationPorts: [{5201 + hops}]}}, "
                     f"hops: [{', '.join(n for n, _ in sfs[:hops])}]}}\n")
        apply_specs(c, docs)
        a, b = attach(c, 1, "blue", "10.20.0.11"), attach(c, 2, "blue", "10.20.0.12")
        wait_wired(c, "blue1", "blue2", *(f"{n}-{leg}" for n, _ in sfs for leg in ("in", "out")), timeout=60)
        for name, host in sfs:
            c.script(host, f"ip netns exec {ns_name(c, name)} sh -ec 'ip link add br0 type bridge; "
                           "ip link set in0 master br0; ip link set out0 master br0; ip link set br0 up'")
        results: dict[int, list[float]] = {h: [] for h in range(4)}
        for r in range(rounds):
            for hops in range(4):
                out = iperf(a, b, seconds, udp=False, port=5201 + hops)
                gbit = out["server"]["end"]["sum_received"]["bits_per_second"] / 1e9
                results[hops].append(gbit)
                print(f"round {r + 1} {hops} hops  TCP {gbit:6.2f} Gbit/s", flush=True)
        med = {h: statistics.median(v) for h, v in results.items()}
        print(f"medians of {rounds} interleaved rounds of {seconds:g} s (client h1, server h2, functions on h2, "
              "h1, h2): " + ", ".join(f"{h} hops {med[h]:.2f} Gbit/s ({med[h] / med[0]:.2f})" for h in range(4)))
        return all(v > 0 for v in med.values())
    finally:
        c.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tenants", type=int, default=1000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--chains", type=int, default=1000)
    p.add_argument("--skip-iperf", action="store_true", help="parts 1 and 3 only")
    p.add_argument("--only", choices=["tenants", "chains"], help="the tenants' parts (1, 2) or the chains' (3, 4)")
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, {platform()}")
    ok = True
    if args.only != "chains":
        ok = part1(args.tenants, args.endpoints) and ok
        if not args.skip_iperf:
            ok = part2(args.rounds, args.seconds) and ok
    if args.only != "tenants":
        ok = part3(args.chains) and ok
        if not args.skip_iperf:
            ok = part4(args.rounds, args.seconds) and ok
    if not ok:
        print("FAILED: a check above did not hold (flow counts, an empty resync, a small delta, traffic)")
    return 0 if ok else 1


def platform() -> str:
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
