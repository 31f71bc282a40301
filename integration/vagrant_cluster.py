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

from integration.cluster import ClusterBase, sh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETNS = os.environ.get("NETD_VAGRANT_NETNS", "netd-vagrant")
UNDERLAY = "10.250.1"


class VagrantCluster(ClusterBase):
    def __init__(self, size: int | None = None, netns: str = NETNS) -> None:
        self.size = size or int(os.environ.get("NETD_VMS", "2"))
        self.netns = netns
        self.etcd_endpoint = f"http://{UNDERLAY}.11:2379"
        self.etcd_prefix = "/coreos.com/network"
        self._ssh_config = os.path.join(tempfile.mkdtemp(prefix="netd-vagrant-ssh-"), "config")
        self.refresh_ssh()

    def vagrant(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return sh(["ip", "netns", "exec", self.netns, "vagrant", *args], timeout=timeout, cwd=ROOT)

    def refresh_ssh(self) -> None:
        names = [f"node{i}" for i in range(1, self.size + 1)]
        config = self.vagrant("ssh-config", *names).stdout
        with open(self._ssh_config, "w") as fh:
            fh.write(config)

    def _ssh(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.netns, "ssh", "-F", self._ssh_config, "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=10", f"node{i}", "--"]

    # -- primitives ------------------------------------------------------------------------------
    def exec(self, i: int, *cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return sh([*self._ssh(i), "sudo", shlex.join(cmd)], check=check, timeout=timeout)

    def popen(self, i: int, *cmd: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*self._ssh(i), "sudo", shlex.join(cmd)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def copy_to(self, i: int, src: str, dst: str) -> None:
        tmp = f"/tmp/{os.path.basename(dst)}.upload"
        sh(["ip", "netns", "exec", self.netns, "scp", "-F", self._ssh_config, "-o", "LogLevel=ERROR", src,
            f"node{i}:{tmp}"])
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
        self.vagrant("reload", f"node{i}", "--no-provision")
        self.refresh_ssh()

    def halt(self, i: int) -> None:
        """`vagrant halt`: the VM powers off (the stage's last scenario: it is not brought back)."""
        self.vagrant("halt", f"node{i}")

    def close(self) -> None:
        return None  # the VMs belong to integration/vagrant/cluster (up/down)
