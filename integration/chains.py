"""Service-chain helpers for scenarios on any cluster (namespace hosts or the Vagrant VMs): a
tenant with endpoints, service functions as network namespaces that bridge their two legs and
count (and mark) what passes with nftables, chains applied with netctl, and the counters read back.

The marks prove the order: the firewall sets DSCP cs1 on the chain's traffic and the monitor turns
cs1 into cs3, so a packet that reaches the server with cs3 passed the firewall and then the
monitor; on the replies the monitor sets cs2 and the firewall turns it into cs4. The first
function of each direction marks whatever DSCP a packet has: a kernel's RST (and some ACKs)
carry the DSCP of the packet they answer (a server's RST leaves with cs3), which seen as "not
cs0" would go unmarked through the chain it did pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from integration.cluster import ClusterBase, in_ns, sh, wait_for
from integration.tenants import apply_specs, wait_wired

TENANT, VNI, SUBNET = "web", 6001, "10.30.0"

#: nftables inside each kind of function (bridge family: it sees what the function forwards)
FIREWALL_RULES = """table bridge sf {
  counter through { }
  counter back { }
  counter blocked { }
  chain forward {
    type filter hook forward priority 0; policy accept;
    tcp dport 81 counter name "blocked" drop
    tcp dport 80 counter name "through" ip dscp set cs1
    tcp sport 80 ip dscp cs2 counter name "back" ip dscp set cs4
  }
}
"""
MONITOR_RULES = """table bridge sf {
  counter through { }
  counter back { }
  counter unmarked { }
  set flows { type inet_service; flags dynamic; }
  set replies { type inet_service; flags dynamic; }
  chain forward {
    type filter hook forward priority 0; policy accept;
    tcp dport 80 add @flows { tcp sport }
    tcp sport 80 add @replies { tcp dport }
    tcp dport 80 ip dscp cs1 counter name "through" ip dscp set cs3
    tcp dport 80 ip dscp cs0 counter name "unmarked"
    tcp sport 80 counter name "back" ip dscp set cs2
  }
}
"""
#: on the chain's two ends (inet family, input): what arrived, and what arrived with the last mark
SERVER_END_RULES = """table inet end {
  counter arrived { }
  counter marked { }
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport 80 counter name "arrived"
    tcp dport 80 ip dscp cs3 counter name "marked"
  }
}
"""
CLIENT_END_RULES = """table inet end {
  counter arrived { }
  counter marked { }
  chain input {
    type filter hook input priority 0; policy accept;
    tcp sport 80 counter name "arrived"
    tcp sport 80 ip dscp cs4 counter name "marked"
  }
}
"""


def firewall(port: int = 80) -> str:
    """Drops port+1, marks the chain's traffic to ``port`` cs1 and turns the monitor's cs2 on its replies into cs4."""
    return FIREWALL_RULES.replace("dport 81", f"dport {port + 1}").replace("port 80", f"port {port}")


def monitor(port: int = 80) -> str:
    return MONITOR_RULES.replace("port 80", f"port {port}")


FIREWALL, MONITOR = firewall(), monitor()


def ns_name(c: ClusterBase, name: str) -> str:
    return f"{getattr(c, 'tag', 'netd')}-{name}"


def ip(n: int) -> str:
    return f"{SUBNET}.{n}"


def tenant_doc() -> str:
    return (f"---\napiVersion: netd/v1\nkind: TenantNetwork\nmetadata: {{name: {TENANT}}}\n"
            f"spec: {{vni: {VNI}, subnet: {SUBNET}.0/24}}\n")


def endpoint_doc(c: ClusterBase, name: str, host: int, address: str, ns: str, interface: str | None = None) -> str:
    iface = f", interface: {interface}" if interface else ""
    return (f"---\napiVersion: netd/v1\nkind: Endpoint\nmetadata: {{name: {name}}}\n"
            f"spec: {{tenant: {TENANT}, host: {c.node_name(host)}, netns: {ns}, ip: {address}{iface}}}\n")


@dataclass
class Sf:
    name: str
    host: int
    ingress_ip: str
    egress_ip: str
    rules: str

    def docs(self, c: ClusterBase) -> str:
        ns = ns_name(c, self.name)
        return (endpoint_doc(c, f"{self.name}-in", self.host, self.ingress_ip, ns, "in0")
                + endpoint_doc(c, f"{self.name}-out", self.host, self.egress_ip, ns, "out0")
                + f"---\napiVersion: netd/v1\nkind: ServiceFunction\nmetadata: {{name: {self.name}}}\n"
                  f"spec: {{tenant: {TENANT}, ingress: {self.name}-in, egress: {self.name}-out}}\n")


def chain_doc(name: str, hops: list, classifier: dict, symmetric: bool = True, on_hop_down: str = "drop",
              priority: int = 0) -> str:
    spec = {"tenant": TENANT, "classifier": classifier, "hops": hops, "symmetric": symmetric,
            "onHopDown": on_hop_down, "priority": priority}
    return f"---\napiVersion: netd/v1\nkind: ServiceChain\nmetadata: {{name: {name}}}\nspec: {json.dumps(spec)}\n"


def setup(c: ClusterBase, ends: dict[str, tuple[int, int]], sfs: list[Sf], chains: str = "",
          timeout: float = 60) -> None:
    """Namespaces for the ends (name -> (host, address's last byte)) and the functions, one apply
    of the tenant, their endpoints, the functions and ``chains``; then, once wired, each function
    bridges its legs and loads its rules, and the ends get their counters."""
    for host in sorted({h for h, _ in ends.values()} | {s.host for s in sfs}):
        names = [ns_name(c, n) for n, (h, _) in ends.items() if h == host] + \
                [ns_name(c, s.name) for s in sfs if s.host == host]
        c.script(host, "; ".join(f"ip netns add {n}" for n in names))
    docs = tenant_doc() + "".join(endpoint_doc(c, n, h, ip(last), ns_name(c, n)) for n, (h, last) in ends.items())
    docs += "".join(s.docs(c) for s in sfs) + chains
    apply_specs(c, docs, "chain.yaml")
    wait_wired(c, *ends, *(f"{s.name}-{leg}" for s in sfs for leg in ("in", "out")), timeout=timeout)
    for s in sfs:
        ns = ns_name(c, s.name)
        c.script(s.host, f"ip netns exec {ns} sh -ec 'ip link add br0 type bridge; ip link set in0 master br0; "
                         f"ip link set out0 master br0; ip link set br0 up'\n"
                         f"ip netns exec {ns} nft -f - <<'EOF'\n{s.rules}EOF\n")
        assert counters(c, s.host, s.name), f"nftables rules not loaded in function {s.name}"


def load_ends(c: ClusterBase, server: tuple[int, str], client: tuple[int, str], port: int = 80) -> None:
    for (host, name), rules in ((server, SERVER_END_RULES), (client, CLIENT_END_RULES)):
        rules = rules.replace("port 80", f"port {port}")
        c.script(host, f"ip netns exec {ns_name(c, name)} nft -f - <<'EOF'\n{rules}EOF\n")
        assert set(counters(c, host, name)) == {"arrived", "marked"}, f"nftables rules not loaded in {name}"


def counters(c: ClusterBase, host: int, name: str) -> dict[str, int]:
    """The named nftables counters in function (or end) ``name``'s namespace: name -> packets."""
    out = c.script(host, f"ip netns exec {ns_name(c, name)} nft -j list counters")
    return {o["counter"]["name"]: int(o["counter"]["packets"]) for o in json.loads(out)["nftables"]
            if "counter" in o}


def nft_set(c: ClusterBase, host: int, name: str, set_name: str) -> set[int]:
    out = c.script(host, f"ip netns exec {ns_name(c, name)} nft -j list set bridge sf {set_name}")
    elems = next(o["set"] for o in json.loads(out)["nftables"] if "set" in o).get("elem", [])
    return {int(e["elem"]["val"]) if isinstance(e, dict) else int(e) for e in elems}


def start_echo(name: str, *ports: int) -> subprocess.Popen[str]:
    """A TCP answerer on ``ports`` in namespace ``name`` (namespace hosts: this machine's); the
    caller stops it."""
    p = subprocess.Popen(in_ns(name, sys.executable, "-m", "integration.tools", "tcp-echo", *map(str, ports)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening", p.stderr.read() if p.stderr else ""
    return p


def flows(name: str, dst: str, port: int, count: int = 1, kbytes: int = 64, sport: int = 40000,
          timeout: float = 5) -> dict[str, str]:
    """``count`` TCP connections from namespace ``name`` to dst:port: source port -> "ok" or the error."""
    out = sh(in_ns(name, sys.executable, "-m", "integration.tools", "tcp-flows", dst, str(port), str(count),
                   str(kbytes), str(sport), str(timeout)), timeout=60 + count * timeout * 2).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def wait_chain_state(c: ClusterBase, chain: str, want: str, timeout: float = 30) -> dict:
    """Until `netctl get chains -o json` says ``want`` (a prefix) for ``chain``; its row (the one
    read last: on the VMs each netctl costs seconds)."""
    last: dict = {}

    def row() -> dict:
        rows = json.loads(c.netctl(1, "get", "chains", "-o", "json").stdout)
        last.update(next(r for r in rows if r["metadata"]["name"] == chain))
        return last

    wait_for(lambda: row()["status"]["state"].startswith(want), timeout, lambda: last.get("status"))
    return last


def wait_hops_counted(c: ClusterBase, chain: str, hops: int, timeout: float) -> dict:
    """Until netctl shows packets counted at each of the chain's ``hops`` hops (one netctl per poll;
    the hosts report their counts every 6 resync intervals); the chain's row."""
    def counted() -> bool:
        got = wait_chain_state(c, chain, "ready")["status"]["packets"]
        return len(got) == hops and all(v > 0 for v in got.values())

    wait_for(counted, timeout, lambda: wait_chain_state(c, chain, "ready")["status"])
    return wait_chain_state(c, chain, "ready")
