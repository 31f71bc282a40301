"""The daemon's life cycle on namespace hosts (issue 11): one instance per host, a backend that
cannot start, a TUN deleted under traffic, a route cache that cannot be saved, plain mode after
offloads."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from integration.cluster import Cluster, in_ns, metric, wait_for
from integration.test_udp import UDP, start_udp, stats, tcp_hashed, udp_digested
from netd.adapters.files import read_text

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def second_netd(c: Cluster, i: int, *flags: str) -> subprocess.Popen[str]:
    """Another netd on host i, started by mistake with the first one's flags (and these)."""
    first = [f for f in c.host(i).flags if not f.startswith("--healthz-port")]
    return c.popen(i, sys.executable, "-m", "netd.cli.agent_main", *first, "--healthz-port=0", *flags)


def tun_index(c: Cluster, i: int) -> int:
    return int(json.loads(c.exec(i, "ip", "-j", "link", "show", "flannel0").stdout)[0]["ifindex"])


def test_a_second_netd_exits_at_once_touching_nothing(make_cluster):
    c = make_cluster(2)
    start_udp(c)
    a, b = c.add_container(1), c.add_container(2)
    assert c.can_ping(a, b.ip)
    index, env = tun_index(c, 1), c.subnet_env(1)
    leases = c.etcdctl("get", "--prefix", f"{c.etcd_prefix}/subnets/", "-w", "json")
    second = second_netd(c, 1)
    out, err = second.communicate(timeout=30)
    assert second.returncode == 1
    assert f"another netd (pid {c.netd_pid(1)}) is running on this host" in err, err
    assert "this one has changed nothing" in err
    assert tun_index(c, 1) == index and c.subnet_env(1) == env and c.can_ping(a, b.ip)
    assert json.loads(c.etcdctl("get", "--prefix", f"{c.etcd_prefix}/subnets/", "-w", "json"))["kvs"] == \
        json.loads(leases)["kvs"]
    # ... and past the lock (another --state-dir), the busy TUN is refused, never deleted
    other = os.path.join(c.workdir, "other-state")
    second = second_netd(c, 1, f"--state-dir={other}", f"--subnet-file={other}/subnet.env", "--resync-interval=0.2")
    try:
        assert second.stderr is not None
        seen = ""
        deadline = time.monotonic() + 20
        while "Device or resource busy" not in seen and time.monotonic() < deadline:
            seen += second.stderr.readline()
        assert "attach to TUN flannel0 (vnet mode): Device or resource busy" in seen, seen
        for _ in range(3):  # through several of its retries
            assert tun_index(c, 1) == index and c.can_ping(a, b.ip)
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait()
    assert c.readyz(1)[0] and c.netd_pid(1) is not None


def squat(c: Cluster, i: int, kind: int, port: int) -> subprocess.Popen[str]:
    """A process of host i holding a port (socket.SOCK_DGRAM or SOCK_STREAM), once it holds it."""
    p = c.popen(i, sys.executable, "-c", f"import socket,time\ns=socket.socket(socket.AF_INET,{kind})\n"
                f"s.bind(('0.0.0.0',{port}))\ns.listen() if {kind}==socket.SOCK_STREAM else None\n"
                "print('bound',flush=True)\ntime.sleep(600)")
    assert p.stdout is not None and p.stdout.readline().strip() == "bound"
    return p


def test_a_healthz_port_in_use_is_a_clear_error_at_start(make_cluster):
    c = make_cluster(1)
    c.set_config(UDP)
    squatter = squat(c, 1, socket.SOCK_STREAM, 9180)
    try:
        c.start_netd(1)
        h = c.host(1)
        assert h.proc is not None and h.proc.wait(timeout=60) == 2
        log = c.netd_log(1)
        assert "--healthz-port: cannot serve on 0.0.0.0:9180: Address already in use" in log, log[-2000:]
        assert "Traceback" not in log
    finally:
        squatter.kill()
        squatter.wait()


def open_fds(c: Cluster, i: int) -> int:
    """The fewest fds netd held over half a second (an HTTP connection of the test's own may be
    open at any one moment)."""
    counts = []
    for _ in range(5):
        counts.append(len(os.listdir(f"/proc/{c.netd_pid(i)}/fd")))
        time.sleep(0.1)
    return min(counts)


def test_a_backend_that_fails_to_start_leaks_no_fds(make_cluster):
    c = make_cluster(1)
    c.set_config(UDP)
    squatter = squat(c, 1, socket.SOCK_DGRAM, 8285)
    try:
        c.start_netd(1, resync=0.02)
        wait_for(lambda: "bind udp 8285: Address already in use" in str(c.readyz(1)[1].get("reason")), 10,
                 lambda: c.readyz(1))
        wait_for(lambda: metric(c, 1, "netd_reconcile_errors_total") >= 10, 30, "no retries")
        fds_after_10 = open_fds(c, 1)
        wait_for(lambda: metric(c, 1, "netd_reconcile_errors_total") >= 110, 60, "fewer than 110 retries")
        fds_after_110 = open_fds(c, 1)
        print(f"open fds after 10 failed backend starts: {fds_after_10}, after 110: {fds_after_110}")
        assert fds_after_110 == fds_after_10
    finally:
        squatter.kill()
        squatter.wait()
    c.wait_ready(1, timeout=10)  # the port is free again: the backend starts


@pytest.mark.parametrize("etcd", ["up", "down"])
def test_a_tun_deleted_under_traffic_is_recreated_and_counted(make_cluster, etcd):
    """Also while etcd is away: the repair needs nothing of etcd's (the routes are the fast path's)."""
    c = make_cluster(2)
    start_udp(c)
    a, b = c.add_container(1), c.add_container(2)
    assert c.can_ping(a, b.ip)
    if etcd == "down":
        assert c.etcd is not None
        c.etcd.kill()
    pinger = subprocess.Popen(in_ns(a.name, "ping", "-n", "-i", "0.05", "-c", "100", "-W", "1", str(b.ip)),
                              stdout=subprocess.PIPE, text=True)
    wait_for(lambda: stats(c, 1)["packets"]["tx"] > 20, 10, "no traffic")
    c.exec(1, "ip", "link", "del", "flannel0")
    out, _ = pinger.communicate(timeout=60)
    seqs = sorted(int(line.split("icmp_seq=")[1].split()[0]) for line in out.splitlines() if "icmp_seq=" in line)
    worst = max(b - a - 1 for a, b in zip(seqs, seqs[1:], strict=False))
    print(f"TUN deleted under a 20/s ping: received {len(seqs)}/100, longest run lost {worst} "
          f"({worst * 50} ms)")
    assert seqs[-1] == 100 and worst <= 10, out[-1500:]  # recovered: the ping's tail got through
    assert metric(c, 1, "netd_fastpath_tun_failures_total") == 1
    assert "TUN flannel0 is gone" in c.netd_log(1)
    tcp_hashed(a, b, b.ip, 5, timeout=60)  # offloads and all, as before
    if etcd == "down":
        c.etcd.start()
    wait_for(lambda: c.readyz(1)[0], 20, lambda: c.readyz(1))
    assert c.readyz(1)[1]["tun_recoveries"] == 1


def test_a_route_cache_that_cannot_be_saved_is_removed_logged_and_counted(make_cluster):
    c = make_cluster(3)
    c.set_config(UDP)
    state = os.path.join(c.workdir, "tiny-state")
    os.makedirs(state)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", state], check=True)
    try:
        c.start_netd(1, f"--state-dir={state}")
        c.start_netd(2)
        c.wait_ready(1, 2)
        cache = os.path.join(state, "udp-routes.json")
        wait_for(lambda: "10.5." in read_text(cache), 10, "no route cache")
        subprocess.run(["dd", "if=/dev/zero", f"of={state}/fill", "bs=4k"], capture_output=True)  # until full
        c.start_netd(3)  # a new peer: a new route table to save
        wait_for(lambda: metric(c, 1, "netd_state_save_errors_total") >= 1, 15,
                 lambda: c.netd_log(1)[-2000:])
        assert not os.path.exists(cache), "a stale route cache is left for the next start to adopt"
        assert "saving the udp route cache" in c.netd_log(1) and "the old cache was removed" in c.netd_log(1)
        assert c.readyz(1)[0]  # forwarding is fine: only a restart's head start is lost
        c.stop_netd(1)
    finally:
        subprocess.run(["umount", state], check=False)


def test_plain_mode_after_a_run_with_offloads_sends_valid_checksums(make_cluster):
    c = make_cluster(2)
    start_udp(c)
    a, b = c.add_container(1), c.add_container(2)
    assert c.can_ping(a, b.ip)
    c.stop_netd(1)
    c.start_netd(1, "--udp-offloads=off")
    c.wait_ready(1)
    assert stats(c, 1)["offloads"] == {"tun-tso": False, "udp-gso": False, "udp-gro": False}
    sizes = ["64", "1000", "1400", "3000"]  # the receiver's kernel drops UDP with a bad checksum
    assert udp_digested(a, b, b.ip, 400, sizes, 5) == {"received": 400, "corrupt": 0}
    tcp_hashed(a, b, b.ip, 5, timeout=60)
