"""Frozen value types and the parsing/validation of external shapes (etcd JSON)."""

from netd.model.config import BACKEND_DEFAULTS, BackendConfig, NetworkConfig, parse_network_config
from netd.model.lease import Lease, LeaseAttrs, format_subnet_key, parse_lease_key, parse_subnet_key

__all__ = [
    "BACKEND_DEFAULTS",
    "BackendConfig",
    "Lease",
    "LeaseAttrs",
    "NetworkConfig",
    "format_subnet_key",
    "parse_lease_key",
    "parse_network_config",
    "parse_subnet_key",
]
