"""Endpoints' veth pairs: the host side becomes a port of the integration bridge, the other side
goes into the endpoint's target (a named network namespace, or a Docker container's, found through
the Docker SDK) as ``t-<tenant>`` (or its spec.interface: a service function's two legs) with the
endpoint's MAC, address and (if the tenant has one) a
default route via the gateway.

A target that goes away (a container stopped) takes its side of the pair with it, and the kernel
then deletes the host side: the switch loop sees the host side missing and the target gone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import subprocess
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netd.errors import DataplaneError
from netd.model.specs import EndpointSpec

log = logging.getLogger(__name__)


def host_port_name(endpoint: str) -> str:
    """The host side's name: "nd" + 11 hex digits of the endpoint's name (an interface name has at
    most 15 characters; endpoint names have up to 63)."""
    return "nd" + hashlib.sha1(endpoint.encode()).hexdigest()[:11]


def veth_into(ipr: IPRoute, port: str, peer: str, netns: str, mtu: int, what: str) -> None:
    """Make a veth pair: ``port`` here, ``peer`` inside the network namespace at path ``netns``.
    Errors name ``what`` the pair is for."""
    try:
        fd = os.open(netns, os.O_RDONLY)
    except OSError as exc:
        raise DataplaneError(f"{what}: opening its network namespace {netns}: {exc}") from exc
    try:
        ipr.link("add", ifname=port, kind="veth", mtu=mtu, peer={"ifname": peer, "net_ns_fd": fd})
    except NetlinkError as exc:
        raise DataplaneError(f"{what}: creating its veth pair {port}: {exc}") from exc
    finally:
        os.close(fd)


class Wiring:
    def __init__(self, docker_host: str | None = None, netns_dir: str = "/run/netns", tx_off: bool = False) -> None:
        self.docker_host = docker_host
        self.netns_dir = netns_dir
        #: the userspace datapath completes no checksums: the endpoint must not leave them to it
        self.tx_off = tx_off
        self._docker: Any = None
        self._ipr: IPRoute | None = None

    @property
    def ipr(self) -> IPRoute:
        """Made on first use, on the thread that uses it: pyroute2's IPRoute cannot be made inside a
        running asyncio loop."""
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def _docker_client(self) -> Any:
        if self._docker is None:
            import docker

            self._docker = docker.DockerClient(base_url=self.docker_host, version="auto") if self.docker_host \
                else docker.from_env()
        return self._docker

    def target_path(self, spec: EndpointSpec) -> str | None:
        """Where the target's network namespace is now (None: it does not exist, or is not running)."""
        if spec.netns is not None:
            path = os.path.join(self.netns_dir, spec.netns)
            return path if os.path.exists(path) else None
        import docker.errors

        try:
            container = self._docker_client().containers.get(spec.container)
        except docker.errors.NotFound:
            return None
        except Exception as exc:  # noqa: BLE001 - docker-py raises its own and requests' (dockerd down) alike
            raise DataplaneError(f"asking Docker about container {spec.container}: {exc}") from exc
        state = container.attrs.get("State", {})
        pid = state.get("Pid") or 0
        return f"/proc/{pid}/ns/net" if state.get("Running") and pid > 0 else None

    def is_wired(self, port: str) -> bool:
        return bool(self.ipr.link_lookup(ifname=port))

    @staticmethod
    def fingerprint(spec: EndpointSpec, path: str, mac: str, ip: ipaddress.IPv4Address,
                    subnet: ipaddress.IPv4Network, mtu: int, gateway: ipaddress.IPv4Address | None) -> str:
        """What a wiring configured, kept as the host side's alias (`ip link show` prints it): a
        wiring whose alias differs (the spec changed, or a wiring was cut short) is done again.
        The target's namespace by inode: a container restarted is a new namespace."""
        try:
            ns = os.stat(path).st_ino
        except OSError:
            ns = 0
        return (f"netd {spec.inner} {ip}/{subnet.prefixlen} {mac} mtu {mtu} "
                f"gw {gateway or '-'} netns-inode {ns}")

    def wired_as(self, port: str) -> str | None:
        """The fingerprint of the wiring the host side ``port`` holds (None: no such port)."""
        found = self.ipr.link_lookup(ifname=port)
        if not found:
            return None
        links = self.ipr.get_links(found[0])
        return (links[0].get_attr("IFLA_IFALIAS") or "") if links else None

    def wire(self, endpoint: str, spec: EndpointSpec, path: str, mac: str, ip: ipaddress.IPv4Address,
             subnet: ipaddress.IPv4Network, mtu: int, gateway: ipaddress.IPv4Address | None) -> str:
        port, inner = host_port_name(endpoint), spec.inner
        tmp = "ndtmp" + port[2:9]
        self.unwire(port)
        # the container may have stopped, its namespace deleted, since target_path
        veth_into(self.ipr, port, tmp, path, mtu, f"endpoint {endpoint} ({spec.target})")
        # Inside, with iproute2 through nsenter: pyroute2 opens a socket in another namespace by forking
        # a helper, which crashes in a process that runs gRPC's threads.
        script = [f"ip link del {inner} 2>/dev/null || true",  # a leftover of an earlier wiring
                  f"ip link set dev {tmp} name {inner} address {mac} mtu {mtu}",
                  # IPv4 tenants: no IPv6 chatter (router solicitations, MLD) for the admission flows to drop
                  f"sysctl -qw net.ipv6.conf.{inner}.disable_ipv6=1 || true",
                  f"ip addr add {ip}/{subnet.prefixlen} dev {inner}",
                  f"ip link set {inner} up", "ip link set lo up"]
        if gateway is not None:
            script.append(f"ip route replace default via {gateway} dev {inner}")
        if self.tx_off:
            script.append(f"ethtool -K {inner} tx off >/dev/null")
        try:
            r = subprocess.run(["nsenter", f"--net={path}", "sh", "-ec", "; ".join(script)], capture_output=True,
                               text=True, timeout=20)
            if r.returncode != 0:
                raise OSError(r.stderr.strip() or f"exit {r.returncode}")
            index = self.ipr.link_lookup(ifname=port)[0]
            self.ipr.link("set", index=index, state="up")
            # last: only a wiring that got this far is taken as done
            self.ipr.link("set", index=index, ifalias=self.fingerprint(spec, path, mac, ip, subnet, mtu, gateway))
        except (NetlinkError, OSError, IndexError, subprocess.SubprocessError) as exc:
            self.unwire(port)
            raise DataplaneError(f"configuring endpoint {endpoint} inside {spec.target}: {exc}") from exc
        log.info("wired endpoint %s: %s %s/%d (%s) in %s, port %s", endpoint, inner, ip, subnet.prefixlen, mac,
                 spec.target, port)
        return port

    def unwire(self, port: str) -> None:
        found = self.ipr.link_lookup(ifname=port)
        if found:
            try:
                self.ipr.link("del", index=found[0])
            except NetlinkError as exc:
                raise DataplaneError(f"deleting {port}: {exc}") from exc

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
        if self._docker is not None:
            self._docker.close()
