"""The C fast path (cext/fastpath.c) seen from Python: open, start, routes, counters, stop.

C owns the TUN, the UDP socket and the packets; this wrapper only passes policy across the
fixed interface. cffi releases the GIL for every call, and the forwarding threads never take it.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from netd._fastpath import ffi, lib
from netd.adapters.files import write_atomic
from netd.errors import DataplaneError

FEATURES = {"tun-tso": lib.FP_TUN_TSO, "udp-gso": lib.FP_UDP_GSO, "udp-gro": lib.FP_UDP_GRO}
ALL_FEATURES = lib.FP_TUN_TSO | lib.FP_UDP_GSO | lib.FP_UDP_GRO
#: forwarding thread layouts (see fp_start): 1 serves both directions, 2 gives each its own
THREAD_LAYOUTS = {1: "one thread for both directions", 2: "a thread per direction"}

#: fp_stats fields (tx_/rx_ counters, <direction>_drop_<reason>, tun_failures)
STAT_FIELDS = [name for name, _ in ffi.typeof("fp_stats").fields]


Subnet = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class UdpRoute:
    """subnet (IPv4, or a dual-stack lease's IPv6 subnet) -> the PublicIP:port leasing it."""

    subnet: Subnet
    peer_ip: ipaddress.IPv4Address
    peer_port: int

    def sort_key(self) -> tuple[int, int, int, int, int]:
        return (self.subnet.version, int(self.subnet.network_address), self.subnet.prefixlen, int(self.peer_ip),
                self.peer_port)


class FastPath:
    """One TUN (persistent, re-attached on restart) and one UDP socket, forwarded in C."""

    def __init__(self, tun: str, bind_ip: ipaddress.IPv4Address, port: int, offloads: bool = True,
                 threads: int = 2) -> None:
        if threads not in THREAD_LAYOUTS:
            raise DataplaneError(f"udp forwarding threads must be one of {sorted(THREAD_LAYOUTS)}, not {threads}")
        err = ffi.new("char[]", 256)
        self._fp = lib.fp_open(tun.encode(), int(bind_ip), port, ALL_FEATURES if offloads else 0, err, 256)
        if self._fp == ffi.NULL:
            raise DataplaneError(ffi.string(err).decode(errors="replace"), errno=ffi.errno)
        self.tun = tun
        self.port = port
        self.offloads_requested = offloads
        self.threads = threads
        self._routes: tuple[UdpRoute, ...] = ()
        self._lock = threading.Lock()

    # Every call but lookup_loop holds _lock, and a closed instance answers without touching C: the
    # HTTP thread reads stats while the dataplane thread may close this instance (a TUN recovery).
    def _live(self) -> Any:
        if self._fp == ffi.NULL:
            raise DataplaneError(f"the fast path on {self.tun} is closed")
        return self._fp

    @property
    def features(self) -> set[str]:
        with self._lock:
            on = lib.fp_features(self._fp) if self._fp != ffi.NULL else 0
        return {name for name, bit in FEATURES.items() if on & bit}

    def start(self) -> None:
        with self._lock:
            rc = lib.fp_start(self._live(), self.threads)
        if rc != 0:
            raise DataplaneError(f"starting the fast path threads failed: errno {-rc} ({os.strerror(-rc)})",
                                 errno=-rc)

    def set_routes(self, routes: Iterable[UdpRoute]) -> None:
        """Replace the route table atomically (traffic keeps flowing through the swap)."""
        routes = tuple(sorted(set(routes), key=UdpRoute.sort_key))
        with self._lock:
            rc = lib.fp_set_routes(self._live(), route_array(routes), len(routes))
        if rc != 0:
            raise DataplaneError(f"fp_set_routes failed: errno {-rc}")
        self._routes = routes

    @property
    def routes(self) -> tuple[UdpRoute, ...]:
        """The routes last set (kept after close, for a successor)."""
        return self._routes

    def table_routes(self) -> tuple[UdpRoute, ...]:
        """The routes the C threads route by, read back from their table (not from Python's copy)."""
        room = len(self._routes) + 8
        while True:
            out = ffi.new("fp_route[]", room)
            with self._lock:
                n = lib.fp_get_routes(self._live(), out, room)
            if n <= room:
                return tuple(sorted((route_from_c(out[i]) for i in range(n)), key=UdpRoute.sort_key))
            room = n + 8

    def stop(self) -> None:
        """Stop the threads (within fastpath.h's bound); the counters stay readable until close."""
        with self._lock:
            if self._fp != ffi.NULL:
                lib.fp_stop(self._fp)

    def stats(self) -> dict[str, int]:
        """The counters (all 0 once closed)."""
        out = ffi.new("fp_stats *")
        with self._lock:
            if self._fp != ffi.NULL:
                lib.fp_get_stats(self._fp, out)
        return {name: int(getattr(out, name)) for name in STAT_FIELDS}

    def tun_error(self) -> int:
        """0 while the TUN works; the errno that found it gone (deleted), for good (EBADFD once closed)."""
        with self._lock:
            return int(lib.fp_tun_error(self._fp)) if self._fp != ffi.NULL else errno.EBADFD

    def notify_tun_loss(self, event_fd: int) -> None:
        """Write 1 to this eventfd when the threads find the TUN gone."""
        with self._lock:
            lib.fp_set_event_fd(self._live(), event_fd)

    def lookup_loop(self, addr: ipaddress.IPv4Address, iterations: int) -> int:  # IPv4: the threads' path
        """Misses among ``iterations`` lookups through the threads' lock-free path (tests; not under
        _lock, so that several run at once: never call it with a close in flight)."""
        return int(lib.fp_lookup_loop(self._live(), int(addr), iterations))

    def close(self) -> None:
        with self._lock:
            if self._fp != ffi.NULL:
                lib.fp_close(self._fp)
                self._fp = ffi.NULL


def route_array(routes: tuple[UdpRoute, ...]) -> object:
    """routes as the C interface's fp_route[] (host byte order)."""
    arr = ffi.new("fp_route[]", max(1, len(routes)))
    for i, r in enumerate(routes):
        if r.subnet.version == 6:
            arr[i].family, arr[i].net6 = 6, list(r.subnet.network_address.packed)
        else:
            arr[i].family, arr[i].net = 4, int(r.subnet.network_address)
        arr[i].plen = r.subnet.prefixlen
        arr[i].peer_ip, arr[i].peer_port = int(r.peer_ip), r.peer_port
    return arr


def route_from_c(r: Any) -> UdpRoute:
    subnet: Subnet = ipaddress.IPv6Network((bytes(r.net6), r.plen)) if r.family == 6 \
        else ipaddress.IPv4Network((r.net, r.plen))
    return UdpRoute(subnet, ipaddress.IPv4Address(r.peer_ip), r.peer_port)


def lookup(routes: Iterable[UdpRoute], addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> UdpRoute | None:
    """The C table's longest-prefix match, for tests: build a table, look up, free."""
    routes = tuple(routes)
    table = lib.fp_table_build(route_array(routes), len(routes))
    try:
        out = ffi.new("fp_route *")
        found = lib.fp_table_lookup6(table, addr.packed, out) if addr.version == 6 \
            else lib.fp_table_lookup(table, int(addr), out)
        return route_from_c(out) if found else None
    finally:
        lib.fp_table_free(table)


# -- route cache: lets a restarted netd forward before it has imported much or seen etcd -------
def save_route_cache(path: str, tun: str, port: int, offloads: bool, threads: int,
                     routes: Iterable[UdpRoute]) -> None:
    obj = {"tun": tun, "port": port, "offloads": offloads, "threads": threads,
           "routes": [[str(r.subnet), str(r.peer_ip), r.peer_port] for r in routes]}
    write_atomic(path, json.dumps(obj), mode=0o600)


def load_route_cache(path: str) -> dict[str, Any] | None:
    """{"tun", "port", "offloads", "threads", "routes": [UdpRoute]} or None if absent or unreadable."""
    try:
        with open(path) as fh:
            obj = json.load(fh)
        obj["routes"] = [UdpRoute(ipaddress.ip_network(s), ipaddress.IPv4Address(ip), int(port))
                         for s, ip, port in obj["routes"]]
        str(obj["tun"])
        int(obj["port"])
        bool(obj["offloads"])
        obj.setdefault("threads", 2)  # written by netd 0.x before the layout was a setting: it ran 2
        int(obj["threads"])
        return obj
    except (OSError, ValueError, TypeError, KeyError):
        return None


def prestart_from_cache(path: str) -> FastPath | None:
    """Re-attach to the persistent TUN and forward with the cached routes at once.

    Called by `netd` before anything slow (imports, etcd); the udp backend adopts the result
    when the config still matches, else closes it.
    """
    cache = load_route_cache(path)
    if cache is None:
        return None
    try:
        fast = FastPath(cache["tun"], ipaddress.IPv4Address("0.0.0.0"), cache["port"], cache["offloads"],
                        cache["threads"])
    except DataplaneError:
        return None
    fast.set_routes(cache["routes"])
    fast.start()
    return fast
