"""A fault-injecting HTTP proxy in front of a real registry.

Each distinct request (method + path) fails its first ``failures`` attempts with a fault, then
passes through: deterministic, so every request exercises the client's retry path and the test
cannot flake. Faults: ``500``/``502``/``503``, ``429`` (with ``Retry-After``), ``drop`` (close
without answering, request not forwarded), ``drop-after`` (forwarded — it took effect — then the
answer is lost), ``truncate`` (forwarded; half the body, then close), ``403``.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Rule = Callable[[str, str, int], str | None]  # (method, path, attempt) -> fault or None


def every_request_fails(kinds: list[str], failures: int = 1) -> Rule:
    """Attempts 1..failures of every request get a fault (kinds rotate per request)."""
    order: dict[tuple[str, str], int] = {}
    lock = threading.Lock()

    def rule(method: str, path: str, attempt: int) -> str | None:
        with lock:
            index = order.setdefault((method, path), len(order))
        if attempt <= failures:
            return kinds[(index + attempt) % len(kinds)]
        return None

    return rule


@dataclass
class FaultProxy:
    upstream: str  # host:port of the real registry
    rule: Rule
    retry_after: str = "1"
    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)
    faults: list[tuple[str, str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                key = (self.command, self.path.split("?")[0])
                proxy.attempts[key] += 1
                fault = proxy.rule(self.command, key[1], proxy.attempts[key])
                if fault:
                    proxy.faults.append((fault, *key))
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault in {"500", "502", "503", "429", "403"}:
                    payload = json.dumps({"errors": [{
                        "code": "DENIED" if fault == "403" else "UNAVAILABLE",
                        "message": "injected fault"}]}).encode()
                    self.send_response(int(fault))
                    if fault == "429":
                        self.send_header("Retry-After", proxy.retry_after)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in {"connection", "keep-alive", "content-length"}}
                conn.request(self.command, self.path, body=body if body or length else None,
                             headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if fault == "drop-after":
                    self.close_connection = True
                    return
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in {"connection", "transfer-encoding", "content-length",
                                            "keep-alive"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault == "truncate" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _handle  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
