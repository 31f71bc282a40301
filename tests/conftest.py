"""Shared fixtures: real etcd servers, prerequisites checks.

Tests that need a prerequisite (root, etcd, nft) skip with the reason when it cannot exist
here; in CI (CI=true) a missing prerequisite is a failure instead, since .ci/run installs all.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from integration.etcd import EtcdCluster, EtcdServer  # noqa: E402

# scripts/sanitizers: the same tests against another build of the C fast path (ASan+UBSan, TSan),
# found first on netd's package path.
if os.environ.get("NETD_FASTPATH_BUILD"):
    import netd

    netd.__path__.insert(0, os.path.join(os.environ["NETD_FASTPATH_BUILD"], "netd"))
    import netd._fastpath

    assert netd._fastpath.__file__.startswith(os.environ["NETD_FASTPATH_BUILD"]), netd._fastpath.__file__

IN_CI = os.environ.get("CI", "").lower() == "true"
_prefixes = itertools.count(1)


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {reason}")
    pytest.skip(reason)


def require_etcd() -> None:
    require(shutil.which("etcd") is not None and shutil.which("etcdctl") is not None,
            "etcd/etcdctl not installed (apt-get install etcd-server etcd-client)")


def require_root() -> None:
    require(os.geteuid() == 0, "needs root for network namespaces, netlink and nftables")
    require(shutil.which("ip") is not None, "iproute2 not installed")


@pytest.fixture(scope="session")
def etcd_server():
    require_etcd()
    server = EtcdServer("unit").start()
    yield server
    server.close()


@pytest.fixture
def etcd_cluster3():
    require_etcd()
    cluster = EtcdCluster(3).start()
    yield cluster
    cluster.close()


@pytest.fixture
def unique_prefix() -> str:
    """A fresh etcd prefix per test, so tests can share one etcd server."""
    return f"/test-{os.getpid()}-{next(_prefixes)}/network"


@pytest.fixture
def root():
    require_root()
