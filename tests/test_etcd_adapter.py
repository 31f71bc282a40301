"""EtcdRegistry beyond the contract: TLS, flag validation, failover across a 3-member cluster."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import sys

import aetcd.exceptions as aexc
import grpc
import pytest

from integration.etcd import EtcdServer, free_port, make_test_pki
from netd.adapters.etcd import EtcdRegistry, EtcdTLS, classify_error, parse_endpoints
from netd.errors import ConfigError, RegistryRefused, RegistryUnavailable
from netd.model import LeaseAttrs

ATTRS = LeaseAttrs(ipaddress.IPv4Address("192.0.2.1"), "vxlan", {})


@pytest.mark.parametrize(
    "tls,message",
    [
        (EtcdTLS(cafile="/ca.pem"), "--etcd-cafile: --etcd-cafile was given without --etcd-certfile"),
        (EtcdTLS(cafile="/ca.pem", certfile="/c.pem"), "--etcd-certfile and --etcd-keyfile must be given together"),
        (EtcdTLS(keyfile="/k.pem"), "must be given together"),
    ],
)
def test_incomplete_tls_flags_are_refused(tls, message):
    with pytest.raises(ConfigError, match=message):
        EtcdRegistry("http://127.0.0.1:2379", tls=tls)


def test_cli_refuses_ca_without_client_cert():
    r = subprocess.run([sys.executable, "-m", "netd.cli.netctl_main", "--etcd-cafile=/etc/ssl/certs/x.pem",
                        "leases"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "refusing to fall back to an unauthenticated connection" in r.stderr


def test_endpoint_parsing():
    assert parse_endpoints("http://10.0.0.1:2379, https://etcd.example:4001") == [
        ("10.0.0.1", 2379, False), ("etcd.example", 4001, True)]
    assert parse_endpoints("127.0.0.1") == [("127.0.0.1", 2379, False)]
    with pytest.raises(ConfigError, match="--etcd-endpoints"):
        parse_endpoints("ftp://x:1")


def test_tls_etcd_with_client_certificates(tmp_path, unique_prefix):
    pki = make_test_pki(str(tmp_path))
    with EtcdServer("tls", tls=pki) as server:
        assert server.endpoint.startswith("https://")

        async def main() -> None:
            good = EtcdRegistry(server.endpoint, prefix=unique_prefix,
                                tls=EtcdTLS(pki["ca"], pki["client_cert"], pki["client_key"]))
            try:
                await good.put_config(b'{"Network":"10.5.0.0/16"}')
                lease = await good.create_subnet(ipaddress.IPv4Network("10.5.1.0/24"), ATTRS, 60)
                assert lease.lease_id
            finally:
                await good.close()
            plain = EtcdRegistry(server.endpoint.replace("https", "http"), prefix=unique_prefix, timeout=2)
            try:
                with pytest.raises(RegistryUnavailable):
                    await plain.get_config()
            finally:
                await plain.close()

        asyncio.run(main())


def test_failover_when_the_leader_of_a_3_member_cluster_dies(etcd_cluster3, unique_prefix):
    leader = etcd_cluster3.leader()
    # put the leader first so the client is connected to it when it dies
    endpoints = [leader.endpoint] + [m.endpoint for m in etcd_cluster3.members if m is not leader]

    async def main() -> None:
        reg = EtcdRegistry(endpoints, prefix=unique_prefix, timeout=2)
        try:
            first = await reg.create_subnet(ipaddress.IPv4Network("10.5.1.0/24"), ATTRS, 60)
            leader.kill()
            created = None
            for _ in range(40):  # the agent's loops retry the same way
                try:
                    created = await reg.create_subnet(ipaddress.IPv4Network("10.5.2.0/24"), ATTRS, 60)
                    break
                except RegistryUnavailable:
                    await asyncio.sleep(0.1)
            assert created is not None, "no write succeeded after the leader died"
            assert await reg.keepalive(first.lease_id) > 0
            assert {x.subnet for x in (await reg.list_subnets()).leases} == {first.subnet, created.subnet}
            assert reg.endpoint != leader.endpoint.split("//")[1]
        finally:
            await reg.close()

    asyncio.run(main())


def test_netctl_lists_a_flannel_dual_stack_lease(etcd_server, unique_prefix):
    """A key written the way flannel's dual-stack hosts write it is a lease, not an unparseable
    key (before, netd skipped it and could hand its IPv4 subnet to a second host)."""
    key = f"{unique_prefix}/subnets/10.5.9.0-24&fd00:0:0:9::-64"
    etcd_server.etcdctl("put", key, '{"PublicIP":"192.0.2.9","PublicIPv6":"2001:db8::9","BackendType":"vxlan"}')
    base = [sys.executable, "-m", "netd.cli.netctl_main", f"--etcd-endpoints={etcd_server.endpoint}",
            f"--etcd-prefix={unique_prefix}", "leases"]
    table = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "unparseable" not in table.stderr, table.stderr
    assert "IPV6 SUBNET" in table.stdout and "fd00:0:0:9::/64" in table.stdout
    rows = json.loads(subprocess.run([*base, "-o", "json"], capture_output=True, text=True, timeout=60).stdout)
    assert [(r["subnet"], r["ipv6_subnet"], r["public_ip"]) for r in rows] == [
        ("10.5.9.0/24", "fd00:0:0:9::/64", "192.0.2.9")]


# -- errors: unavailable (retry, fail over), refused (etcd said no), or a bug (issue 11, item 8) --------
def aetcd_error(code: grpc.StatusCode, details: str) -> Exception:
    """The exception aetcd raises for a gRPC status, made by aetcd's own translation."""
    rpc = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    try:
        aexc._handle_exception(rpc)
    except Exception as exc:  # noqa: BLE001 - what it raises is the point
        return exc
    raise AssertionError("aetcd raised nothing")


@pytest.mark.parametrize("code,details,kind", [
    # as measured with etcd 3.4.23 through aetcd 1.0.0
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", ("unavailable", "ConnectionFailedError")),
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", ("unavailable", "ConnectionFailedError")),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", ("unavailable", "ConnectionTimeoutError")),
    (grpc.StatusCode.UNKNOWN, "context deadline exceeded", ("unavailable", "UNKNOWN")),  # a write, no quorum
    (grpc.StatusCode.INTERNAL, "transport", ("unavailable", "INTERNAL")),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests", ("unavailable", "RESOURCE_EXHAUSTED")),
    (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", ("refused", "NOT_FOUND")),
    (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied", ("refused", "PERMISSION_DENIED")),
    (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token", ("refused", "UNAUTHENTICATED")),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty", ("refused", "INVALID_ARGUMENT")),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request",
     ("refused", "INVALID_ARGUMENT")),
    (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL", ("refused", "OUT_OF_RANGE")),
    (grpc.StatusCode.UNKNOWN, "something else", ("refused", "UNKNOWN")),
])
def test_etcd_errors_are_classified(code, details, kind):
    assert classify_error(aetcd_error(code, details)) == kind


def test_non_etcd_errors_are_bugs_not_outages():
    assert classify_error(TypeError("'NoneType' object is not iterable")) is None
    assert classify_error(KeyError("x")) is None
    assert classify_error(TimeoutError())[0] == "unavailable"
    assert classify_error(ConnectionRefusedError())[0] == "unavailable"
    assert classify_error(aexc.DuplicateLeaseError()) == ("refused", "DuplicateLeaseError")


def test_a_refusal_is_not_an_outage_and_does_not_fail_over(tmp_path, unique_prefix):
    """An etcd with authentication on refuses a client without credentials: RegistryRefused, the
    endpoint kept; a dead endpoint is an outage: RegistryUnavailable and the next endpoint."""
    with EtcdServer("auth") as server:
        server.etcdctl("user", "add", "root", "--new-user-password=pw")
        server.etcdctl("auth", "enable")
        dead = f"http://127.0.0.1:{free_port()}"

        async def main() -> None:
            reg = EtcdRegistry([server.endpoint, dead], prefix=unique_prefix, timeout=3)
            try:
                before = reg.endpoint
                with pytest.raises(RegistryRefused, match="refused: INVALID_ARGUMENT: .*user name is empty") as exc:
                    await reg.get_config()
                assert exc.value.code == "INVALID_ARGUMENT"
                assert reg.endpoint == before  # another member would say the same
                with pytest.raises(RegistryRefused):
                    await reg.list_subnets()
                assert reg.endpoint == before
            finally:
                await reg.close()
            reg = EtcdRegistry([dead, server.endpoint], prefix=unique_prefix, timeout=3)
            try:
                with pytest.raises(RegistryUnavailable):
                    await reg.get_config()
                assert reg.endpoint == server.endpoint.split("//")[1]  # failed over
            finally:
                await reg.close()

        asyncio.run(main())
