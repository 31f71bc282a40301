"""The NetdError family. Every error says what was expected and what was found."""

from __future__ import annotations


class NetdError(Exception):
    """Base of every error netd raises on purpose."""


class ConfigError(NetdError):
    """The network config (``<prefix>/config``) or a flag is invalid.

    ``field`` names the offending field (e.g. ``Backend.Type``) when one is to blame.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NoFreeSubnetError(NetdError):
    """Every subnet between SubnetMin and SubnetMax is leased or reserved."""


class RegistryError(NetdError):
    """Base of registry (etcd or memory) failures."""


class ConflictError(RegistryError):
    """A compare-and-swap lost: the key was created or changed by someone else.

    Every Registry raises exactly this type for a lost race. ``current`` may carry a fresh
    snapshot of the subnets (the etcd adapter reads it in the same transaction) so that the
    caller can retry without another round trip.
    """

    def __init__(self, message: str, current: object | None = None) -> None:
        self.current = current
        super().__init__(message)


class CompactedError(RegistryError):
    """A watch asked for a revision that has been compacted away: re-list everything."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"revision compacted up to {compact_revision}; a full re-list is needed")


class RegistryUnavailable(RegistryError):
    """The registry could not answer (etcd down, partitioned, without quorum, a timeout, TLS
    failure): retried, on the next endpoint when there are several."""


class RegistryRefused(RegistryError):
    """The registry answered, and said no: permission denied, authentication failed, a lease that
    does not exist, a request it finds invalid. Another endpoint would say the same, so there is no
    fail-over; ``code`` is etcd's status (PERMISSION_DENIED, NOT_FOUND, ...)."""

    def __init__(self, message: str, code: str) -> None:
        self.code = code
        super().__init__(message)


class DataplaneError(NetdError):
    """A netlink/nftables/TUN operation failed; ``errno`` is the OS error code when there is one."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(message)


class AlreadyRunning(NetdError):
    """Another netd holds this host's instance lock (--state-dir/netd.lock)."""
