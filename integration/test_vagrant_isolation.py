"""integration/vagrant/cluster runs libvirt of its own and touches nobody else's (issue 11, item 11).

Run by the Vagrant CI stage (`integration/vagrant/cluster ci`, after `setup` installed libvirt),
not by the main suite (integration/conftest.py leaves it out). Someone else's libvirtd and virtlogd
(processes by those names, as a developer's workstation runs them) must survive `setup` and `down`
untouched, and ours must be private: own pid files, own socket, own network and mount namespace.
"""

from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = pytest.mark.root
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "integration", "vagrant", "cluster")


def test_setup_and_down_use_and_stop_only_their_own_libvirt(tmp_path):
    decoys = {name: subprocess.Popen(["bash", "-c", f"exec -a {name} sleep 900"]) for name in ("libvirtd", "virtlogd")}
    run = tmp_path / "run"
    env = {**os.environ, "NETD_VAGRANT_RUN": str(run), "NETD_VAGRANT_NETNS": "netd-vagrant-iso"}
    try:
        setup = subprocess.run([CLUSTER, "setup"], env=env, capture_output=True, text=True, timeout=600)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        ours = {name: int((run / f"{name}.pid").read_text()) for name in ("libvirtd", "virtlogd")}
        for name, pid in ours.items():
            assert pid != decoys[name].pid and os.path.basename(os.readlink(f"/proc/{pid}/exe")) == name
            assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"), f"{name}: host mounts"
            assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net"), f"{name}: host network"
        uri = f"qemu:///system?socket={run}/sock/libvirt-sock"
        version = subprocess.run(["virsh", "-c", uri, "version"], capture_output=True, text=True, timeout=120)
        assert version.returncode == 0 and "libvirt" in version.stdout, version.stderr
        down = subprocess.run([CLUSTER, "down"], env=env, capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        for name, pid in ours.items():
            assert not os.path.exists(f"/proc/{pid}"), f"our {name} (pid {pid}) still runs after down"
        for name, proc in decoys.items():
            assert proc.poll() is None, f"someone else's {name} was stopped"
        assert "netd-vagrant-iso" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                        text=True).stdout
    finally:
        subprocess.run([CLUSTER, "down"], env=env, capture_output=True, timeout=300)
        for proc in decoys.values():
            proc.kill()
            proc.wait()
