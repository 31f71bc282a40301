"""A private Open vSwitch for tests: its own ovsdb-server and ovs-vswitchd, sockets, database, logs
and pid files under one directory, optionally inside a network namespace (a namespace host's).

Stopped by the pids in its own pid files, never by name (a machine may run its own OVS).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


def _gone(pid: int) -> bool:
    """The process has exited: no /proc entry, or a zombie (the daemons detach, and a container's
    pid 1 may never reap them: waiting for the /proc entry alone took 2 s per daemon)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _wait_gone(pid: int, timeout: float = 2) -> None:
    deadline = time.monotonic() + timeout
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def ovs_installed() -> bool:
    return all(shutil.which(t) for t in ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl")) \
        and os.path.exists(SCHEMA)


class OvsServer:
    def __init__(self, workdir: str | None = None, netns: str | None = None) -> None:
        self.workdir = workdir or tempfile.mkdtemp(prefix="netd-ovs-")
        self.netns = netns
        self.rundir = os.path.join(self.workdir, "run")
        self.db_path = os.path.join(self.workdir, "conf.db")
        self.env = {**os.environ, "OVS_RUNDIR": self.rundir, "OVS_DBDIR": self.workdir, "OVS_LOGDIR": self.workdir}
        self._wrap = ["ip", "netns", "exec", netns] if netns else []

    @property
    def db(self) -> str:
        return f"unix:{self.rundir}/db.sock"

    def _pidfile(self, daemon: str) -> str:
        return os.path.join(self.rundir, f"{daemon}.pid")

    def pid(self, daemon: str) -> int | None:
        try:
            with open(self._pidfile(daemon)) as fh:
                pid = int(fh.read().strip())
        except (OSError, ValueError):
            return None
        try:
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            return None
        return pid if exe == daemon else None

    def _run(self, *cmd: str) -> None:
        r = subprocess.run([*self._wrap, *cmd], env=self.env, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")

    def start(self) -> OvsServer:
        os.makedirs(self.rundir, exist_ok=True)
        if not os.path.exists(self.db_path):
            subprocess.run(["ovsdb-tool", "create", self.db_path, SCHEMA], check=True, capture_output=True)
        self._run("ovsdb-server", self.db_path, f"--remote=punix:{self.rundir}/db.sock",
                  f"--pidfile={self._pidfile('ovsdb-server')}",
                  f"--log-file={self.workdir}/ovsdb-server.log", "-vconsole:off", "--detach")
        subprocess.run(["ovs-vsctl", f"--db={self.db}", "--no-wait", "init"], env=self.env, check=True,
                       capture_output=True, timeout=30)
        self.start_vswitchd()
        return self

    def start_vswitchd(self) -> None:
        self._run("ovs-vswitchd", self.db, f"--pidfile={self._pidfile('ovs-vswitchd')}",
                  f"--log-file={self.workdir}/ovs-vswitchd.log",
                  "-vconsole:off", "--detach")

    def kill_vswitchd(self) -> None:
        """kill -9, as a crash: its flows (and mod-port flags) are gone with it."""
        pid = self.pid("ovs-vswitchd")
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)

    def vsctl(self, *args: str) -> str:
        return subprocess.run(["ovs-vsctl", f"--db={self.db}", *args], env=self.env, check=True, capture_output=True,
                              text=True, timeout=30).stdout

    def ofctl(self, bridge: str, *args: str) -> str:
        cmd, rest = args[0], args[1:]
        return subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", cmd, f"unix:{self.rundir}/{bridge}.mgmt", *rest],
                              env=self.env, check=True, capture_output=True, text=True, timeout=30).stdout

    def stop(self) -> None:
        for daemon in ("ovs-vswitchd", "ovsdb-server"):
            pid = self.pid(daemon)
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            _wait_gone(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
