"""Real etcd servers for tests, benchmarks and the demo: one member or a 3-member cluster.

Started on free ports with a temp data dir, with short raft timers (a member is ready in
~60 ms); ``kill()`` is SIGKILL (a crash), ``stop()``/``start()`` keep the data dir so a
restarted member comes back with every key and lease.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"

_used_ports: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (and that this process has not handed out yet)."""
    while True:
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _used_ports:
            _used_ports.add(port)
            return port


class EtcdServer:
    """One etcd member. ``listen_ips`` are the client addresses (loopback first)."""

    def __init__(
        self,
        name: str = "m0",
        listen_ips: Sequence[str] = ("127.0.0.1",),
        client_port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        data_dir: str | None = None,
        election_timeout_ms: int = 100,
        heartbeat_ms: int = 10,
        netns: str | None = None,
        tls: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        #: Run etcd inside this network namespace (namespace clusters put it on the underlay).
        self.netns = netns
        self._wrap = ["ip", "netns", "exec", netns] if netns else []
        #: {"ca":..., "cert":..., "key":...}: serve clients over TLS and require client certs.
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self.listen_ips = list(listen_ips)
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.peer_url = f"http://{self.listen_ips[0]}:{self.peer_port}"
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix=f"netd-etcd-{name}-")
        self.election_timeout_ms = election_timeout_ms
        self.heartbeat_ms = heartbeat_ms
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(self.data_dir, "..", f"{os.path.basename(self.data_dir)}.log")

    @property
    def endpoint(self) -> str:
        """The first client URL (loopback for the root-namespace fixtures)."""
        return f"{self.scheme}://{self.listen_ips[0]}:{self.client_port}"

    def start(self, wait: bool = True) -> EtcdServer:
        urls = ",".join(f"{self.scheme}://{ip}:{self.client_port}" for ip in self.listen_ips)
        tls_flags = []
        if self.tls:
            tls_flags = [f"--cert-file={self.tls['cert']}", f"--key-file={self.tls['key']}",
                         f"--trusted-ca-file={self.tls['ca']}", "--client-cert-auth"]
        cmd = [
            *self._wrap,
            ETCD,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={urls}",
            f"--advertise-client-urls={urls}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=netd-test",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_timeout_ms}",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
            *tls_flags,
        ]
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        logf.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited with {self.proc.returncode}; log: {self.log_tail()}")
            r = subprocess.run(
                [*self._wrap, ETCDCTL, *self._ctl_tls(), f"--endpoints={self.endpoint}", "--command-timeout=1s",
                 "endpoint", "health"],
                capture_output=True,
                env={**os.environ, "ETCDCTL_API": "3"},
            )
            if r.returncode == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(f"etcd {self.name} not healthy after {timeout}s; log: {self.log_tail()}")

    def _ctl_tls(self) -> list[str]:
        if not self.tls:
            return []
        return [f"--cacert={self.tls['ca']}", f"--cert={self.tls['client_cert']}", f"--key={self.tls['client_key']}"]

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read()[-n:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: a crash. The data dir stays, so ``start()`` brings the member back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    stop = kill

    def close(self) -> None:
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)

    def etcdctl(self, *args: str) -> str:
        r = subprocess.run(
            [*self._wrap, ETCDCTL, *self._ctl_tls(), f"--endpoints={self.endpoint}", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            check=True,
        )
        return r.stdout

    def __enter__(self) -> EtcdServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EtcdCluster:
    """A 3-member (or n-member) static etcd cluster on loopback."""

    def __init__(self, size: int = 3, election_timeout_ms: int = 200, heartbeat_ms: int = 20) -> None:
        peers = [(f"m{i}", free_port()) for i in range(size)]
        initial = ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in peers)
        self.members = [
            EtcdServer(
                name,
                peer_port=port,
                initial_cluster=initial,
                election_timeout_ms=election_timeout_ms,
                heartbeat_ms=heartbeat_ms,
            )
            for name, port in peers
        ]

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def start(self) -> EtcdCluster:
        for m in self.members:
            m.start(wait=False)
        for m in self.members:
            m.wait_ready()
        return self

    def leader(self) -> EtcdServer:
        import json

        for m in self.members:
            if m.proc is None:
                continue
            out = m.etcdctl("endpoint", "status", "-w", "json")
            status = json.loads(out)[0]["Status"]
            if status["header"]["member_id"] == status["leader"]:
                return m
        raise RuntimeError("no leader")

    def close(self) -> None:
        for m in self.members:
            m.close()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_test_pki(directory: str, ip: str = "127.0.0.1") -> dict[str, str]:
    """A throw-away CA, a server cert for ``ip`` and a client cert (openssl), for TLS tests."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=netd-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    ext = os.path.join(directory, "server.ext")
    with open(ext, "w") as fh:
        fh.write(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name, cn in (("server", "etcd"), ("client", "netd")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", f"{name}.crt")
    p = lambda n: os.path.join(directory, n)  # noqa: E731
    return {"ca": p("ca.crt"), "cert": p("server.crt"), "key": p("server.key"),
            "client_cert": p("client.crt"), "client_key": p("client.key")}


@contextlib.contextmanager
def running_etcd(**kwargs: object) -> Iterator[EtcdServer]:
    server = EtcdServer(**kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.close()
