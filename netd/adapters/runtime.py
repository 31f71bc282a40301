"""The Runtime role: where a unit's process runs, and the overlay wiring it gets.

  * ``NetnsRuntime``: the command in network and mount namespaces of its own, in a session of its
    own, its output in ``--state-dir``/units/<hash>.log; a pid file (with the process's start time,
    so a recycled pid is never taken for it) lets a restarted netd find its units still running and
    keep them. The command begins only once ``start``'s ``ready`` hook (netd's wiring) has run on
    its namespace: a unit that resolves or connects as it starts finds its network there.
  * ``DockerRuntime``: a container (the docker SDK against a real dockerd), created with
    ``--network none`` and labelled with the unit and the machine; its output is Docker's log.
    Docker makes the namespace as it starts the command, so netd wires it just after: a container
    sees only ``lo`` for its first moments (as with ``--network none`` and pipework).

``Overlay`` wires a unit into the host's leased subnet (flannel's subnet.env): a bridge ``netd0``
holding the subnet's first address (the units' gateway and DNS server), a veth per unit, ``eth0``
inside with the unit's address, the MTU and a default route. Inside, with iproute2 through nsenter
(pyroute2's namespace helper forks, which crashes in a process running gRPC's threads).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netd.adapters.wiring import veth_into
from netd.errors import DataplaneError

log = logging.getLogger(__name__)
BRIDGE = "netd0"


def short(unit: str) -> str:
    return hashlib.sha1(unit.encode()).hexdigest()[:11]


@dataclass(frozen=True)
class Running:
    """A unit's process as the runtime sees it."""

    unit: str
    alive: bool
    netns: str  # a path to its network namespace ("" once gone)
    exit_code: int | None = None
    pid: int = 0


class Runtime(Protocol):
    name: str

    def target(self, unit: str) -> tuple[str, str]:
        """How an Endpoint names the unit's namespace: ("netns", name) or ("container", name)."""
        ...

    def start(self, unit: str, command: list[str], image: str | None, env: dict[str, str],
              dns: str | None, ready: Callable[[str], object] | None = None) -> Running:
        """Run the unit; ``ready(netns_path)`` wires its namespace, before the command begins where
        the runtime can hold it (netns), else just after (docker)."""
        ...

    def status(self, unit: str) -> Running | None: ...

    def stop(self, unit: str) -> None: ...

    def logs(self, unit: str, lines: int) -> str: ...

    def units(self) -> list[str]: ...


def _start_time(pid: int) -> str:
    """The process's start time (clock ticks after boot), "" if it is gone or a zombie: a unit
    adopted after a netd restart is not netd's child, and where pid 1 does not reap (some
    containers' init) it stays a zombie, dead all the same. (A leader shows Z while other threads
    of it still run: only when all its threads are Z or X is it dead.)"""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            started = fh.read().rsplit(")", 1)[1].split()[19]
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                        return started
            except OSError:
                continue  # a thread that just ended
        return ""
    except (OSError, IndexError):
        return ""


class NetnsRuntime:
    """Each unit's command in network and mount namespaces of its own (``unshare --net --mount``):
    the network namespace is the process's (``/proc/<pid>/ns/net``, as a container's), and
    ``/etc/resolv.conf`` inside names the units' DNS server (the gateway)."""

    name = "netns"

    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "units")
        os.makedirs(self.dir, exist_ok=True)
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def _paths(self, unit: str) -> tuple[str, str, str]:
        base = os.path.join(self.dir, short(unit))
        return base + ".json", base + ".log", base + ".resolv.conf"

    def start(self, unit: str, command: list[str], image: str | None, env: dict[str, str],
              dns: str | None, ready: Callable[[str], object] | None = None) -> Running:
        meta, logpath, resolv = self._paths(unit)
        _rotate(logpath)
        with open(resolv, "w") as fh:
            fh.write(f"nameserver {dns}\n" if dns else "")
        # The wrapper reads a line from its stdin, a pipe (or its end if netd dies), until the namespace
        # is wired; the command then gets /dev/null as stdin.
        gate_r, gate_w = os.pipe()
        wrapper = ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-c",
                   'read -r _; exec </dev/null; '
                   'if [ -s "$0" ]; then mount --bind "$0" /etc/resolv.conf; fi; exec "$@"', resolv, *command]
        try:
            with open(logpath, "ab") as out:
                out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} netd starts: {' '.join(command)}\n".encode())
                out.flush()
                try:
                    p = subprocess.Popen(wrapper, stdout=out, stderr=subprocess.STDOUT, stdin=gate_r,
                                         start_new_session=True, env={**os.environ, **env})
                except OSError as exc:
                    raise DataplaneError(f"unit {unit}: cannot start {command[0]}: {exc}") from exc
            os.close(gate_r)
            gate_r = -1
            self._children[unit] = p
            deadline = time.monotonic() + 10  # until it is in its own network namespace (unshare has run)
            while time.monotonic() < deadline and p.poll() is None and \
                    _netns_of(p.pid) in ("", _netns_of(os.getpid())):
                time.sleep(0.01)
            if p.poll() is None and _netns_of(p.pid) in ("", _netns_of(os.getpid())):
                # still in netd's own namespace: wiring "its" namespace would rewire the host's
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                self._children.pop(unit, None)
                raise DataplaneError(f"unit {unit}: no network namespace of its own after 10 s (unshare)")
            with open(meta, "w") as fh:
                json.dump({"unit": unit, "pid": p.pid, "start": _start_time(p.pid)}, fh)
            # a name for its network namespace, as `ip netns` lists it: what an Endpoint on a tenant network names
            name = self.target(unit)[1]
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)  # a crashed one's, still named
            subprocess.run(["ip", "netns", "attach", name, str(p.pid)], capture_output=True)
            if ready is not None and p.poll() is None:
                try:
                    ready(f"/proc/{p.pid}/ns/net")
                except Exception as exc:  # noqa: BLE001 - it runs unwired; the next sync wires it and says so
                    log.warning("unit %s runs without its network: %s", unit, exc)
        finally:
            if gate_r >= 0:
                os.close(gate_r)
            with contextlib.suppress(BrokenPipeError):  # (the wrapper is gone: it failed to start)
                os.write(gate_w, b"go\n")
            os.close(gate_w)
        return self.status(unit) or Running(unit, False, "", p.poll(), p.pid)

    def target(self, unit: str) -> tuple[str, str]:
        return "netns", "nu-" + short(unit)

    def status(self, unit: str) -> Running | None:
        meta = self._paths(unit)[0]
        child = self._children.get(unit)
        if child is not None:
            code = child.poll()
            alive = code is None
            return Running(unit, alive, f"/proc/{child.pid}/ns/net" if alive else "", code, child.pid)
        try:
            with open(meta) as fh:
                rec = json.load(fh)
        except (OSError, ValueError):
            return None
        pid = int(rec.get("pid", 0))
        alive = pid > 0 and bool(rec.get("start")) and _start_time(pid) == rec.get("start")  # adopted after a restart
        return Running(unit, alive, f"/proc/{pid}/ns/net" if alive else "", None if alive else -1, pid)

    def stop(self, unit: str) -> None:
        st = self.status(unit)
        if st is not None and st.alive and st.pid:
            began = _start_time(st.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(st.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and began and _start_time(st.pid) == began:
                child = self._children.get(unit)
                if child is not None and child.poll() is not None:
                    break
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(st.pid, signal.SIGKILL)
        child = self._children.pop(unit, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        subprocess.run(["ip", "netns", "delete", self.target(unit)[1]], capture_output=True)  # the name only
        meta, _, resolv = self._paths(unit)
        for path in (meta, resolv):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def logs(self, unit: str, lines: int) -> str:
        logpath = self._paths(unit)[1]
        try:
            with open(logpath, "rb") as fh:
                return b"".join(fh.readlines()[-lines:]).decode(errors="replace")
        except FileNotFoundError:
            return ""

    def units(self) -> list[str]:
        out = []
        for name in os.listdir(self.dir):
            if name.endswith(".json") and name != "addresses.json":
                try:
                    with open(os.path.join(self.dir, name)) as fh:
                        out.append(str(json.load(fh)["unit"]))
                except (OSError, ValueError, KeyError):
                    continue
        return sorted(out)


LOG_MAX = 4 << 20  # a unit's log beyond this keeps its last quarter at the next start


def _rotate(path: str) -> None:
    try:
        if os.path.getsize(path) <= LOG_MAX:
            return
        with open(path, "rb") as fh:
            fh.seek(-LOG_MAX // 4, os.SEEK_END)
            tail = fh.read()
        with open(path, "wb") as fh:
            fh.write(b"--- (earlier output dropped)\n" + tail)
    except OSError:
        pass


def _netns_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


class DockerRuntime:
    name = "docker"

    def __init__(self, machine: str, docker_host: str | None = None) -> None:
        self.machine = machine
        self.docker_host = docker_host
        self._client: Any = None

    def _docker(self) -> Any:
        if self._client is None:
            import docker

            self._client = docker.DockerClient(base_url=self.docker_host, version="auto") if self.docker_host \
                else docker.from_env()
        return self._client

    def _container_name(self, unit: str) -> str:
        return "netd-" + short(unit)

    def target(self, unit: str) -> tuple[str, str]:
        return "container", self._container_name(unit)

    def _get(self, unit: str) -> Any:
        import docker.errors

        try:
            return self._docker().containers.get(self._container_name(unit))
        except docker.errors.NotFound:
            return None
        except Exception as exc:  # noqa: BLE001 - docker-py raises its own and requests' (dockerd down) alike
            raise DataplaneError(f"asking Docker about unit {unit}: {exc}") from exc

    def start(self, unit: str, command: list[str], image: str | None, env: dict[str, str],
              dns: str | None, ready: Callable[[str], object] | None = None) -> Running:
        old = self._get(unit)
        try:
            if old is not None:
                old.remove(force=True)
            self._docker().containers.run(image, command or None, name=self._container_name(unit),
                                          network_mode="none", detach=True, environment=env,
                                          dns=[dns] if dns else None,
                                          labels={"netd.unit": unit, "netd.machine": self.machine})
        except Exception as exc:  # noqa: BLE001
            raise DataplaneError(f"unit {unit}: docker run {image}: {exc}") from exc
        st = self.status(unit)
        if ready is not None and st is not None and st.alive and st.netns:
            try:
                ready(st.netns)
            except Exception as exc:  # noqa: BLE001 - as in NetnsRuntime.start
                log.warning("unit %s runs without its network: %s", unit, exc)
        return st if st is not None else Running(unit, False, "", None, 0)

    def status(self, unit: str) -> Running | None:
        c = self._get(unit)
        if c is None:
            return None
        state = c.attrs.get("State", {})
        pid = int(state.get("Pid") or 0)
        alive = bool(state.get("Running")) and pid > 0
        return Running(unit, alive, f"/proc/{pid}/ns/net" if alive else "", None if alive else
                       int(state.get("ExitCode", -1)), pid)

    def stop(self, unit: str) -> None:
        c = self._get(unit)
        if c is not None:
            try:
                c.remove(force=True)
            except Exception as exc:  # noqa: BLE001
                raise DataplaneError(f"removing unit {unit}'s container: {exc}") from exc

    def logs(self, unit: str, lines: int) -> str:
        c = self._get(unit)
        return c.logs(tail=lines).decode(errors="replace") if c is not None else ""

    def units(self) -> list[str]:
        try:  # the list alone (the high-level list inspects each, racing a container being removed)
            found = self._docker().api.containers(all=True, filters={"label": f"netd.machine={self.machine}"})
        except Exception as exc:  # noqa: BLE001
            raise DataplaneError(f"listing Docker's containers: {exc}") from exc
        return sorted(str(c["Labels"]["netd.unit"]) for c in found if (c.get("Labels") or {}).get("netd.unit"))


class Overlay:
    """Units on the host's leased subnet: bridge netd0 (the gateway), a veth per unit."""

    def __init__(self) -> None:
        self._ipr: IPRoute | None = None

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def ensure_bridge(self, gateway: ipaddress.IPv4Interface, mtu: int) -> None:
        ipr = self.ipr
        try:
            if not ipr.link_lookup(ifname=BRIDGE):
                ipr.link("add", ifname=BRIDGE, kind="bridge")
            idx = ipr.link_lookup(ifname=BRIDGE)[0]
            have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=2)}
            for addr, plen in have - {(str(gateway.ip), gateway.network.prefixlen)}:
                ipr.addr("del", index=idx, address=addr, prefixlen=plen)  # a subnet of before (a new lease)
            if (str(gateway.ip), gateway.network.prefixlen) not in have:
                ipr.addr("add", index=idx, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
            ipr.link("set", index=idx, mtu=mtu, state="up")
        except (NetlinkError, OSError, IndexError) as exc:
            raise DataplaneError(f"bridge {BRIDGE} with the units' gateway {gateway}: {exc}") from exc

    def has_bridge(self) -> bool:
        """netd0 exists (made when the first unit is wired: a host without units has none)."""
        return bool(self.ipr.link_lookup(ifname=BRIDGE))

    @staticmethod
    def port(unit: str) -> str:
        return "nv" + short(unit)

    def wired(self, unit: str) -> str | None:
        """The address the unit's wiring gave it (its alias), or None."""
        found = self.ipr.link_lookup(ifname=self.port(unit))
        if not found:
            return None
        links = self.ipr.get_links(found[0])
        alias = (links[0].get_attr("IFLA_IFALIAS") or "") if links else ""
        return alias.split()[-1] if alias.startswith("netd unit ") else None

    def wire(self, unit: str, netns: str, address: ipaddress.IPv4Interface, gateway: ipaddress.IPv4Address,
             mtu: int) -> None:
        port, tmp = self.port(unit), "nt" + short(unit)
        self.unwire(unit)
        veth_into(self.ipr, port, tmp, netns, mtu, f"unit {unit}")
        script = ["ip link del eth0 2>/dev/null || true", f"ip link set dev {tmp} name eth0 mtu {mtu}",
                  f"ip addr add {address} dev eth0", "ip link set eth0 up", "ip link set lo up",
                  f"ip route replace default via {gateway} dev eth0"]
        try:
            r = subprocess.run(["nsenter", f"--net={netns}", "sh", "-ec", "; ".join(script)], capture_output=True,
                               text=True, timeout=20)
            if r.returncode != 0:
                raise DataplaneError(f"unit {unit}: configuring eth0: {r.stderr.strip() or r.returncode}")
            idx = self.ipr.link_lookup(ifname=port)[0]
            bridge = self.ipr.link_lookup(ifname=BRIDGE)[0]
            self.ipr.link("set", index=idx, master=bridge, state="up")
            self.ipr.link("set", index=idx, ifalias=f"netd unit {address}")
        except (NetlinkError, OSError, IndexError, subprocess.SubprocessError) as exc:
            self.unwire(unit)
            raise DataplaneError(f"unit {unit}: wiring it to {BRIDGE}: {exc}") from exc
        except DataplaneError:
            self.unwire(unit)
            raise

    def unwire(self, unit: str) -> None:
        found = self.ipr.link_lookup(ifname=self.port(unit))
        if found:
            with contextlib.suppress(NetlinkError):
                self.ipr.link("del", index=found[0])

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
