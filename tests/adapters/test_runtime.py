"""NetnsRuntime against the real kernel: a unit's command begins only once netd has wired its namespace."""

from __future__ import annotations

import subprocess
import time

import pytest

from netd.adapters.runtime import NetnsRuntime
from netd.errors import DataplaneError

#: what the unit does first thing: list the links it has (as a service resolving or connecting at once would use them)
PROBE = ["sh", "-c", "ip -o link show; exec sleep 60"]


def first_output(rt: NetnsRuntime, unit: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = rt.logs(unit, 50)
        if " lo:" in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"unit {unit} printed nothing: {rt.logs(unit, 50)!r}")


def add_link(netns: str, name: str) -> None:
    subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"],
                   check=True)


@pytest.mark.parametrize("slow", [0.0, 0.5])
def test_a_units_command_begins_only_once_its_namespace_is_wired(root, tmp_path, slow):
    rt = NetnsRuntime(str(tmp_path))
    wired: list[str] = []

    def ready(netns: str) -> None:
        time.sleep(slow)  # a slow wiring (a loaded host): the command still waits for it
        add_link(netns, "wired0")
        wired.append(netns)

    st = rt.start("probe.service", PROBE, None, {}, None, ready=ready)
    try:
        assert st.alive and wired == [st.netns]
        assert "wired0" in first_output(rt, "probe.service")
    finally:
        rt.stop("probe.service")


def test_a_wiring_that_fails_leaves_the_command_running_unwired(root, tmp_path, caplog):
    rt = NetnsRuntime(str(tmp_path))

    def ready(netns: str) -> None:
        add_link(netns, "half0")
        raise DataplaneError("no bridge")

    st = rt.start("probe.service", PROBE, None, {}, None, ready=ready)
    try:
        assert st.alive
        assert "half0" in first_output(rt, "probe.service")  # it began after the attempt, not before
        assert "unit probe.service runs without its network: no bridge" in caplog.text
    finally:
        rt.stop("probe.service")
    assert rt.status("probe.service") is None


def test_without_a_hook_the_command_begins_at_once(root, tmp_path):
    rt = NetnsRuntime(str(tmp_path))
    st = rt.start("probe.service", PROBE, None, {}, None)
    try:
        assert st.alive
        log = first_output(rt, "probe.service")
        assert "wired0" not in log and log.count(": <") == 1, log  # only lo: a namespace of its own
    finally:
        rt.stop("probe.service")


def test_any_error_of_the_wiring_is_logged_and_the_command_still_begins(root, tmp_path, caplog):
    rt = NetnsRuntime(str(tmp_path))

    def ready(netns: str) -> None:
        raise RuntimeError("netlink went away")

    st = rt.start("probe.service", PROBE, None, {}, None, ready=ready)
    try:
        assert st.alive
        first_output(rt, "probe.service")
        assert "unit probe.service runs without its network: netlink went away" in caplog.text
    finally:
        rt.stop("probe.service")


def test_a_command_that_cannot_start_leaks_no_descriptor(root, tmp_path):
    import os

    rt = NetnsRuntime(str(tmp_path))
    before = len(os.listdir("/proc/self/fd"))
    st = rt.start("gone.service", ["/nonexistent/cmd"], None, {}, None, ready=lambda netns: None)
    deadline = time.monotonic() + 10
    while rt.status("gone.service") is not None and rt.status("gone.service").alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not rt.status("gone.service").alive, st
    rt.stop("gone.service")
    assert len(os.listdir("/proc/self/fd")) == before
