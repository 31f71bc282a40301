"""The fleet-like scheduler on three namespace hosts (issue 14): units placed by their [X-Fleet]
options, run (netns runtime, and Docker), wired into the overlay, published and resolved by DNS;
a host killed moves its units, a leader killed hands over the engine."""

from __future__ import annotations

import json
import os
import tempfile
import time

import pytest
from dnslib import DNSRecord

from integration.cluster import Cluster, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]

TTL = 5  # --machine-ttl in these scenarios (the default, 30 s, would make them slow)
DNS_PORT = 5353
META = {1: "region=east,disk=hdd,role=edge", 2: "region=east,disk=hdd,role=worker",
        3: "region=west,disk=ssd,role=worker"}
SERVE = "ExecStart=python3 -m integration.tools tcp-echo 80\n[X-Netd]\nPort=80\n"


def fleet(make_cluster, n: int = 3) -> Cluster:
    c = make_cluster(n)
    c.set_config({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}})
    for i in range(1, n + 1):
        c.start_netd(i, f"--metadata={META[i]}", f"--machine-ttl={TTL}s",
                     f"--dns-listen=gateway,127.0.0.1:{DNS_PORT}")
    c.wait_ready(timeout=60)
    wait_for(lambda: len(machines(c)) == n, 20, lambda: c.netctl(1, "list-machines").stdout)
    return c


def machines(c: Cluster) -> dict[str, dict]:
    return {m["id"]: m for m in json.loads(c.netctl(1, "list-machines", "-o", "json").stdout)}


def submit(c: Cluster, files: dict[str, str], *cmd: str) -> str:
    d = tempfile.mkdtemp(prefix=f"{c.tag}-units-", dir=c.workdir)
    paths = []
    for name, text in files.items():
        paths.append(os.path.join(d, name))
        with open(paths[-1], "w") as fh:
            fh.write(text)
    return c.netctl(1, *(cmd or ("start",)), *paths).stdout


def units(c: Cluster) -> dict[str, dict]:
    """list-units by unit (the last row of a global unit's)."""
    return {u["unit"]: u for u in json.loads(c.netctl(1, "list-units", "-o", "json", "--fields",
                                                      "unit,machine,active,sub,ip,restarts,message").stdout)}


def running_on(c: Cluster) -> dict[str, str]:
    """unit -> the machine ID it runs on (running only)."""
    return {n: u["machine"].split("/")[0] for n, u in units(c).items() if u["sub"] == "running"}


def wait_running(c: Cluster, names: list[str], timeout: float = 40) -> dict[str, str]:
    wait_for(lambda: all(n in running_on(c) for n in names), timeout, lambda: units(c))
    return running_on(c)


def dns(c: Cluster, i: int, name: str, qtype: str = "A") -> list[str]:
    """What host i's netd answers (on 127.0.0.1:5353 in its namespace)."""
    q = DNSRecord.question(name, qtype)
    out = c.exec(i, "python3", "-c", "import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
                 f"s.settimeout(3); s.sendto(bytes.fromhex('{bytes(q.pack()).hex()}'), ('127.0.0.1', {DNS_PORT})); "
                 "sys.stdout.write(s.recv(4096).hex())", check=False).stdout
    if not out:
        return []
    reply = DNSRecord.parse(bytes.fromhex(out))
    return sorted(str(r.rdata) for r in reply.rr)


def test_units_land_where_their_options_say_and_reach_each_other_by_name(make_cluster):
    c = fleet(make_cluster)
    m = {i: c.machine_id(i) for i in (1, 2, 3)}
    assert set(machines(c)) == set(m.values())
    listing = c.netctl(1, "list-machines").stdout
    assert "region=west" in listing and "MACHINE" in listing.splitlines()[0]
    files = {
        "web@.service": "[Service]\nExecStart=python3 -m integration.tools tcp-echo 80\n[X-Fleet]\n"
                        "Conflicts=web@*.service\n[X-Netd]\nPort=80\n",
        "db.service": f"[Service]\n{SERVE}[X-Fleet]\nMachineMetadata=disk=ssd\n",
        "cache.service": f"[Service]\n{SERVE}[X-Fleet]\nMachineOf=db.service\n",
        "pinned.service": f"[Service]\n{SERVE}[X-Fleet]\nMachineID={m[2]}\n",
        "east@.service": "[Service]\nExecStart=sleep 1000\n[X-Fleet]\nMachineMetadata=region=east\n"
                         "Conflicts=east@*.service\n",
        "agent.service": "[Service]\nExecStart=sleep 1000\n[X-Fleet]\nGlobal=true\nMachineMetadata=role=worker\n",
        # a unit on h1 that finds db by its DNS name and talks to it over the overlay
        "client.service": "[Service]\nExecStart=sh -c 'python3 -m integration.tools tcp-flows db.db.netd.local 80 "
                          "1 4 41000 5; sleep 1000'\n[X-Fleet]\nMachineID=" + m[1] + "\n",
    }
    submit(c, files, "submit")
    out = c.netctl(1, "start", "web@1.service", "web@2.service", "web@3.service", "db.service", "cache.service",
                   "pinned.service", "east@1.service", "east@2.service", "agent.service").stdout
    assert "Unit web@2.service launched" in out
    on = wait_running(c, ["web@1.service", "web@2.service", "web@3.service", "db.service", "cache.service",
                          "pinned.service", "east@1.service", "east@2.service"])
    assert sorted(on[f"web@{k}.service"] for k in (1, 2, 3)) == sorted(m.values())  # Conflicts: one each
    assert on["db.service"] == m[3] and on["cache.service"] == m[3]  # MachineMetadata, MachineOf
    assert on["pinned.service"] == m[2]  # MachineID
    assert {on["east@1.service"], on["east@2.service"]} == {m[1], m[2]}  # region east, one each
    # the global unit on every machine with role=worker, none elsewhere: a row per machine
    def agents() -> list[str]:
        rows = json.loads(c.netctl(1, "list-units", "-o", "json", "--fields", "unit,machine,sub").stdout)
        return sorted(r["machine"].split("/")[0] for r in rows
                      if r["unit"] == "agent.service" and r["sub"] == "running")

    wait_for(lambda: agents() == sorted([m[2], m[3]]), 30, lambda: units(c))
    files_out = c.netctl(1, "list-unit-files").stdout
    assert "agent.service" in files_out and "global" in files_out and "web@.service" in files_out
    # endpoints and names
    eps = {e["unit"]: e for e in json.loads(c.netctl(1, "endpoints", "-o", "json").stdout)}
    assert eps["db.service"]["machine"] == m[3] and eps["db.service"]["ports"] == "80/tcp"
    assert dns(c, 1, "db.db.netd.local") == [eps["db.service"]["ip"]]
    assert dns(c, 2, "web.netd.local") == sorted(eps[f"web@{k}.service"]["ip"] for k in (1, 2, 3))
    assert dns(c, 3, "web-2.web.netd.local") == [eps["web@2.service"]["ip"]]
    # the client on h1 reached db on h3 by its DNS name (its journal, from h1's netd)
    c.netctl(1, "start", "client.service")
    wait_for(lambda: '"41000": "ok"' in c.netctl(1, "journal", "client.service").stdout, 40,
             lambda: c.netctl(1, "journal", "client.service").stdout + json.dumps(units(c)))
    status = c.netctl(1, "status", "db.service").stdout
    assert "Active: active (running)" in status and eps["db.service"]["ip"] in status
    # stop: withdrawn everywhere; unload and destroy
    c.netctl(1, "stop", "db.service")
    wait_for(lambda: "db.service" not in {e["unit"] for e in json.loads(c.netctl(1, "endpoints", "-o", "json")
                                                                        .stdout)}, 20, "db's endpoint stayed")
    wait_for(lambda: dns(c, 1, "db.db.netd.local") == [], 10, "db's name stayed")
    c.netctl(1, "destroy", "db.service")
    assert "db.service" not in c.netctl(1, "list-unit-files").stdout


def test_a_killed_host_has_its_units_placed_elsewhere_and_runs_nothing_twice_when_back(make_cluster):
    c = fleet(make_cluster)
    submit(c, {"move.service": f"[Service]\n{SERVE}[X-Fleet]\nMachineMetadata=role=worker\n"})
    on = wait_running(c, ["move.service"])
    host = {c.machine_id(i): i for i in (1, 2, 3)}[on["move.service"]]
    other = 5 - host  # the other worker: 2 or 3
    old_ip = json.loads(c.netctl(1, "endpoints", "move", "-o", "json").stdout)[0]["ip"]
    c.stop_netd(host, 9)  # its netd dies; its lease expires after the TTL (its unit's process lives on)
    t0 = time.monotonic()
    wait_for(lambda: running_on(c).get("move.service") == c.machine_id(other), TTL + 15, lambda: units(c))
    took = time.monotonic() - t0
    print(f"move.service running on host {other} {took:.1f}s after host {host}'s netd was killed (TTL {TTL}s)")
    assert took < TTL + 2  # (list-units itself takes ~0.3 s a poll here)
    new_ip = json.loads(c.netctl(1, "endpoints", "move", "-o", "json").stdout)[0]["ip"]
    assert new_ip != old_ip
    wait_for(lambda: dns(c, 1, "move.netd.local") == [new_ip], 2, lambda: dns(c, 1, "move.netd.local"))
    # host back: it stops what it no longer owns (its unit's process lived on, as a partitioned host's would)
    orphans = [n for n in os.listdir(os.path.join(c.host(host).workdir, "units")) if n.endswith(".json")
               and n != "addresses.json"]
    assert len(orphans) == 1, orphans
    c.start_netd(host, *c.host(host).extra)
    c.wait_ready(host, timeout=60)
    wait_for(lambda: not os.listdir(os.path.join(c.host(host).workdir, "units")) or
             all(not n.endswith(".json") or n == "addresses.json"
                 for n in os.listdir(os.path.join(c.host(host).workdir, "units"))), 20,
             lambda: os.listdir(os.path.join(c.host(host).workdir, "units")))
    time.sleep(1)
    assert running_on(c) == {"move.service": c.machine_id(other)}


def test_the_engine_moves_to_another_netd_when_its_leader_is_killed(make_cluster):
    c = fleet(make_cluster)

    def leader() -> int | None:
        for i in (1, 2, 3):
            ok, body = c.readyz(i)
            if body.get("scheduler", {}).get("engine", {}).get("leading"):  # type: ignore[union-attr]
                return i
        return None

    wait_for(lambda: leader() is not None, 20, "no engine leads")
    first = leader()
    assert first is not None
    assert sum(bool(c.readyz(i)[1].get("scheduler", {}).get("engine", {}).get("leading"))  # type: ignore
               for i in (1, 2, 3)) == 1
    submit(c, {"one.service": f"[Service]\n{SERVE}"})
    wait_running(c, ["one.service"])
    c.stop_netd(first, 9)
    rest = [i for i in (1, 2, 3) if i != first]
    def leading(i: int) -> bool:
        return bool(c.readyz(i)[1].get("scheduler", {}).get("engine", {}).get("leading"))  # type: ignore

    wait_for(lambda: any(leading(i) for i in rest), TTL + 15, "no engine took over")
    time.sleep(1)
    assert sum(leading(i) for i in rest) == 1  # one leader, not two
    c2 = c.netctl(rest[0], "start", *_unit_file(c, "two.service", f"[Service]\n{SERVE}")).stdout
    assert "two.service launched" in c2
    wait_running(c, ["two.service"])


def _unit_file(c: Cluster, name: str, text: str) -> list[str]:
    path = os.path.join(tempfile.mkdtemp(dir=c.workdir), name)
    with open(path, "w") as fh:
        fh.write(text)
    return [path]


def test_a_docker_unit_runs_on_the_overlay_and_shows_its_output(make_cluster, dockerd):
    from integration.docker import IMAGE

    c = make_cluster(2)
    c.set_config({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}})
    for i in (1, 2):
        c.start_netd(i, f"--docker-host={dockerd.host}", f"--machine-ttl={TTL}s")
    c.wait_ready(timeout=60)
    unit = (f"[Service]\nExecStart=sh -c 'echo hello from %n; mkdir -p /www; echo served-by-%n > /www/index.html; "
            f"exec httpd -f -p 80 -h /www'\n[X-Fleet]\nMachineID={c.machine_id(1)}\n[X-Netd]\nImage={IMAGE}\n"
            "Port=80\n")
    c.netctl(1, "start", *_unit_file(c, "www.service", unit))
    wait_running(c, ["www.service"], timeout=60)
    ip = json.loads(c.netctl(2, "endpoints", "www", "-o", "json").stdout)[0]["ip"]
    cli = dockerd.client()
    try:
        labels = [ct.labels for ct in cli.containers.list()]
        assert {"netd.unit": "www.service", "netd.machine": c.machine_id(1)} in labels
    finally:
        cli.close()
    # from host 2, over the overlay
    got = c.exec(2, "python3", "-c", f"import urllib.request; print(urllib.request.urlopen('http://{ip}/', "
                 "timeout=5).read().decode())", check=False)
    assert got.stdout.strip() == "served-by-www.service", got.stderr
    assert "hello from www.service" in c.netctl(2, "journal", "www.service").stdout
    c.netctl(1, "destroy", "www.service")
    wait_for(lambda: not dockerd.client().containers.list(all=True, sparse=True,  # (sparse: no inspect of one
                                                          filters={"label": "netd.unit=www.service"}),  # going)
             20, "the container stayed")


def test_a_unit_on_a_tenant_network_gets_an_endpoint_there(make_cluster):
    """Network=tenant:blue: an Endpoint object in the unit's namespace, wired by the switch loop on its
    host; a namespace endpoint of blue on the other host reaches it; stopped, the Endpoint goes."""
    from integration.tenants import TENANTS, apply_specs, attach, endpoint_states

    c = make_cluster(2, ovs=True)
    c.set_config({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}})
    for i in (1, 2):
        c.start_netd(i, f"--machine-ttl={TTL}s")
    c.wait_ready(timeout=60)
    apply_specs(c, TENANTS)
    unit = (f"[Service]\nExecStart=python3 -m integration.tools tcp-echo 7000\n[X-Fleet]\nMachineID="
            f"{c.machine_id(1)}\n[X-Netd]\nNetwork=overlay tenant:blue\n")
    c.netctl(1, "start", *_unit_file(c, "blue-svc.service", unit))
    wait_running(c, ["blue-svc.service"])

    def endpoint() -> dict:
        eps = json.loads(c.netctl(1, "get", "endpoints", "-o", "json").stdout)
        return next((e for e in eps if e["metadata"]["name"] == "u-blue-svc-blue"), {})

    wait_for(lambda: endpoint().get("state") == "wired", 30, lambda: (endpoint(), endpoint_states(c)))
    ep = endpoint()
    assert ep["spec"]["host"] == "h1" and ep["metadata"]["labels"] == {"netd.unit": "blue-svc.service"}
    peer = attach(c, 2, "blue", "10.20.0.77", "peer")
    wait_for(lambda: endpoint_states(c).get("peer") == "wired", 30, lambda: endpoint_states(c))
    assert peer.ping(ep["address"]["ip"], count=2)
    c.netctl(1, "stop", "blue-svc.service")
    wait_for(lambda: endpoint() == {}, 30, "the unit's Endpoint stayed after it stopped")


def test_a_unit_moved_between_live_machines_keeps_its_endpoint_and_name(make_cluster):
    """The old machine withdraws its endpoint only if it is still its own: the new machine's stays."""
    c = fleet(make_cluster)
    m = {i: c.machine_id(i) for i in (1, 2, 3)}
    submit(c, {"anchor.service": f"[Service]\nExecStart=sleep 1000\n[X-Fleet]\nMachineID={m[2]}\n",
               "mover.service": f"[Service]\n{SERVE}[X-Fleet]\nMachineMetadata=region=east\n"
                                "Conflicts=anchor.service\n"})
    wait_running(c, ["anchor.service", "mover.service"])
    assert running_on(c)["mover.service"] == m[1]  # east, and not with the anchor
    c.netctl(1, "destroy", "anchor.service")
    c.netctl(1, "start", *_unit_file(c, "anchor2.service", f"[Service]\nExecStart=sleep 1000\n[X-Fleet]\n"
                                                           f"MachineID={m[1]}\nReplaces=mover.service\n"))
    wait_for(lambda: running_on(c).get("mover.service") == m[2], 30, lambda: units(c))  # moved, both machines live

    def published() -> list[dict]:
        return json.loads(c.netctl(3, "endpoints", "mover", "-o", "json").stdout)

    wait_for(lambda: [e["machine"] for e in published()] == [m[2]], 15, published)
    ip = published()[0]["ip"]
    wait_for(lambda: dns(c, 3, "mover.netd.local") == [ip], 5, lambda: dns(c, 3, "mover.netd.local"))
    time.sleep(3)  # (then it must stay: nothing withdraws the new machine's record)
    assert [e["machine"] for e in published()] == [m[2]] and dns(c, 3, "mover.netd.local") == [ip]
