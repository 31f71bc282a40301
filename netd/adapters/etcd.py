"""EtcdRegistry: leases and config in etcd v3 (aetcd), in flannel's key layout.

aetcd 1.0 speaks to one host over a plain channel; we subclass its Client to open the gRPC
channel ourselves, so netd gets TLS (--etcd-cafile/--etcd-certfile/--etcd-keyfile) and fails
over between --etcd-endpoints: after an unavailability error the next call goes to the next
endpoint.

Round trips per acquire are constant: one range (list), one lease grant, one transaction whose
failure branch re-reads the subnets, so a lost race needs no extra list.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions as aexc
import aetcd.rpc as arpc
import aetcd.transactions as atx
import aetcd.utils as autils
import aetcd.watcher as awatcher
import grpc

from netd.adapters.registry import Snapshot, SubnetEvent
from netd.aio import Background
from netd.errors import CompactedError, ConfigError, ConflictError, RegistryRefused, RegistryUnavailable
from netd.model import Lease, LeaseAttrs, flags, format_subnet_key, parse_lease_key, parse_subnet_key

log = logging.getLogger(__name__)
T = TypeVar("T")

UNAVAILABLE, REFUSED = "unavailable", "refused"
#: gRPC statuses that mean etcd could not answer now (measured with etcd 3.4: a member down is
#: UNAVAILABLE, no quorum is UNAVAILABLE "request timed out" or "no leader", a slow one
#: DEADLINE_EXCEEDED); every other status is an answer: NOT_FOUND (a lease), PERMISSION_DENIED,
#: UNAUTHENTICATED, INVALID_ARGUMENT (also "user name is empty" when auth is on), OUT_OF_RANGE, ...
#: RESOURCE_EXHAUSTED ("too many requests": an overloaded member) passes: unavailable, not a refusal.
_UNAVAILABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
                      grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED}
#: etcd 3.4 answers a write without quorum with UNKNOWN "context deadline exceeded".
_UNAVAILABLE_DETAILS = ("deadline exceeded", "timed out", "no leader", "leader changed")


def classify_error(exc: BaseException) -> tuple[str, str] | None:
    """How an etcd call failed: (UNAVAILABLE, why): etcd could not answer, retry (elsewhere);
    (REFUSED, status): etcd answered no, another endpoint would too; None: not an etcd client
    error at all (a bug), which the caller lets propagate."""
    if isinstance(exc, aexc.ConnectionFailedError | aexc.ConnectionTimeoutError | aexc.WatchTimeoutError
                  | TimeoutError | OSError):
        return UNAVAILABLE, type(exc).__name__
    rpc = exc if isinstance(exc, grpc.RpcError) else exc.__cause__ if isinstance(exc, aexc.ClientError) else None
    code = getattr(rpc, "code", None)
    if callable(code):
        status = code()
        details = str(rpc.details() or "")  # type: ignore[union-attr]
        if status in _UNAVAILABLE_CODES or (status == grpc.StatusCode.UNKNOWN
                                            and any(d in details for d in _UNAVAILABLE_DETAILS)):
            return UNAVAILABLE, status.name
        return REFUSED, status.name
    if isinstance(exc, aexc.ClientError):  # aetcd's own, with no gRPC status (DuplicateLeaseError, ...)
        return REFUSED, type(exc).__name__
    return None


@dataclass(frozen=True)
class EtcdTLS:
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def validate(self) -> None:
        """A CA without a client cert/key is refused: never a silent fall-back to plain."""
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("--etcd-certfile and --etcd-keyfile must be given together", "--etcd-certfile")
        if self.cafile and not self.certfile:
            raise ConfigError(
                "--etcd-cafile was given without --etcd-certfile/--etcd-keyfile; refusing to fall "
                "back to an unauthenticated connection",
                "--etcd-cafile",
            )

    @property
    def enabled(self) -> bool:
        return bool(self.cafile or self.certfile)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            if not path:
                return None
            with open(path, "rb") as fh:
                return fh.read()

        return grpc.ssl_channel_credentials(read(self.cafile), read(self.keyfile), read(self.certfile))


def parse_endpoints(spec: str) -> list[tuple[str, int, bool]]:
    """``http://10.0.0.1:2379,https://h:2379`` -> [(host, port, tls)]; ConfigError if malformed."""
    try:
        return flags.parse_endpoints(spec)
    except ValueError as exc:
        raise ConfigError(str(exc), "--etcd-endpoints") from exc


#: gRPC waits up to 120 s between reconnection attempts by default (x1.6 from 1 s): after an etcd
#: outage of half a minute a channel could stay down, and netd unready, for tens of seconds more
#: with etcd back. At most 5 s: ready again within 5 s of an etcd that refused connections coming
#: back (one attempt per host every 5 s is nothing to etcd). An attempt to a host that drops packets
#: still waits out gRPC's connect timeout (20 s).
RECONNECT_MAX_MS = 5000


class _Client(aetcd.Client):
    """aetcd.Client whose channel may be TLS; the target is set per connection."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None, timeout: float) -> None:
        super().__init__(timeout=int(timeout))
        self._target = target
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS)]
        if self._credentials is not None:
            self.channel = grpc.aio.secure_channel(self._target, self._credentials, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(self._target, options=options)
        self.kvstub = arpc.KVStub(self.channel)
        self.clusterstub = arpc.ClusterStub(self.channel)
        self.leasestub = arpc.LeaseStub(self.channel)
        self.maintenancestub = arpc.MaintenanceStub(self.channel)
        self._watcher = awatcher.Watcher(arpc.WatchStub(self.channel), timeout=self._timeout)
        self._connected.set()


class EtcdConnection:
    """One etcd client over TLS or plain gRPC, failing over across the endpoints: every call has a
    deadline and its failure is classified (unavailable: fail over; refused: no; a bug: raised
    as is). EtcdRegistry (flannel's keys) and EtcdObjectStore (netd's objects) are built on it."""

    def __init__(self, endpoints: str | Sequence[str], tls: EtcdTLS | None = None, timeout: float = 5.0) -> None:
        spec = endpoints if isinstance(endpoints, str) else ",".join(endpoints)
        self._endpoints = parse_endpoints(spec)
        self._tls = tls or EtcdTLS()
        self._tls.validate()
        self._timeout = timeout
        self._index = 0
        self._client: _Client | None = None
        self._trips = 0
        self._background = Background()

    # -- connection ----------------------------------------------------------------------
    def _get_client(self) -> _Client:
        if self._client is None:
            host, port, tls = self._endpoints[self._index % len(self._endpoints)]
            creds = None
            if self._tls.enabled:
                creds = self._tls.credentials()
            elif tls:
                creds = grpc.ssl_channel_credentials()
            self._client = _Client(f"{host}:{port}", creds, self._timeout)
        return self._client

    def _fail_over(self) -> None:
        """Drop the channel; the next call reconnects, to the next endpoint if there are several."""
        client, self._client = self._client, None
        if len(self._endpoints) > 1:
            self._index += 1
        if client is not None:
            self._background.spawn(self._close_quietly(client), "close etcd channel")

    @staticmethod
    async def _close_quietly(client: _Client) -> None:
        try:
            await client.close()
        except Exception:  # noqa: BLE001 - closing a broken channel may fail in many ways
            pass

    @property
    def endpoint(self) -> str:
        host, port, _ = self._endpoints[self._index % len(self._endpoints)]
        return f"{host}:{port}"

    async def _call(self, what: str, fn: Callable[[_Client], Awaitable[T]]) -> T:
        self._trips += 1
        client = self._get_client()
        try:
            return await asyncio.wait_for(fn(client), self._timeout)
        except Exception as exc:
            translated = self._translate(exc, what)
            if translated is exc:
                raise
            raise translated from exc

    def _translate(self, exc: Exception, what: str) -> Exception:
        """The NetdError for a failed call (failing over first when etcd could not answer), or the
        exception itself when it is no etcd error at all (a bug: it propagates with its traceback)."""
        kind = classify_error(exc)
        if kind is None:
            return exc
        endpoint = self.endpoint
        if kind[0] == REFUSED:
            return RegistryRefused(f"etcd {what} at {endpoint} refused: {kind[1]}: {exc or type(exc).__name__}",
                                   code=kind[1])
        if len(self._endpoints) > 1 or isinstance(exc, TimeoutError):
            self._fail_over()
        return RegistryUnavailable(f"etcd {what} at {endpoint} failed: {exc or type(exc).__name__}")

    @contextlib.contextmanager
    def _watch_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except aexc.RevisionCompactedError as exc:
            raise CompactedError(exc.compacted_revision) from exc
        except Exception as exc:
            kind = classify_error(exc)
            if kind is None:
                raise
            if kind[0] == REFUSED:
                raise RegistryRefused(f"etcd watch at {self.endpoint} {what}: {kind[1]}: {exc}", code=kind[1]) from exc
            self._fail_over()
            raise RegistryUnavailable(f"etcd watch at {self.endpoint} {what}: {exc}") from exc

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[Any]:
        """aetcd's events under ``prefix`` from ``start_revision``; CompactedError when that was
        compacted, RegistryUnavailable or RegistryRefused when the stream fails (re-create it)."""
        self._trips += 1
        client = self._get_client()
        with self._watch_errors("failed"):
            watch = await asyncio.wait_for(
                client.watch(prefix, range_end=autils.prefix_range_end(prefix), start_revision=start_revision),
                self._timeout,
            )
        try:
            with self._watch_errors("broke"):
                async for event in watch:
                    yield event
        finally:
            try:
                await watch.cancel()
            except Exception:  # noqa: BLE001 - the stream may already be gone
                pass

    async def close(self) -> None:
        await self._background.wait(self._timeout)
        if self._client is not None:
            client, self._client = self._client, None
            await self._close_quietly(client)

    @property
    def round_trips(self) -> int:
        return self._trips


class EtcdRegistry(EtcdConnection):
    def __init__(
        self,
        endpoints: str | Sequence[str],
        prefix: str = "/coreos.com/network",
        tls: EtcdTLS | None = None,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(endpoints, tls, timeout)
        self._prefix = prefix.rstrip("/")
        self._subnets_prefix = f"{self._prefix}/subnets/".encode()
        self._config_key = f"{self._prefix}/config".encode()
        # A lease granted for a create that lost its race, kept for the next create with the
        # same TTL: a lost race then costs one transaction, not grant + txn + revoke.
        self._spare: tuple[int, int] | None = None  # (ttl, lease id)

    # -- decoding --------------------------------------------------------------------------
    def _lease_from_kv(self, kv: Any) -> Lease:
        name = bytes(kv.key)[len(self._subnets_prefix):].decode()
        subnet, ipv6_subnet = parse_lease_key(name)
        return Lease(
            subnet,
            LeaseAttrs.from_json(bytes(kv.value), source=bytes(kv.key).decode()),
            int(kv.lease),
            int(kv.mod_revision),
            ipv6_subnet,
            int(kv.create_revision),
        )

    def _snapshot(self, kvs: Any, revision: int) -> Snapshot:
        leases, invalid = [], []
        for kv in kvs:
            try:
                leases.append(self._lease_from_kv(kv))
            except (ValueError, ConfigError) as exc:
                invalid.append(f"{bytes(kv.key).decode(errors='replace')}: {exc}")
        return Snapshot(tuple(leases), revision, tuple(invalid))

    def _key(self, subnet: ipaddress.IPv4Network, ipv6_subnet: ipaddress.IPv6Network | None = None) -> bytes:
        return self._subnets_prefix + format_subnet_key(subnet, ipv6_subnet).encode()

    # -- Registry ----------------------------------------------------------------------------
    async def get_config(self) -> bytes | None:
        got = await self._call("get config", lambda c: c.get(self._config_key))
        return bytes(got.value) if got is not None else None

    async def put_config(self, value: bytes) -> None:
        await self._call("put config", lambda c: c.put(self._config_key, value))

    async def list_subnets(self) -> Snapshot:
        got = await self._call("list subnets", lambda c: c.get_prefix(self._subnets_prefix))
        return self._snapshot([kv for kv in got], got.header.revision)

    async def _cas(self, key: bytes, compare: list[Any], value: bytes, lease_id: int,
                   what: str, delete: bytes | None = None) -> tuple[bool, Any]:
        range_end = autils.prefix_range_end(self._subnets_prefix)
        extra = [atx.Delete(delete)] if delete is not None else []

        async def txn(c: _Client) -> Any:
            return await c.transaction(
                compare=compare,
                success=[atx.Put(key, value, lease_id), atx.Get(key), *extra],
                failure=[atx.Get(self._subnets_prefix, range_end)],
            )

        return await self._call(what, txn)

    def _no_other_key_form(self, subnet: ipaddress.IPv4Network) -> list[Any]:
        """Compares that hold when no key but the v4-only name of ``subnet`` names it: none in
        ["10.5.9.0-24&", "10.5.9.0-24'"), the dual-stack names ('&' + 1 is "'")."""
        v4_key = self._key(subnet)
        return [atx.Version(v4_key + b"&", range_end=v4_key + b"'") == 0]

    def _conflict_snapshot(self, responses: Any) -> Snapshot:
        items = responses[0] if responses else []
        kvs = [get for _, get in items]
        revision = max((get.header.revision for get in kvs), default=0)
        return self._snapshot(kvs, revision)

    async def _take_spare_or_grant(self, ttl: int) -> int:
        """The spare lease of a lost race if it has this TTL (else it is revoked), or a new one."""
        spare, self._spare = self._spare, None
        if spare is not None and spare[0] == ttl:
            return spare[1]
        if spare is not None:
            self._background.spawn(self._revoke_quietly(spare[1]), "revoke spare lease")
        return await self._grant(ttl)

    async def _grant(self, ttl: int) -> int:
        granted = await self._call("grant lease", lambda c: c.lease(ttl))
        return int(granted.id)

    async def create_subnet(
        self, subnet: ipaddress.IPv4Network, attrs: LeaseAttrs, ttl: int,
        ipv6_subnet: ipaddress.IPv6Network | None = None,
    ) -> Lease:
        # Create-if-absent for every key form that names this IPv4 subnet: one compare on the exact
        # name would let a v4-only and a dual-stack key win one subnet.
        compare = [atx.Version(self._key(subnet)) == 0, *self._no_other_key_form(subnet)]
        return await self._put_new_key(self._key(subnet, ipv6_subnet), compare, attrs, ttl, "create subnet",
                                       f"subnet {subnet} is already held")

    async def update_subnet(self, current: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease:
        key = self._key(current.subnet, current.ipv6_subnet)
        lease_id = current.lease_id if ttl is None else await self._grant(ttl)
        compare = [atx.Mod(key) == current.mod_revision]
        ok, responses = await self._cas(key, compare, attrs.to_json(), lease_id, "update subnet")
        if not ok:
            snap = self._conflict_snapshot(responses)
            now = snap.find(current.subnet)
            found = "absent" if now is None else f"mod_revision {now.mod_revision}"
            raise ConflictError(
                f"subnet {current.subnet} changed: expected mod_revision {current.mod_revision}, found {found}",
                current=snap,
            )
        return self._lease_from_kv(responses[1][0][1])

    async def rename_subnet(self, current: Lease, ipv6_subnet: ipaddress.IPv6Network, attrs: LeaseAttrs,
                            ttl: int) -> Lease:
        old = self._key(current.subnet, current.ipv6_subnet)
        compare = [atx.Mod(old) == current.mod_revision, *self._no_other_key_form(current.subnet)]
        lease = await self._put_new_key(
            self._key(current.subnet, ipv6_subnet), compare, attrs, ttl, "rename subnet",
            f"subnet {current.subnet} changed or is held under another key since it was read", delete=old)
        if current.lease_id:  # the old key's lease holds nothing now
            self._background.spawn(self._revoke_quietly(current.lease_id), "revoke the renamed key's lease")
        return lease

    async def _put_new_key(self, key: bytes, compare: list[Any], attrs: LeaseAttrs, ttl: int, what: str,
                           conflict: str, delete: bytes | None = None) -> Lease:
        """Put ``key`` bound to a lease of ``ttl`` (0: none) if ``compare`` holds; a lease granted for a
        put that did not happen is kept as the spare for the next one."""
        lease_id = await self._take_spare_or_grant(ttl) if ttl > 0 else 0
        try:
            ok, responses = await self._cas(key, compare, attrs.to_json(), lease_id, what, delete=delete)
        except RegistryUnavailable:
            if lease_id:
                self._spare = (ttl, lease_id)
            raise
        if not ok:
            if lease_id:
                self._spare = (ttl, lease_id)
            raise ConflictError(conflict, current=self._conflict_snapshot(responses))
        return self._lease_from_kv(responses[1][0][1])

    async def delete_subnet(
        self, subnet: ipaddress.IPv4Network, ipv6_subnet: ipaddress.IPv6Network | None = None
    ) -> bool:
        got = await self._call("delete subnet", lambda c: c.delete(self._key(subnet, ipv6_subnet)))
        return bool(got and got.deleted)

    async def keepalive(self, lease_id: int) -> int:
        reply = await self._call("keepalive", lambda c: c.refresh_lease(lease_id))
        return max(0, int(reply.TTL)) if reply is not None else 0

    async def time_to_live(self, lease_id: int) -> int:
        info = await self._call("lease ttl", lambda c: c.get_lease_info(lease_id, keys=False))
        return max(0, int(info.TTL))

    async def revoke(self, lease_id: int) -> None:
        try:
            await self._call("revoke lease", lambda c: c.revoke_lease(lease_id))
        except RegistryRefused as exc:
            if exc.code != "NOT_FOUND":  # gone already is what a revoke wants
                raise

    async def _revoke_quietly(self, lease_id: int) -> None:
        try:
            await self.revoke(lease_id)
        except Exception as exc:  # noqa: BLE001 - best effort; the lease expires by itself
            log.debug("revoking unused lease %x failed: %s", lease_id, exc)

    async def watch_subnets(self, start_revision: int) -> AsyncIterator[list[SubnetEvent]]:
        async for event in self.watch_prefix(self._subnets_prefix, start_revision):
            name = bytes(event.kv.key)[len(self._subnets_prefix):].decode(errors="replace")
            try:
                subnet = parse_subnet_key(name)
            except ValueError:
                continue
            deleted = event.kind == "DELETE"
            lease = None
            if not deleted:
                try:
                    lease = self._lease_from_kv(event.kv)
                except (ValueError, ConfigError):
                    lease = None
            yield [SubnetEvent(subnet, deleted, int(event.kv.mod_revision), lease)]

    async def close(self) -> None:
        if self._spare is not None:
            spare, self._spare = self._spare, None
            await self._revoke_quietly(spare[1])
        await super().close()
