"""Prometheus metrics of one agent (own CollectorRegistry, so tests can run several agents)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

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
        self.etcd_errors = Counter("netd_etcd_errors", "Failed etcd calls, by operation", ["op"], registry=r)
        self.watch_restarts = Counter("netd_watch_restarts", "Watch streams re-created, by reason", ["reason"],
                                      registry=r)
