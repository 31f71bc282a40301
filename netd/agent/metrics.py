"""Prometheus metrics of one agent (own CollectorRegistry, so tests can run several agents)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

disable_created_metrics()


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ready = Gauge("netd_ready", "1 when the lease is held, routes are in place and subnet.env is written",
                           registry=r)
        self.config_valid = Gauge("netd_config_valid", "1 when the network config in etcd is valid", registry=r)
        self.lease_held = Gauge("netd_lease_held", "1 while this host holds its subnet lease", registry=r)
        self.lease_info = Gauge("netd_lease_info", "The subnet this host holds (value is always 1)",
                                ["subnet", "public_ip", "backend"], registry=r)
        self.lease_ttl = Gauge("netd_lease_ttl_seconds", "TTL etcd reported at the last keepalive", registry=r)
        self.peers = Gauge("netd_peers", "Peer leases this host routes to", registry=r)
        self.acquisitions = Counter("netd_lease_acquisitions", "Subnet leases acquired, by how", ["kind"],
                                    registry=r)
        self.conflicts = Counter("netd_lease_conflicts", "Lost create/update races on subnet keys", registry=r)
        self.reconcile_runs = Counter("netd_reconcile_runs", "Reconcile iterations", registry=r)
        self.reconcile_repairs = Counter("netd_reconcile_repairs",
                                         "Routes, neighbours and FDB entries added or removed", registry=r)
        self.reconcile_errors = Counter("netd_reconcile_errors", "Reconcile iterations that failed", registry=r)
        self.leases_rejected = Counter("netd_leases_rejected",
                                       "Leases in etcd not routed to (outside the network, overlapping ours or "
                                       "another host's, bad BackendData), counted when first seen, by reason",
                                       ["reason"], registry=r)
        self.etcd_errors = Counter("netd_etcd_errors", "Failed etcd calls, by operation and kind (unavailable: "
                                   "etcd could not answer; refused: it said no, e.g. permission denied)",
                                   ["op", "kind"], registry=r)
        self.task_failures = Counter("netd_task_failures", "Background tasks (sync, watch, keepalive) that raised "
                                     "and were restarted", ["task"], registry=r)
        self._dataplane_stats: Callable[[], dict[str, int]] | None = None
        self._dataplane_features: Callable[[], set[str]] | None = None
        r.register(_FastPathCollector(self))
        self.watch_restarts = Counter("netd_watch_restarts", "Watch streams re-created, by reason", ["reason"],
                                      registry=r)

    def attach_fast_path(self, stats: Callable[[], dict[str, int]], features: Callable[[], set[str]]) -> None:
        """Export the C fast path's counters (read at scrape time)."""
        self._dataplane_stats = stats
        self._dataplane_features = features


#: fp_stats counters other than drops, by (metric, label value).
_FAST_PATH_COUNTERS = {
    "tx_packets": ("packets", "tx"), "rx_packets": ("packets", "rx"),
    "tx_bytes": ("bytes", "tx"), "rx_bytes": ("bytes", "rx"),
    "tx_syscalls": ("syscalls", "tx"), "rx_syscalls": ("syscalls", "rx"),
    "tun_reads": ("tun_frames", "read"), "tun_writes": ("tun_frames", "written"),
}


class _FastPathCollector:
    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        stats_fn, features_fn = self.metrics._dataplane_stats, self.metrics._dataplane_features
        if stats_fn is None or features_fn is None:
            return
        stats = stats_fn()
        families = {
            "packets": CounterMetricFamily("netd_fastpath_packets", "Inner packets forwarded", labels=["direction"]),
            "bytes": CounterMetricFamily("netd_fastpath_bytes", "Inner bytes forwarded", labels=["direction"]),
            "syscalls": CounterMetricFamily("netd_fastpath_syscalls", "Socket send/receive calls",
                                            labels=["direction"]),
            "tun_frames": CounterMetricFamily("netd_fastpath_tun_frames", "TUN reads and writes", labels=["op"]),
        }
        for field, (family, label) in _FAST_PATH_COUNTERS.items():
            families[family].add_metric([label], stats.get(field, 0))
        yield from families.values()
        yield CounterMetricFamily("netd_fastpath_tun_failures", "Times the fast path found its TUN gone "
                                  "(deleted); each is followed by a re-creation (tun_recoveries on /readyz)",
                                  value=stats.get("tun_failures", 0))
        yield CounterMetricFamily("netd_state_save_errors", "Failed saves of the udp route cache (--state-dir); "
                                  "each removes the old cache", value=stats.get("state_save_errors", 0))
        drops = CounterMetricFamily("netd_fastpath_drops", "Packets dropped, by direction and reason",
                                    labels=["direction", "reason"])
        for field, value in stats.items():
            if "_drop_" in field:
                direction, reason = field.split("_drop_", 1)
                drops.add_metric([direction, reason], value)
        yield drops
        on = GaugeMetricFamily("netd_fastpath_offload", "1 if the offload is in use", labels=["feature"])
        active = features_fn()
        for feature in ("tun-tso", "udp-gso", "udp-gro"):
            on.add_metric([feature], 1 if feature in active else 0)
        yield on
