"""/healthz, /readyz, /metrics and /dataplane on --healthz-port (stdlib server in a thread)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

#: Returns (ready, reason, details) for /readyz.
ReadinessProbe = Callable[[], tuple[bool, str, dict[str, object]]]
#: Returns what the data path holds, read from it, for /dataplane (None: not yet there).
DataplaneProbe = Callable[[], dict[str, object] | None]
#: Returns a unit's output (its last lines) for /journal?unit=NAME&lines=N (None: no such unit here).
JournalProbe = Callable[[str, int], str | None]


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6  # --healthz-ip "::" or another IPv6 address


class HealthServer:
    def __init__(self, address: str, port: int, readiness: ReadinessProbe, metrics: CollectorRegistry,
                 dataplane: DataplaneProbe | None = None, journal: JournalProbe | None = None) -> None:
        probe, registry = readiness, metrics

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    ready, reason, details = probe()
                    body = json.dumps({"ready": ready, "reason": reason, **details}, default=str).encode()
                    self._send(200 if ready else 503, body + b"\n", "application/json")
                elif path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/dataplane" and dataplane is not None:
                    try:
                        view = dataplane()
                    except Exception as exc:  # noqa: BLE001 - reported to the caller, not fatal
                        view, error = None, f"{type(exc).__name__}: {exc}"
                    else:
                        error = "no backend yet"
                    body = json.dumps(view if view is not None else {"error": error}).encode() + b"\n"
                    self._send(200 if view is not None else 503, body, "application/json")
                elif path == "/journal" and journal is not None:
                    from urllib.parse import parse_qs

                    q = parse_qs(self.path.split("?", 1)[1] if "?" in self.path else "")
                    try:
                        lines = int(q.get("lines", ["50"])[0])
                        text = journal(q.get("unit", [""])[0], lines)
                    except ValueError:
                        self._send(400, b"lines: expected a number\n", "text/plain")
                        return
                    except Exception as exc:  # noqa: BLE001 - reported to the caller
                        self._send(503, f"{type(exc).__name__}: {exc}\n".encode(), "text/plain")
                        return
                    if text is None:
                        self._send(404, b"no such unit on this machine\n", "text/plain")
                    else:
                        self._send(200, text.encode(), "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("http: " + fmt, *args)

        server_class = _Server6 if ":" in address else ThreadingHTTPServer
        self._server = server_class((address, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="healthz", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
