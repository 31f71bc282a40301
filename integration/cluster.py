"""Namespace hosts: ``Cluster(n)`` builds n hosts joined by an underlay, each able to run netd.

Layout (all names carry a per-cluster tag, so clusters never collide and cleanup is exact):
  * ``<tag>-u``: the underlay namespace, a Linux bridge ``br0`` at 10.250.0.254/24 (the hosts'
    default gateway, standing in for "outside the cluster"); the cluster's etcd runs here;
  * ``<tag>-hI``: host I, ``eth0`` at 10.250.0.(10+I)/24 with a default route via .254;
  * ``<tag>-hIcJ``: container J on host I: ``eth0`` wired by veth to a bridge ``cni0`` in the
    host, addressed from the host's subnet.env (what a CNI bridge plugin or docker would do).

Nothing is created in the root namespace. ``close()`` kills every process and deletes every
namespace even after a failed test. This is the interface scenario tests are written against;
the Vagrant implementation (issue #4) will offer the same methods.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from integration.etcd import ETCDCTL, EtcdServer

UNDERLAY = ipaddress.IPv4Network("10.250.0.0/24")
GATEWAY = "10.250.0.254"
HEALTHZ_PORT = 9180
_counter = itertools.count(1)


def sh(cmd: Sequence[str], check: bool = True, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r  # type: ignore[no-any-return]


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """Run the body with this thread inside ``ns`` (sockets created there stay there)."""
    from pyroute2 import netns as pnetns

    pnetns.pushns(ns)
    try:
        yield
    finally:
        pnetns.popns()


@dataclass
class Container:
    name: str  # namespace name
    host: int
    ip: ipaddress.IPv4Address
    ip6: ipaddress.IPv6Address | None = None  # on a dual-stack network (FLANNEL_IPV6_SUBNET)


@dataclass
class Host:
    index: int
    ns: str
    ip: str
    workdir: str
    subnet_file: str
    proc: subprocess.Popen[bytes] | None = None
    flags: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # the flags a test added, kept across restarts

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "netd.log")


#: Run on a host (python3 -c PROBE SUBNET_FILE PORT): what its data path holds, as JSON.
#: a GET of netd's healthz port from a host, with sockets only (urllib.request's imports cost the
#: emulated VMs most of a second per probe, and the scenarios send hundreds): prints "STATUS BODY",
#: status 0 and the error if netd does not answer
_HTTP_GET = """
import json, socket
def http_get(port, path):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(f"GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\\r\\n\\r\\n")
        return int(head.split(b" ", 2)[1]), body.decode()
    except (OSError, ValueError, IndexError) as exc:
        return 0, json.dumps({"reason": str(exc)})
"""

_DATAPATH_PROBE = _HTTP_GET + """
import subprocess, sys
def routes(*sel):
    out = subprocess.run(["ip", "-j", "route", "show", *sel], capture_output=True, text=True).stdout
    return [r.get("dst") for r in json.loads(out or "[]")]
status, body = http_get(int(sys.argv[2]), "/dataplane")
try:
    view = json.loads(body) if status == 200 else {}
except ValueError:
    view = {}
network = None
try:
    for line in open(sys.argv[1]):
        if line.startswith("FLANNEL_NETWORK="):
            network = line.strip().split("=", 1)[1]
except OSError:
    pass
print(json.dumps({"backend": view.get("backend"), "fast_path_routes": view.get("routes", []),
                  "netd_routes": routes("proto", "101"), "tun_routes": routes("dev", "flannel0"),
                  "network": network}))
"""


class ClusterBase:
    """What scenario tests use, written once over a few primitives (exec, popen, copy_to, ...).

    ``Cluster`` (namespace hosts) and ``VagrantCluster`` (integration/vagrant_cluster.py)
    implement the primitives; everything else here works on either.
    """

    size: int

    def exec(self, i: int, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def popen(self, i: int, *cmd: str) -> subprocess.Popen[str]:
        """Start a command on host i in the background (stdout piped, text)."""
        raise NotImplementedError

    def copy_to(self, i: int, src: str, dst: str) -> None:
        raise NotImplementedError

    def host_ip(self, i: int) -> str:
        raise NotImplementedError

    def subnet_file(self, i: int) -> str:
        raise NotImplementedError

    def netctl(self, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def reboot(self, i: int) -> None:
        raise NotImplementedError

    def restart_netd(self, i: int) -> None:
        raise NotImplementedError

    def netd_log(self, i: int) -> str:
        raise NotImplementedError

    # -- built on the primitives -------------------------------------------------------------
    def http_json(self, i: int, path: str) -> tuple[bool, dict[str, object]]:
        """GET a JSON path of host i's netd (/readyz, /dataplane): (status 200, body)."""
        probe = _HTTP_GET + f"print(*http_get({HEALTHZ_PORT}, {path!r}))"
        out = self.exec(i, "python3", "-c", probe, check=False).stdout.strip()
        try:
            status, body = out.split(" ", 1)
            return status == "200", json.loads(body)
        except ValueError:
            return False, {"reason": f"no answer: {out!r}"}

    def readyz(self, i: int) -> tuple[bool, dict[str, object]]:
        return self.http_json(i, "/readyz")

    def wait_ready(self, *hosts: int, timeout: float = 30) -> None:
        for i in hosts or range(1, self.size + 1):
            wait_for(lambda i=i: self.readyz(i)[0], timeout,
                     lambda i=i: f"host {i} not ready: {self.readyz(i)[1]}\n{self.netd_log(i)[-3000:]}")

    def subnet(self, i: int) -> ipaddress.IPv4Network | None:
        return self.subnets(i)[0]

    def subnets(self, i: int) -> tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None]:
        """Host i's subnet and IPv6 subnet (None off dual stack), from one read of its subnet.env."""
        from netd.core.subnetenv import previous_ipv6_subnet, previous_subnet

        text = self.exec(i, "cat", self.subnet_file(i), check=False).stdout
        return previous_subnet(text), previous_ipv6_subnet(text)

    def subnet_env(self, i: int) -> dict[str, str]:
        from netd.core.subnetenv import parse_subnet_env

        return parse_subnet_env(self.exec(i, "cat", self.subnet_file(i), check=False).stdout)

    def routes(self, i: int, proto: int = 101) -> set[str]:
        """Destinations of netd's kernel routes on host i."""
        out = self.exec(i, "ip", "-j", "route", "show", "proto", str(proto)).stdout
        return {r["dst"] for r in json.loads(out or "[]")}

    def route_details(self, i: int) -> list[dict[str, object]]:
        return json.loads(self.exec(i, "ip", "-j", "route", "show", "proto", "101").stdout or "[]")

    def peer_subnets(self, i: int) -> set[str]:
        """The other hosts' subnets, and their IPv6 subnets when host i and they are dual-stack."""
        dual = self.subnets(i)[1] is not None
        peers = [self.subnets(j) for j in range(1, self.size + 1) if j != i]
        return {str(v4) for v4, _ in peers} | {str(v6) for _, v6 in peers if dual and v6 is not None}

    def overlay_routes(self, i: int) -> set[str]:
        """Peer subnets host i's data path routes, read from the data path, not from netd's
        report of what it did: the kernel's routes of netd (vxlan, host-gw); for udp, the table the
        fast path's threads route by (read back from C through /dataplane), counted only while the
        kernel routes the cluster network into flannel0. One command on the host (on the VMs each
        one is an ssh round trip)."""
        out = self.exec(i, "python3", "-c", _DATAPATH_PROBE, self.subnet_file(i), str(HEALTHZ_PORT),
                        check=False).stdout
        try:
            seen = json.loads(out)
        except ValueError:
            return set()
        if seen["backend"] is None:
            return set()
        if seen["backend"] != "udp":
            return set(seen["netd_routes"])
        if seen["network"] is None or seen["network"] not in seen["tun_routes"]:
            return set()
        return set(seen["fast_path_routes"])

    def wait_mesh(self, timeout: float = 15) -> None:
        """Until every host's data path routes exactly the other hosts' subnets."""
        for i in range(1, self.size + 1):
            wait_for(lambda i=i: self.overlay_routes(i) == self.peer_subnets(i), timeout,
                     lambda i=i: f"host {i} routes {self.overlay_routes(i)} != peers {self.peer_subnets(i)}")

    def container_name(self, i: int, j: int) -> str:
        return f"c{j}"

    def add_container(self, i: int, timeout: float = 30) -> Container:
        """A namespace 'container' on host i, on bridge cni0, addressed from the host's subnet.env
        (what a CNI bridge plugin or docker would do)."""
        wait_for(lambda: self.subnet(i) is not None, timeout, lambda: f"no subnet.env on host {i}")
        subnet = self.subnet(i)
        assert subnet is not None
        env = self.subnet_env(i)
        mtu = env.get("FLANNEL_MTU", "1450")
        gw = subnet.network_address + 1
        if self.exec(i, "ip", "link", "show", "cni0", check=False).returncode != 0:
            self.exec(i, "ip", "link", "add", "cni0", "type", "bridge")
            self.exec(i, "ip", "addr", "add", f"{gw}/{subnet.prefixlen}", "dev", "cni0")
            self.exec(i, "ip", "link", "set", "cni0", "mtu", mtu, "up")
        existing = self.exec(i, "ip", "-br", "link", "show", "master", "cni0").stdout.split()
        j = 1 + sum(1 for w in existing if w.startswith("ve") and "@" in w)
        name = self.container_name(i, j)
        ip = subnet.network_address + 10 + j
        self.netns_add(i, name)
        self.exec(i, "ip", "link", "add", f"ve{j}", "mtu", mtu, "type", "veth", "peer", "name", "eth0", "netns", name)
        self.exec(i, "ip", "link", "set", f"ve{j}", "master", "cni0", "up")
        v6 = env.get("FLANNEL_IPV6_SUBNET")
        subnet6 = ipaddress.IPv6Interface(v6).network if v6 else None
        c = Container(name, i, ip, subnet6.network_address + 10 + j if subnet6 else None)
        self.container_exec(c, "ip", "link", "set", "lo", "up")
        self.container_exec(c, "ip", "link", "set", "eth0", "mtu", mtu, "up")
        self.container_exec(c, "ip", "addr", "add", f"{ip}/{subnet.prefixlen}", "dev", "eth0")
        self.container_exec(c, "ip", "route", "add", "default", "via", str(gw))
        if subnet6 is not None:
            gw6 = f"{subnet6.network_address + 1}/{subnet6.prefixlen}"
            if gw6 not in self.exec(i, "ip", "-6", "-br", "addr", "show", "dev", "cni0").stdout:
                self.exec(i, "ip", "addr", "add", gw6, "dev", "cni0", "nodad")
            self.container_exec(c, "ip", "addr", "add", f"{c.ip6}/{subnet6.prefixlen}", "dev", "eth0", "nodad")
            self.container_exec(c, "ip", "-6", "route", "add", "default", "via", str(subnet6.network_address + 1))
        return c

    def netns_add(self, i: int, name: str) -> None:
        self.exec(i, "ip", "netns", "add", name)

    def netns_del(self, i: int, name: str) -> None:
        self.exec(i, "ip", "netns", "del", name, check=False)

    def script(self, i: int, text: str, timeout: float = 120) -> str:
        """A shell script on host i, where its containers' namespaces are named (one round trip on
        VMs, where each command is an ssh): its output."""
        return self.exec(i, "sh", "-c", text, check=False, timeout=timeout).stdout

    def node_name(self, i: int) -> str:
        """Host i's name in Endpoint specs (netd's --node-name)."""
        return f"node{i}"

    def machine_id(self, i: int) -> str:
        """Host i's machine ID (netd's --machine-id, default /etc/machine-id)."""
        return self.exec(i, "cat", "/etc/machine-id").stdout.strip()

    def halt(self, i: int) -> None:
        """Host i stops: netd and every process on it (it is not brought back)."""
        raise NotImplementedError

    def ovs_tool(self, i: int, tool: str, *args: str) -> str:
        """An OVS tool (ovs-appctl, ovs-ofctl, ovs-vsctl) against host i's Open vSwitch."""
        return self.exec(i, tool, *args).stdout

    def container_exec(self, c: Container, *cmd: str, check: bool = True,
                       timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.exec(c.host, "ip", "netns", "exec", c.name, *cmd, check=check, timeout=timeout)

    def container_popen(self, c: Container, *cmd: str) -> subprocess.Popen[str]:
        return self.popen(c.host, "ip", "netns", "exec", c.name, *cmd)

    def ping(self, src: Container, dst: ipaddress.IPv4Address | ipaddress.IPv6Address | str, count: int = 1,
             interval: float = 0.2, deadline: float = 5) -> subprocess.CompletedProcess[str]:
        return self.container_exec(src, "ping", "-n", "-c", str(count), "-i", str(interval), "-w", str(deadline),
                                   str(dst), check=False, timeout=deadline + 30)

    def can_ping(self, src: Container, dst: ipaddress.IPv4Address | ipaddress.IPv6Address | str) -> bool:
        return self.ping(src, dst, count=1, deadline=3).returncode == 0


class Cluster(ClusterBase):
    """n namespace hosts on one underlay, with a real etcd on the underlay."""

    def __init__(self, n: int, etcd: bool = True, etcd_prefix: str = "/coreos.com/network",
                 etcd_tick_ms: int = 10, ovs: bool = False) -> None:
        """etcd_tick_ms: etcd's heartbeat (the election timeout is 10 ticks); tests use 10 ms, so
        elections are quick; etcd's own default, 100 ms, keeps an idle etcd quieter.
        ovs: every host gets its own ovsdb-server + ovs-vswitchd (userspace datapath) and a second
        underlay link, eth1 at 10.250.1.(10+I)/24, for the tenant tunnels (OVS takes it over: br-phy),
        and netd runs its switch loop (node name hI)."""
        self.ovs = ovs
        self.ovs_servers: dict[int, Any] = {}
        self.tag = f"nd{os.getpid() % 10000}x{next(_counter)}"
        self.workdir = tempfile.mkdtemp(prefix=f"netd-{self.tag}-")
        self.underlay_ns = f"{self.tag}-u"
        self.etcd_prefix = etcd_prefix
        self.hosts: list[Host] = []
        self.etcd: EtcdServer | None = None
        try:
            self._build(n)
            if etcd:
                self.etcd = EtcdServer(
                    "cluster", listen_ips=[GATEWAY], client_port=2379, peer_port=2380, netns=self.underlay_ns,
                    data_dir=os.path.join(self.workdir, "etcd"),
                    heartbeat_ms=etcd_tick_ms, election_timeout_ms=10 * etcd_tick_ms,
                )
                os.makedirs(self.etcd.data_dir, exist_ok=True)
                self.etcd.start()
        except BaseException:
            self.close()
            raise

    # -- topology --------------------------------------------------------------------------
    def _build(self, n: int) -> None:
        u = self.underlay_ns
        sh(["ip", "netns", "add", u])
        sh(in_ns(u, "ip", "link", "set", "lo", "up"))
        sh(in_ns(u, "ip", "link", "add", "br0", "type", "bridge"))
        sh(in_ns(u, "ip", "addr", "add", f"{GATEWAY}/24", "dev", "br0"))
        sh(in_ns(u, "ip", "link", "set", "br0", "up"))
        for i in range(1, n + 1):
            self._add_host(i)

    def _add_host(self, i: int) -> Host:
        host = self._make_host(i)
        self.hosts.append(host)
        return host

    def _make_host(self, i: int) -> Host:
        ns = f"{self.tag}-h{i}"
        ip = str(UNDERLAY.network_address + 10 + i)
        workdir = os.path.join(self.workdir, f"h{i}")
        os.makedirs(workdir, exist_ok=True)
        sh(["ip", "netns", "add", ns])
        sh(in_ns(ns, "ip", "link", "set", "lo", "up"))
        sh(in_ns(ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", f"h{i}", "netns", self.underlay_ns))
        sh(in_ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0"))
        sh(in_ns(ns, "ip", "link", "set", "eth0", "up"))
        sh(in_ns(ns, "ip", "route", "add", "default", "via", GATEWAY))
        sh(in_ns(self.underlay_ns, "ip", "link", "set", f"h{i}", "master", "br0", "up"))
        if self.ovs:
            from integration.ovs import OvsServer

            sh(in_ns(ns, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", f"t{i}", "netns",
                     self.underlay_ns))
            sh(in_ns(ns, "ip", "addr", "add", f"{self.tunnel_ip(i)}/24", "dev", "eth1"))
            sh(in_ns(ns, "ip", "link", "set", "eth1", "up"))
            sh(in_ns(self.underlay_ns, "ip", "link", "set", f"t{i}", "master", "br0", "up"))
            self.ovs_servers[i] = OvsServer(os.path.join(workdir, "ovs"), netns=ns).start()
        return Host(i, ns, ip, workdir, os.path.join(workdir, "subnet.env"))

    @staticmethod
    def tunnel_ip(i: int) -> str:
        return f"10.250.1.{10 + i}"

    def ovs_flags(self, i: int) -> list[str]:
        if not self.ovs:
            return []
        return ["--ovs-bridge=netd-int", f"--ovs-rundir={self.ovs_servers[i].rundir}", "--ovs-datapath=netdev",
                "--ovs-phy-iface=eth1", f"--tunnel-ip={self.tunnel_ip(i)}", f"--node-name={self.node_name(i)}"]

    def host(self, i: int) -> Host:
        return self.hosts[i - 1]

    @property
    def size(self) -> int:  # type: ignore[override]
        return len(self.hosts)

    def host_ip(self, i: int) -> str:
        return self.host(i).ip

    def subnet_file(self, i: int) -> str:
        return self.host(i).subnet_file

    def container_name(self, i: int, j: int) -> str:
        return f"{self.host(i).ns}c{j}"

    def popen(self, i: int, *cmd: str) -> subprocess.Popen[str]:
        return subprocess.Popen(in_ns(self.host(i).ns, *cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    # Namespaces made or entered from inside `ip netns exec` live in its private mount namespace:
    # container namespaces are made and entered from here instead.
    def netns_add(self, i: int, name: str) -> None:
        sh(["ip", "netns", "add", name])

    def netns_del(self, i: int, name: str) -> None:
        sh(["ip", "netns", "del", name], check=False)

    def script(self, i: int, text: str, timeout: float = 120) -> str:
        return sh(["sh", "-c", text], check=False, timeout=timeout).stdout  # the boxes are named here

    def node_name(self, i: int) -> str:
        return f"h{i}"

    def machine_id(self, i: int) -> str:
        """Host i's machine ID (the namespace hosts share /etc/machine-id)."""
        return f"{self.tag}-m{i}"

    def ovs_tool(self, i: int, tool: str, *args: str) -> str:
        server = self.ovs_servers[i]
        return self.exec(i, "env", f"OVS_RUNDIR={server.rundir}", f"OVS_DBDIR={server.workdir}", tool, *args).stdout

    def container_exec(self, c: Container, *cmd: str, check: bool = True,
                       timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh(in_ns(c.name, *cmd), check=check, timeout=timeout)

    def container_popen(self, c: Container, *cmd: str) -> subprocess.Popen[str]:
        return subprocess.Popen(in_ns(c.name, *cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def copy_to(self, i: int, src: str, dst: str) -> None:
        shutil.copyfile(src, dst)  # the namespace hosts share this machine's filesystem

    def reboot(self, i: int) -> None:
        """What a reboot does to a host: processes die, its network namespace (devices, routes,
        containers) is gone and so is /run (subnet.env, the udp route cache); then netd starts
        again with the same flags, as systemd would. Its underlay address stays."""
        h = self.host(i)
        flags = h.extra
        self.stop_netd(i, signal.SIGKILL)
        self.kill_units(i)  # a reboot ends the units' processes too
        if i in self.ovs_servers:  # its OVS dies too; a fresh one starts with the host (its workdir goes)
            self.ovs_servers.pop(i).stop()
        self._delete_namespaces(f"{h.ns}c")
        subprocess.run(["ip", "netns", "del", h.ns], capture_output=True)
        # the kernel tears the namespace down asynchronously: remove the underlay end now
        for end in (f"h{i}", f"t{i}"):
            subprocess.run(in_ns(self.underlay_ns, "ip", "link", "del", end), capture_output=True)
        shutil.rmtree(h.workdir, ignore_errors=True)
        self.hosts[i - 1] = self._make_host(i)
        self.start_netd(i, *flags)

    def halt(self, i: int) -> None:
        self.stop_netd(i, signal.SIGKILL)
        self.kill_units(i)

    def kill_units(self, i: int) -> int:
        """Kill the processes of host i's netns-runtime units (they outlive netd, by design), by the pid
        files netd keeps in its state dir (with each process's start time: never a recycled pid)."""
        killed = 0
        units = os.path.join(self.host(i).workdir, "units")
        for name in os.listdir(units) if os.path.isdir(units) else []:
            if not name.endswith(".json") or name == "addresses.json":
                continue
            try:
                with open(os.path.join(units, name)) as fh:
                    rec = json.load(fh)
                with open(f"/proc/{int(rec['pid'])}/stat") as fh:
                    began = fh.read().rsplit(")", 1)[1].split()[19]
            except (OSError, ValueError, KeyError, IndexError):
                continue
            if began == rec.get("start"):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(rec["pid"]), signal.SIGKILL)
                    killed += 1
        return killed

    def _delete_namespaces(self, prefix: str) -> None:
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(prefix):
                pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def restart_netd(self, i: int) -> None:
        self.stop_netd(i)
        self.start_netd(i, *self.host(i).extra)

    @property
    def etcd_endpoint(self) -> str:
        assert self.etcd is not None
        return self.etcd.endpoint

    # -- running commands --------------------------------------------------------------------
    def exec(self, i: int, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command on host i."""
        return sh(in_ns(self.host(i).ns, *cmd), check=check, timeout=timeout)

    def netctl(self, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "netd.cli.netctl_main", f"--etcd-endpoints={self.etcd_endpoint}",
               f"--etcd-prefix={self.etcd_prefix}", *args]
        if args and args[0] == "stats":
            cmd.append(f"--url=http://{self.host(i).ip}:{HEALTHZ_PORT}/metrics")
        return self.exec(i, *cmd, check=check)

    def etcdctl(self, *args: str) -> str:
        assert self.etcd is not None
        return self.etcd.etcdctl(*args)

    def set_config(self, config: dict[str, object] | str) -> None:
        raw = config if isinstance(config, str) else json.dumps(config)
        self.etcdctl("put", f"{self.etcd_prefix}/config", raw)

    # -- netd --------------------------------------------------------------------------------
    def start_netd(self, i: int, *extra: str, resync: float = 1.0) -> Host:
        h = self.host(i)
        if h.proc is not None and h.proc.poll() is None:
            raise RuntimeError(f"netd already runs on host {i}")
        h.extra = list(extra)
        h.flags = [
            f"--etcd-endpoints={self.etcd_endpoint}",
            f"--etcd-prefix={self.etcd_prefix}",
            "--iface=eth0",
            f"--subnet-file={h.subnet_file}",
            f"--state-dir={h.workdir}",
            f"--healthz-port={HEALTHZ_PORT}",
            f"--resync-interval={resync}",
            f"--machine-id={self.machine_id(i)}",
            "--log-level=debug",
            *self.ovs_flags(i),
            *extra,
        ]
        logf = open(h.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        h.proc = subprocess.Popen(
            in_ns(h.ns, sys.executable, "-m", "netd.cli.agent_main", *h.flags),
            stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, env=env,
        )
        logf.close()
        return h

    def stop_netd(self, i: int, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        h = self.host(i)
        if h.proc is None:
            return None
        if h.proc.poll() is None:
            h.proc.send_signal(sig)
            try:
                h.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                h.proc.kill()
                h.proc.wait()
        code, h.proc = h.proc.returncode, None
        return code

    def netd_pid(self, i: int) -> int | None:
        p = self.host(i).proc
        return p.pid if p is not None and p.poll() is None else None

    def netd_log(self, i: int) -> str:
        try:
            with open(self.host(i).log_path, errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def http_get(self, i: int, path: str, timeout: float = 3) -> tuple[int, str]:
        """GET from host i's healthz port (status, body)."""
        h = self.host(i)
        with entered(h.ns):
            conn = http.client.HTTPConnection(h.ip, HEALTHZ_PORT, timeout=timeout)
            conn.connect()
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def http_json(self, i: int, path: str) -> tuple[bool, dict[str, object]]:
        try:
            status, body = self.http_get(i, path)
        except OSError as exc:
            return False, {"reason": f"healthz unreachable: {exc}"}
        return status == 200, json.loads(body)

    # -- teardown --------------------------------------------------------------------------------
    def close(self) -> None:
        for h in self.hosts:
            with contextlib.suppress(Exception):
                self.stop_netd(h.index, signal.SIGKILL)
            self.kill_units(h.index)
        if self.etcd is not None:
            self.etcd.kill()
        for server in self.ovs_servers.values():
            with contextlib.suppress(Exception):
                server.stop()
        self._delete_namespaces(f"{self.tag}-")
        if os.environ.get("NETD_KEEP_LOGS"):
            print(f"cluster logs kept in {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def capture(argv: Sequence[str]) -> subprocess.Popen[str]:
    """Start tcpdump (``argv``: the whole command, e.g. ``in_ns(ns, "tcpdump", "-l", ...)``) and
    return once it captures (its "listening on" line), so nothing sent afterwards is missed."""
    p = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    said = ""
    while "listening on" not in said:  # after "verbose output suppressed, ..."
        line = p.stderr.readline()
        if not line:
            p.kill()
            raise AssertionError(f"tcpdump did not start: {said}")
        said += line
    return p


def wait_stable(read: object, timeout: float, still: float = 0.5, interval: float = 0.1) -> object:
    """Poll ``read()`` until its value has not changed for ``still`` seconds; that value."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()  # type: ignore[operator]
    while time.monotonic() - since < still:
        if time.monotonic() > deadline:
            raise AssertionError(f"still changing after {timeout}s: {value!r}")
        time.sleep(interval)
        now = read()  # type: ignore[operator]
        if now != value:
            value, since = now, time.monotonic()
    return value


def metric(c: ClusterBase, i: int, name: str) -> float:
    """The value of metric ``name`` (no labels) on host i's /metrics; it must be there."""
    _, text = c.http_get(i, "/metrics")  # type: ignore[attr-defined]
    values = [float(line.split()[-1]) for line in text.splitlines() if line.split(" ")[0] == name]
    assert values, f"{name} not in host {i}'s metrics"
    return values[0]


def reconcile_runs(c: ClusterBase, i: int) -> float:
    """netd_reconcile_runs_total of host i (read from its /metrics)."""
    return metric(c, i, "netd_reconcile_runs_total")


def wait_resyncs(c: ClusterBase, hosts: Sequence[int], n: int = 2, timeout: float = 20,
                 counter: str = "netd_reconcile_runs_total") -> None:
    """Until each host has run ``n`` more full syncs, counted by ``counter`` (the overlay's
    reconciles; netd_ovs_apply_seconds_count: the switch loop's): whatever they would change, they have."""
    start = {i: metric(c, i, counter) for i in hosts}
    for i in hosts:
        wait_for(lambda i=i: metric(c, i, counter) >= start[i] + n, timeout, f"host {i} does not resync")


def wait_for(cond: object, timeout: float, message: object = "condition", interval: float = 0.1) -> None:
    """Poll ``cond()`` until true or fail with ``message`` (a string or a callable giving one)."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s: {text}")
        time.sleep(interval)


__all__ = ["Cluster", "Container", "ETCDCTL", "Host", "capture", "metric", "wait_for", "wait_resyncs", "wait_stable"]
