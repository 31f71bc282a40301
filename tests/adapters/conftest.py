"""A throw-away network namespace with an underlay link (eth0 at 10.250.0.1/24), for adapter tests."""

from __future__ import annotations

import subprocess
import uuid

import pytest


@pytest.fixture
def ns(root):
    name = f"ndt-{uuid.uuid4().hex[:8]}"
    cmds = [
        f"ip netns add {name}",
        f"ip -n {name} link add eth0 type veth peer name eth1",
        f"ip -n {name} addr add 10.250.0.1/24 dev eth0",
        f"ip -n {name} link set eth0 up",
        f"ip -n {name} link set eth1 up",
        f"ip -n {name} route add default via 10.250.0.254",
    ]
    for cmd in cmds:
        subprocess.run(cmd.split(), check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)
