"""Files netd writes (subnet.env, the udp route cache), atomically: temp file, fsync, rename."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile

from netd.errors import AlreadyRunning


def write_atomic(path: str, text: str, mode: int = 0o644) -> bool:
    """Replace ``path`` with ``text`` atomically; False (and no write) if it already holds it."""
    try:
        with open(path) as fh:
            if fh.read() == text:
                return False
    except OSError:
        pass
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def route_cache_path(state_dir: str) -> str:
    """The udp backend's route cache (netd.adapters.fastpath reads and writes it)."""
    return os.path.join(state_dir, "udp-routes.json")


def read_text(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def lock_path(state_dir: str) -> str:
    return os.path.join(state_dir, "netd.lock")


def acquire_instance_lock(state_dir: str) -> int:
    """One netd per host: an exclusive flock on --state-dir/netd.lock, held (through the returned
    fd, close-on-exec) until the process exits, whatever way it exits. The file holds the holder's
    pid, for the message a second instance prints before it exits, having touched nothing."""
    os.makedirs(state_dir, exist_ok=True)
    path = lock_path(state_dir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise AlreadyRunning(
            f"another netd (pid {holder}) is running on this host: it holds {path}. One netd per host; "
            f"stop that one first (this one has changed nothing)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
