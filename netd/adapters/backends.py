"""Choosing the Backend for a network config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from netd.adapters.files import route_cache_path
from netd.adapters.netlink import Backend, HostGwBackend, Underlay, VxlanBackend
from netd.errors import ConfigError
from netd.model import NetworkConfig


@dataclass(frozen=True)
class BackendOptions:
    udp_offloads: bool = True
    udp_threads: int = 2
    state_dir: str | None = None
    #: a FastPath re-attached from the route cache before etcd was reached (see netd.cli)
    prestarted: Any = None


def make_backend(cfg: NetworkConfig, underlay: Underlay, options: BackendOptions | None = None) -> Backend:
    """The backend for ``cfg``. It owns one netlink socket; when it fails to start (a port taken, a
    device it cannot create) that socket is closed here, so a sync loop retrying every few seconds
    leaks nothing."""
    options = options or BackendOptions()
    if cfg.backend.type != "udp" and options.prestarted is not None:
        options.prestarted.close()  # the cache is from a udp run; the config says otherwise now
    if cfg.backend.type not in ("vxlan", "host-gw", "udp"):
        raise ConfigError(f"backend {cfg.backend.type!r} is not known", "Backend.Type")
    ipr = IPRoute()
    try:
        if cfg.backend.type == "vxlan":
            return VxlanBackend(cfg, underlay, ipr)
        if cfg.backend.type == "host-gw":
            return HostGwBackend(cfg, underlay, ipr)
        from netd.adapters.udp import UdpBackend  # needs the compiled extension

        state = route_cache_path(options.state_dir) if options.state_dir else None
        return UdpBackend(cfg, underlay, ipr, offloads=options.udp_offloads, threads=options.udp_threads,
                          state_file=state, prestarted=options.prestarted)
    except BaseException:
        ipr.close()
        raise
