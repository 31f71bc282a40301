"""A private dockerd for tests: its own data root, exec root, socket and pid file, no bridge, no
iptables (containers run with --network none and netd wires them); a busybox image made with
``docker import`` from the machine's static busybox (no registry is reachable). Stopped by its pid."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time

IMAGE = "netd-busybox:latest"


def docker_installed() -> bool:
    return shutil.which("dockerd") is not None and os.path.exists("/bin/busybox")


class DockerDaemon:
    def __init__(self) -> None:
        # Short on purpose: containerd's sockets live under the exec root and a unix socket path is at
        # most 108 bytes; under pytest's tmp_path containerd fails with "timeout waiting for containerd".
        self.workdir = tempfile.mkdtemp(prefix="netd-docker-")
        self.socket = os.path.join(self.workdir, "docker.sock")
        self.host = f"unix://{self.socket}"
        self.pidfile = os.path.join(self.workdir, "dockerd.pid")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DockerDaemon:
        os.makedirs(self.workdir, exist_ok=True)
        log = open(os.path.join(self.workdir, "dockerd.log"), "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", os.path.join(self.workdir, "data"), "--exec-root",
             os.path.join(self.workdir, "exec"), "--pidfile", self.pidfile, "-H", self.host, "--iptables=false",
             "--ip-masq=false", "--ip-forward=false", "--bridge=none", "--storage-driver=overlay2"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        import docker

        deadline = time.monotonic() + 30
        while True:
            try:
                cli = docker.DockerClient(base_url=self.host, version="auto")
                try:
                    cli.ping()
                finally:
                    cli.close()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    with open(os.path.join(self.workdir, "dockerd.log"), errors="replace") as fh:
                        tail = fh.read()[-2000:]
                    self.stop()
                    raise RuntimeError(f"dockerd did not come up; the end of its log:\n{tail}") from None
                time.sleep(0.1)
        self._import_busybox()
        return self

    def client(self):  # type: ignore[no-untyped-def]
        import docker

        return docker.DockerClient(base_url=self.host, version="auto")

    def _import_busybox(self) -> None:
        """A rootfs of /bin/busybox and its applets, imported as an image."""
        applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout.split()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root"):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            tar.add("/bin/busybox", arcname="bin/busybox")
            for a in applets:
                if a != "busybox":
                    link = tarfile.TarInfo(f"bin/{a}")
                    link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                    tar.addfile(link)
            passwd = b"root:x:0:0:root:/root:/bin/sh\n"
            info = tarfile.TarInfo("etc/passwd")
            info.size = len(passwd)
            tar.addfile(info, io.BytesIO(passwd))
        cli = self.client()
        try:
            cli.api.import_image_from_data(buf.getvalue(), repository=IMAGE.split(":")[0], tag="latest",
                                           changes=['CMD ["/bin/sh"]'])
        finally:
            cli.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            cli = self.client()
            for c in cli.containers.list(all=True):
                c.remove(force=True)
            cli.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)
