"""VagrantCluster: the Cluster interface on real VMs brought up by the Vagrantfile.

Commands run over ssh (config from `vagrant ssh-config`), inside the network namespace where
integration/vagrant/cluster started libvirtd, since the VMs' networks live there. Select it for
scenario tests with NETD_CLUSTER=vagrant (namespace hosts stay the default).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
import time

from integration.cluster import ClusterBase, sh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETNS = os.environ.get("NETD_VAGRANT_NETNS", "netd-vagrant")
UNDERLAY = "10.250.1"
#: when set, every command sent to the VMs is appended here as "test<TAB>seconds<TAB>command"
#: (integration/vagrant/cluster test sets it and prints where the scenarios spent their time)
TIMINGS = os.environ.get("NETD_VM_TIMINGS")


def timed(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """sh(), its wall time logged to TIMINGS."""
    t0 = time.monotonic()
    try:
        return sh(cmd, **kw)  # type: ignore[arg-type]
    finally:
        if TIMINGS:
            test = os.environ.get("PYTEST_CURRENT_TEST", "-").split(" ")[0].split("::")[-1]
            shown = shlex.join(cmd[cmd.index("--") + 1:] if "--" in cmd else cmd)[:160].replace("\t", " ")
            with open(TIMINGS, "a") as fh:
                fh.write(f"{test}\t{time.monotonic() - t0:.2f}\t{shown}\n")


class VagrantCluster(ClusterBase):
    def __init__(self, size: int | None = None, netns: str = NETNS) -> None:
        self.size = size or int(os.environ.get("NETD_VMS", "2"))
        self.netns = netns
        self.etcd_endpoint = f"http://{UNDERLAY}.11:2379"
        self.etcd_prefix = "/coreos.com/network"
        self._ssh_config = os.path.join(tempfile.mkdtemp(prefix="netd-vagrant-ssh-"), "config")
        self.refresh_ssh()

    def vagrant(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return timed(["ip", "netns", "exec", self.netns, "vagrant", *args], timeout=timeout, cwd=ROOT)

    def refresh_ssh(self) -> None:
        names = [f"node{i}" for i in range(1, self.size + 1)]
        config = self.vagrant("ssh-config", *names).stdout
        with open(self._ssh_config, "w") as fh:
            fh.write(config)

    def _ssh_options(self) -> list[str]:
        """One ssh connection per VM, kept open (ControlMaster): under emulation each new connection's
        key exchange costs the guest about a second, and the scenarios send it hundreds of commands."""
        control = os.path.join(os.path.dirname(self._ssh_config), "%C")  # (a hash of host, port and user)
        return ["-F", self._ssh_config, "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "ControlMaster=auto",
                "-o", f"ControlPath={control}", "-o", "ControlPersist=120",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]  # a VM gone: fail, not hang

    def _ssh(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.netns, "ssh", *self._ssh_options(), f"node{i}", "--"]

    def _close_connections(self, *nodes: int) -> None:
        for i in nodes or range(1, self.size + 1):
            subprocess.run(["ip", "netns", "exec", self.netns, "ssh", *self._ssh_options(), "-O", "exit", f"node{i}"],
                           capture_output=True, timeout=30)

    # -- primitives ------------------------------------------------------------------------------
    def exec(self, i: int, *cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return timed([*self._ssh(i), "sudo", shlex.join(cmd)], check=check, timeout=timeout)

    def popen(self, i: int, *cmd: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*self._ssh(i), "sudo", shlex.join(cmd)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def copy_to(self, i: int, src: str, dst: str) -> None:
        tmp = f"/tmp/{os.path.basename(dst)}.upload"
        timed(["ip", "netns", "exec", self.netns, "scp", *self._ssh_options(), src, f"node{i}:{tmp}"])
        self.exec(i, "mv", tmp, dst)

    def host_ip(self, i: int) -> str:
        return f"{UNDERLAY}.{10 + i}"

    def subnet_file(self, i: int) -> str:
        return "/run/flannel/subnet.env"

    def netctl(self, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        extra = ["--url=http://127.0.0.1:9180/metrics"] if args and args[0] == "stats" else []
        return self.exec(i, "netctl", f"--etcd-endpoints={self.etcd_endpoint}", *args, *extra, check=check)

    def set_config(self, config: dict[str, object] | str) -> None:
        raw = config if isinstance(config, str) else json.dumps(config)
        self.exec(1, "env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={self.etcd_endpoint}", "put",
                  f"{self.etcd_prefix}/config", raw)

    def restart_netd(self, i: int) -> None:
        self.exec(i, "systemctl", "restart", "netd")

    def netd_log(self, i: int) -> str:
        return self.exec(i, "journalctl", "-u", "netd", "--no-pager", "-n", "100", check=False).stdout

    def reboot(self, i: int) -> None:
        """`vagrant reload`: a real reboot of the VM; nobody touches it afterwards."""
        self._close_connections(i)  # not left to hang on a VM going down
        self.vagrant("reload", f"node{i}", "--no-provision")
        self.refresh_ssh()

    def halt(self, i: int) -> None:
        """`vagrant halt`: the VM powers off (the stage's last scenario: it is not brought back)."""
        self._close_connections(i)
        self.vagrant("halt", f"node{i}")

    def close(self) -> None:
        self._close_connections()  # the VMs themselves belong to integration/vagrant/cluster (up/down)
