"""The fast path instance: the route table swapped under concurrent lookups (real TUN, in a namespace)."""

from __future__ import annotations

import ipaddress
import json
import threading
from pathlib import Path

import pytest
from pyroute2 import netns as pnetns

from netd.adapters.fastpath import FastPath, UdpRoute, load_route_cache, save_route_cache
from netd.errors import DataplaneError

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address


@pytest.fixture
def fast(ns):
    pnetns.pushns(ns)
    try:
        fp = FastPath("fptest0", A("0.0.0.0"), 18285)
    finally:
        pnetns.popns()
    yield fp
    fp.close()


def churn(fp: FastPath, keep_target: bool, rounds: int, stop: threading.Event) -> None:
    target = UdpRoute(N("10.5.7.0/24"), A("192.0.2.7"), 8285)
    for i in range(rounds):
        others = [UdpRoute(N((0x0A050000 + ((j + i) % 200 + 20 << 8), 24)), A("192.0.2.9"), 8285)
                  for j in range(i % 50)]
        wide = [UdpRoute(N("10.5.0.0/16"), A("192.0.2.1"), 8285)] if i % 3 == 0 else []
        fp.set_routes(others + wide + ([target] if keep_target or i % 2 else []))
    stop.set()


def lookups_during(fp: FastPath, keep_target: bool) -> int:
    fp.set_routes([UdpRoute(N("10.5.7.0/24"), A("192.0.2.7"), 8285)])  # present before the first lookup
    assert fp.lookup_loop(A("10.5.7.9"), 1000) == 0
    stop = threading.Event()
    writer = threading.Thread(target=churn, args=(fp, keep_target, 3000, stop))
    misses = 0
    writer.start()
    while not stop.is_set():  # cffi releases the GIL: the C loop and the writer run in parallel
        misses += fp.lookup_loop(A("10.5.7.9"), 20_000)
    writer.join()
    return misses


def test_lookups_never_miss_while_the_table_is_swapped(fast):
    assert lookups_during(fast, keep_target=True) == 0


def test_the_check_can_fail_negative_control(fast):
    assert lookups_during(fast, keep_target=False) > 0


def test_features_and_counters_are_exposed(fast):
    assert fast.features <= {"tun-tso", "udp-gso", "udp-gro"}
    assert set(fast.stats()) >= {"tx_packets", "rx_drop_spoofed", "rx_drop_tun_full"}


def thread_names() -> list[str]:
    return sorted(p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm"))


@pytest.mark.parametrize("threads,names", [(1, ["netd-fp"]), (2, ["netd-fp-rx", "netd-fp-tx"])])
def test_thread_layouts(ns, threads, names):
    pnetns.pushns(ns)
    try:
        fp = FastPath("fptest1", A("0.0.0.0"), 18286, threads=threads)
    finally:
        pnetns.popns()
    try:
        before = thread_names()
        fp.start()
        fp.start()  # starting again the same way is a no-op
        started = thread_names()
        for name in names:
            assert started.count(name) == before.count(name) + 1
        assert len(started) == len(before) + len(names)
    finally:
        fp.close()
    assert thread_names() == before


def test_an_unknown_thread_layout_is_refused_by_name():
    with pytest.raises(DataplaneError, match="forwarding threads must be one of \\[1, 2\\], not 3"):
        FastPath("fptest2", A("0.0.0.0"), 18287, threads=3)


def test_the_route_cache_keeps_the_layout_and_ipv6_routes(tmp_path):
    path = str(tmp_path / "routes.json")
    routes = [UdpRoute(N("10.5.7.0/24"), A("192.0.2.7"), 8285),
              UdpRoute(ipaddress.IPv6Network("fd00:5:0:7::/64"), A("192.0.2.7"), 8285)]
    save_route_cache(path, "flannel0", 8285, True, 2, routes)
    assert load_route_cache(path) == {"tun": "flannel0", "port": 8285, "offloads": True, "threads": 2,
                                      "routes": routes}
    # a cache written before the layout was a setting: that netd ran a thread per direction
    with open(path, "w") as fh:
        json.dump({"tun": "flannel0", "port": 8285, "offloads": False, "routes": []}, fh)
    assert load_route_cache(path)["threads"] == 2
