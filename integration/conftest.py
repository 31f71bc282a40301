"""Fixtures for scenario tests on namespace hosts (root, etcd, iproute2, nft)."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from integration.cluster import Cluster  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() == "true"
# Run by integration/vagrant/cluster ci (which installs libvirt first), not by the main suite.
collect_ignore = [] if os.environ.get("NETD_VAGRANT_STAGE") else ["test_vagrant_isolation.py"]


def _require(ok: bool, reason: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(f"prerequisite missing in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture
def make_cluster():
    _require(os.geteuid() == 0, "namespace hosts need root")
    for tool in ("ip", "etcd", "etcdctl", "ping", "nft"):
        _require(shutil.which(tool) is not None, f"{tool} not installed")
    made: list[Cluster] = []

    def make(n: int = 3, ovs: bool = False) -> Cluster:
        if ovs:
            from integration.ovs import ovs_installed

            _require(ovs_installed(), "Open vSwitch not installed (apt-get install openvswitch-switch)")
        c = Cluster(n, ovs=ovs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def dockerd():
    """A private dockerd (integration/docker.py), stopped by its pid file after the test."""
    from integration.docker import DockerDaemon, docker_installed

    _require(docker_installed(), "dockerd or busybox-static not installed (apt-get install docker.io busybox-static)")
    d = DockerDaemon().start()
    yield d
    d.stop()
