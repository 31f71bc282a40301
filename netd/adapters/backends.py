"""Choosing the Backend for a network config."""

from __future__ import annotations

from dataclasses import dataclass

from netd.adapters.netlink import Backend, HostGwBackend, Underlay, VxlanBackend
from netd.errors import ConfigError
from netd.model import NetworkConfig


@dataclass(frozen=True)
class BackendOptions:
    udp_offloads: bool = True
    state_dir: str | None = None


def make_backend(cfg: NetworkConfig, underlay: Underlay, options: BackendOptions | None = None) -> Backend:
    options = options or BackendOptions()
    if cfg.backend.type == "vxlan":
        return VxlanBackend(cfg, underlay)
    if cfg.backend.type == "host-gw":
        return HostGwBackend(cfg, underlay)
    if cfg.backend.type == "udp":
        from netd.adapters.udp import UdpBackend, default_state_file  # needs the compiled extension

        state = default_state_file(options.state_dir) if options.state_dir else None
        return UdpBackend(cfg, underlay, offloads=options.udp_offloads, state_file=state)
    raise ConfigError(f"backend {cfg.backend.type!r} is not known", "Backend.Type")
