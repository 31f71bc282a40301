"""Tenant-network helpers for scenarios on any cluster (namespace hosts or the Vagrant VMs):
endpoints as network namespaces attached with netctl, and waiting until the hosts report them wired."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field

from integration.cluster import ClusterBase, Container, wait_for

TENANTS = """\
apiVersion: netd/v1
kind: TenantNetwork
metadata: {name: blue}
spec: {vni: 5001, subnet: 10.20.0.0/24}
---
apiVersion: netd/v1
kind: TenantNetwork
metadata: {name: red}
spec: {vni: 5002, subnet: 10.20.0.0/24}
"""


def spec_path(c: ClusterBase, name: str) -> str:
    """Where apply_specs leaves file ``name`` on host 1 (for a later `netctl delete -f`)."""
    return f"/tmp/{getattr(c, 'tag', 'netd')}-{name}"


def apply_specs(c: ClusterBase, text: str, name: str = "tenants.yaml") -> str:
    """Write ``text`` to a file on host 1 and `netctl apply -f` it; netctl's output."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(text)
    dst = spec_path(c, name)
    try:
        c.copy_to(1, fh.name, dst)
    finally:
        os.unlink(fh.name)
    return c.netctl(1, "apply", "-f", dst).stdout


@dataclass
class Box(Container):
    """An endpoint: a network namespace on host ``host`` attached to a tenant network."""

    tenant: str = ""
    endpoint: str = ""
    cluster: ClusterBase | None = field(default=None, repr=False, compare=False)

    def run(self, *cmd: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        assert self.cluster is not None
        return self.cluster.container_exec(self, *cmd, check=check, timeout=timeout)

    def ping(self, ip: object, count: int = 1, wait: float = 1) -> bool:
        return self.run("ping", "-n", "-c", str(count), "-W", str(wait), str(ip)).returncode == 0

    def remove(self) -> None:
        """Detach the endpoint and delete its namespace."""
        assert self.cluster is not None
        self.cluster.netctl(1, "detach", self.endpoint, check=False)
        self.cluster.netns_del(self.host, self.name)


def attach(c: ClusterBase, host: int, tenant: str, ip: str, endpoint: str | None = None) -> Box:
    import ipaddress

    endpoint = endpoint or f"{tenant}{host}"
    name = f"{getattr(c, 'tag', 'netd')}-{endpoint}"
    c.netns_add(host, name)
    out = c.netctl(1, "attach", "--tenant", tenant, "--host", c.node_name(host), "--netns", name, "--ip", ip,
                   "--name", endpoint).stdout
    assert f"endpoint {endpoint}: {ip}" in out, out
    return Box(name, host, ipaddress.IPv4Address(ip), tenant=tenant, endpoint=endpoint, cluster=c)


def attach_many(c: ClusterBase, wanted: list[tuple[int, str, str, str]]) -> list[Box]:
    """Endpoints (host, tenant, ip, name), each a new network namespace, stored by one apply: few
    round trips (on the VMs, each netctl is an ssh and a Python start under emulation)."""
    import ipaddress

    tag = getattr(c, "tag", "netd")
    boxes = [Box(f"{tag}-{name}", host, ipaddress.IPv4Address(ip), tenant=tenant, endpoint=name, cluster=c)
             for host, tenant, ip, name in wanted]
    for host in sorted({b.host for b in boxes}):
        c.script(host, "; ".join(f"ip netns add {b.name}" for b in boxes if b.host == host))
    docs = "".join(f"---\napiVersion: netd/v1\nkind: Endpoint\nmetadata: {{name: {b.endpoint}}}\n"
                   f"spec: {{tenant: {b.tenant}, host: {c.node_name(b.host)}, netns: {b.name}, ip: {b.ip}}}\n"
                   for b in boxes)
    apply_specs(c, docs, "endpoints.yaml")
    stored = {e["metadata"]["name"]: e for e in json.loads(c.netctl(1, "get", "endpoints", "-o", "json").stdout)}
    for b in boxes:  # (one left by an earlier run with the same spec is unchanged: fine)
        assert stored[b.endpoint]["address"]["ip"] == str(b.ip), stored.get(b.endpoint)
    return boxes


def remove_all(c: ClusterBase, boxes: list[Box], tenants: tuple[str, ...] = ()) -> None:
    """Detach the endpoints and delete the tenants (one netctl each) and the namespaces."""
    c.netctl(1, "delete", "-f", spec_path(c, "endpoints.yaml"), check=False)
    for tenant in tenants:
        c.netctl(1, "delete", "TenantNetwork", tenant, "--force", check=False)
    for host in sorted({b.host for b in boxes}):
        c.script(host, "; ".join(f"ip netns del {b.name}" for b in boxes if b.host == host))


def ping_all(c: ClusterBase, checks: list[tuple[Box, object, bool]]) -> list[str]:
    """Pings (from, to, whether it must answer), each host's in one script: what came out wrong."""
    wrong: list[str] = []
    for host in sorted({src.host for src, _, _ in checks}):
        mine = [(src, dst, want) for src, dst, want in checks if src.host == host]
        lines = [f"if ip netns exec {src.name} ping -n -q -c {2 if want else 1} -i 0.2 -W 1 {dst} >/dev/null 2>&1; "
                 f"then echo {k} yes; else echo {k} no; fi" for k, (src, dst, want) in enumerate(mine)]
        out = dict(line.split() for line in c.script(host, "\n".join(lines)).splitlines() if line.strip())
        wrong += [f"{src.endpoint} -> {dst}: {'no reply' if want else 'a reply'}"
                  for k, (src, dst, want) in enumerate(mine) if out.get(str(k)) != ("yes" if want else "no")]
    return wrong


def endpoint_states(c: ClusterBase) -> dict[str, str]:
    """Every host's report of its endpoints (/readyz): name -> "wired" or why not."""
    out: dict[str, str] = {}
    for i in range(1, c.size + 1):
        out.update(c.readyz(i)[1].get("tenant_networks", {}).get("endpoints", {}))  # type: ignore[union-attr]
    return out


def wait_wired(c: ClusterBase, *names: str, timeout: float = 20) -> None:
    wait_for(lambda: all(endpoint_states(c).get(n) == "wired" for n in names), timeout, lambda: endpoint_states(c))
