"""A fault-injecting HTTP proxy in front of a real registry.

Each distinct request (method + path) fails its first ``failures`` attempts with a fault, then
passes through: deterministic, so every request exercises the client's retry path and the test
cannot flake. Faults: ``500``/``502``/``503``, ``429`` (with ``Retry-After``), ``drop`` (close
without answering, request not forwarded), ``drop-after`` (forwarded — it took effect — then the
answer is lost), ``truncate`` (forwarded; half the body, then close; an answer with no body
reaches the client whole and is counted in ``harmless``), ``403``, ``slow`` (answered correctly
after a delay).

Faults that model a registry (or a proxy) that misbehaves rather than fails:

* ``hang`` (the request is read, never answered) and ``hang-after`` (forwarded, it took effect,
  never answered): a registry that accepts a PUT and goes silent;
* ``delete-keeps-tag`` (a manifest DELETE): forwarded; if it succeeded, the tags that pointed at
  the digest are put back in the registry's storage (``storage``, its data folder) and the
  answer is 500 — distribution's half-done delete, where the manifest is gone but the tag stays
  listed (a retried DELETE then gets the registry's own 404);
* ``redirect``: 307 to the same path on ``redirect_to`` (another host);
* ``huge`` (a 200 MB body with its Content-Length) and ``huge-chunked`` (chunked, no length:
  the client must stop reading by itself);
* ``corrupt``: forwarded, one byte of the body changed, headers (digest) kept;
* ``link-loop``: forwarded, with a ``Link: rel="next"`` pointing back at the same page.

:func:`seeded_faults` is the other rule: each attempt of each request fails with probability
``rate``, decided by a hash of (seed, method, path, attempt), so a run is reproducible whatever
the thread interleaving; every request gets at most ``max_faults`` faults, so reruns converge.
Request bodies may be chunked (Go clients such as skopeo and buildah stream uploads that way).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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


_UPLOAD = re.compile(r"/blobs/uploads/[^/?]+")


def request_key(path: str) -> str:
    """``path`` without the query and with upload session ids replaced (they are random)."""
    return _UPLOAD.sub("/blobs/uploads/*", path.split("?")[0])


def seeded_faults(rate: float, seed: int, kinds: list[str], *, max_faults: int = 2,
                  slow_seconds: float = 0.2) -> Rule:
    """Attempt ``n`` of a request fails with probability ``rate`` (deterministic per seed);
    a request is failed at most ``max_faults`` times in all. ``slow`` sleeps, then passes.

    Requests are counted by :func:`request_key`, so the random upload session ids of retried
    uploads do not make every retry a "first attempt"."""
    seen: dict[tuple[str, str], int] = {}
    counts: dict[tuple[str, str], int] = {}
    lock = threading.Lock()

    def rule(method: str, path: str, _attempt: int) -> str | None:
        key = (method, request_key(path))
        with lock:
            seen[key] = attempt = seen.get(key, 0) + 1
        digest = hashlib.sha256(f"{seed}|{key[0]}|{key[1]}|{attempt}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        if draw >= rate:
            return None
        with lock:
            if counts.get(key, 0) >= max_faults:
                return None
            counts[key] = counts.get(key, 0) + 1
        kind = kinds[digest[8] % len(kinds)]
        if kind == "slow":
            time.sleep(slow_seconds)
        return kind

    return rule


def read_body(handler: BaseHTTPRequestHandler) -> tuple[bytes, bool]:
    """The request body (de-chunked) and whether the request carried one."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        return b"".join(chunks), True
    length = int(handler.headers.get("Content-Length") or 0)
    return (handler.rfile.read(length) if length else b""), "Content-Length" in handler.headers


class _QuietServer(ThreadingHTTPServer):
    """Clients hang up on injected faults (that is the point): no tracebacks for that."""

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@dataclass
class FaultProxy:
    upstream: str  # host:port of the real registry
    rule: Rule
    retry_after: str = "1"
    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)
    faults: list[tuple[str, str, str]] = field(default_factory=list)
    # faults that could not do anything: a ``truncate`` of an answer with no body to cut (a HEAD,
    # a 201/202 to a PUT or DELETE) reaches the client whole, so nothing needs to be sent again
    harmless: Counter[tuple[str, str]] = field(default_factory=Counter)
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    storage: Path | None = None  # the registry's data folder (for ``delete-keeps-tag``)
    redirect_to: str = ""  # host:port a ``redirect`` sends the client to
    huge_size: int = 200 * 1024 * 1024
    huge_sent: int = 0  # bytes of ``huge`` answers written before the client hung up
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                body, has_body = read_body(self)
                key = (self.command, self.path.split("?")[0])
                with proxy.lock:
                    proxy.attempts[key] += 1
                    attempt = proxy.attempts[key]
                fault = proxy.rule(self.command, key[1], attempt)
                if fault:
                    proxy.faults.append((fault, *key))
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "hang":
                    proxy.stopping.wait(600)
                    self.close_connection = True
                    return
                if fault == "redirect":
                    self.send_response(307)
                    self.send_header("Location", f"http://{proxy.redirect_to}{self.path}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault in {"huge", "huge-chunked"}:
                    self._huge(chunked=fault == "huge-chunked")
                    return
                restore: list[tuple[Path, bytes]] = []
                if fault == "delete-keeps-tag":
                    restore = proxy.tag_links_to(self.path)
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
                           if k.lower() not in {"connection", "keep-alive", "content-length",
                                                "transfer-encoding"}}
                if has_body or self.command in {"PUT", "POST", "PATCH"}:
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body if has_body else None,
                             headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if fault == "drop-after":
                    self.close_connection = True
                    return
                if fault == "hang-after":
                    proxy.stopping.wait(600)
                    self.close_connection = True
                    return
                if fault == "delete-keeps-tag" and 200 <= resp.status < 300:
                    for link, digest in restore:  # the tag comes back, its manifest does not
                        link.parent.mkdir(parents=True, exist_ok=True)
                        link.write_bytes(digest)
                    payload = json.dumps({"errors": [{"code": "UNKNOWN", "message": (
                        "unknown error: injected: manifest deleted, untagging failed")}]}).encode()
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "corrupt" and data:
                    data = data[:-2] + bytes([data[-2] ^ 0x20]) + data[-1:]
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in {"connection", "transfer-encoding", "content-length",
                                            "keep-alive"}:
                        self.send_header(name, value)
                if fault == "link-loop":
                    self.send_header("Link", f'<{self.path}>; rel="next"')
                if fault == "truncate" and (self.command == "HEAD" or len(data) <= 1):
                    with proxy.lock:
                        proxy.harmless[key] += 1
                if self.command == "HEAD":  # the size of what a GET would return
                    self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "truncate" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def _huge(self, *, chunked: bool) -> None:
                block = b" " * 65536
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(proxy.huge_size))
                self.end_headers()
                self.close_connection = True
                if self.command == "HEAD":
                    return
                try:
                    for _ in range(proxy.huge_size // len(block)):
                        if chunked:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                        else:
                            self.wfile.write(block)
                        with proxy.lock:
                            proxy.huge_sent += len(block)
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass  # the client stopped reading: that is the point

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _handle  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def tag_links_to(self, path: str) -> list[tuple[Path, bytes]]:
        """The tag link files (and their content) that point at the digest a manifest DELETE
        of ``path`` (``/v2/<repo>/manifests/<digest>``) removes, read from ``storage``."""
        match = re.match(r"^/v2/(.+)/manifests/(sha256:[0-9a-f]{64})", path)
        if self.storage is None or match is None:
            return []
        tags = (self.storage / "docker/registry/v2/repositories" / match[1] / "_manifests"
                / "tags")
        found = []
        for link in tags.glob("*/current/link"):
            content = link.read_bytes()
            if content.decode().strip() == match[2]:
                found.append((link, content))
        return found

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
