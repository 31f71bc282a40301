"""The fast path instance: the route table swapped under concurrent lookups (real TUN, in a namespace)."""

from __future__ import annotations

import ipaddress
import threading

import pytest
from pyroute2 import netns as pnetns

from netd.adapters.fastpath import FastPath, UdpRoute

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
