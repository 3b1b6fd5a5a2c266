"""Real pieces for the mirror tests and benchmark: tiny images built with buildah, pushed to a
real registry, and a small HTTP proxy that can add rate-limit headers or fail a request once.

Shared by ``tests/test_mirror_real.py`` and ``benchmarks/mirror.py`` (which puts ``tests/`` on
``sys.path``).
"""

from __future__ import annotations

import http.client
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from helpers.fault_proxy import read_body

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-authorization", "proxy-authenticate", "content-length"}


@dataclass
class Images:
    """Builds and pushes small scratch images in a private buildah storage."""

    root: Path
    runroot: Path
    workdir: Path
    built: set[str] = field(default_factory=set)

    def buildah(self, *args: str) -> str:
        argv = ["buildah", "--root", str(self.root), "--runroot", str(self.runroot),
                "--storage-driver", "vfs", *args]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout.strip()

    def image(self, name: str, content: str, arch: str = "amd64", layers: int = 1) -> str:
        """A local image ``localhost/<name>`` with ``layers`` small files unique to ``content``."""
        if name in self.built:
            return f"localhost/{name}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        container = self.buildah("from", "scratch")
        try:
            for number in range(layers):
                payload = self.workdir / f"{name}-{number}.txt"
                payload.write_text(f"{content} layer {number}\n", encoding="utf-8")
                self.buildah("copy", container, str(payload), f"/data-{number}.txt")
                if number + 1 < layers:
                    self.buildah("commit", "-q", "--format", "docker", container,
                                 f"{name}-part{number}")
            self.buildah("config", "--arch", arch, "--os", "linux", container)
            self.buildah("commit", "-q", "--format", "docker", container, name)
        finally:
            self.buildah("rm", container)
        self.built.add(name)
        return f"localhost/{name}"

    def push(self, local: str, destination: str) -> None:
        """``buildah push --format v2s2`` to a plain-HTTP registry (``host:port/repo:tag``)."""
        self.buildah("push", "--format", "v2s2", "--tls-verify=false", local,
                     f"docker://{destination}")

    def push_multi(self, name: str, members: list[str], destination: str) -> None:
        """A manifest list of local images, pushed with ``manifest push --all``."""
        if name not in self.built:
            self.buildah("manifest", "create", name)
            for member in members:
                self.buildah("manifest", "add", name, f"containers-storage:{member}")
            self.built.add(name)
        self.buildah("manifest", "push", "--all", "--format", "v2s2", "--tls-verify=false",
                     name, f"docker://{destination}")


def head_digest(registry: str, repository: str, reference: str) -> str | None:
    """The digest a HEAD on ``registry/repository:reference`` reports (None on 404)."""
    conn = http.client.HTTPConnection(registry, timeout=10)
    accept = ", ".join([
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
    ])
    conn.request("HEAD", f"/v2/{repository}/manifests/{reference}", headers={"Accept": accept})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    if resp.status == 404:
        return None
    assert resp.status == 200, resp.status
    return resp.getheader("Docker-Content-Digest")


# -- a proxy in front of a registry --------------------------------------------------------------

Intercept = Callable[[str, str], tuple[int, bytes] | None]
ExtraHeaders = Callable[[str, str, int], dict[str, str]]


class RegistryProxy:
    """Forwards every request to ``upstream`` (keeping the Host header, so the registry's upload
    Locations point back at the proxy). ``intercept(method, path)`` may answer instead (e.g. a
    500 once); ``extra_headers(method, path, status)`` adds response headers (rate limits)."""

    def __init__(self, upstream: str, *, intercept: Intercept | None = None,
                 extra_headers: ExtraHeaders | None = None) -> None:
        self.upstream = upstream
        self.intercept = intercept
        self.extra_headers = extra_headers
        self.log: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

            def _body(self) -> bytes:
                return read_body(self)[0]

            def _forward(self) -> None:
                body = self._body()
                method, path = self.command, self.path
                answer = proxy.intercept(method, path) if proxy.intercept else None
                if answer is not None:
                    status, payload = answer
                    proxy._record(method, path, status)
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if method != "HEAD":
                        self.wfile.write(payload)
                    return
                # keep repeated headers (Go sends one Accept line per media type)
                headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP]
                if body or method in {"PUT", "POST", "PATCH"}:
                    headers.append(("Content-Length", str(len(body))))
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                    for key, value in headers:
                        conn.putheader(key, value)
                    conn.endheaders(body or None)
                    resp = conn.getresponse()
                    payload = resp.read()
                    response_headers = [(k, v) for k, v in resp.getheaders()
                                        if k.lower() not in _HOP]
                    status = resp.status
                finally:
                    conn.close()
                proxy._record(method, path, status)
                self.send_response(status)
                for key, value in response_headers:
                    self.send_header(key, value)
                if proxy.extra_headers is not None:
                    for key, value in proxy.extra_headers(method, path, status).items():
                        self.send_header(key, value)
                length = len(payload) if method != "HEAD" else int(
                    dict((k.lower(), v) for k, v in response_headers).get("content-length", "0")
                    or 0)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.log.append((method, path, status))

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> RegistryProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class RateLimitCounter:
    """Docker Hub's accounting, simulated: every manifest GET spends one pull; every manifest
    response (HEAD included) reports ``ratelimit-remaining``. ``refill_after_heads`` resets the
    budget to ``limit`` after that many HEADs (a window passing, without wall-clock time)."""

    def __init__(self, remaining: int, limit: int = 100,
                 refill_after_heads: int | None = None) -> None:
        self.remaining = remaining
        self.limit = limit
        self.refill_after_heads = refill_after_heads
        self.heads = 0
        self.gets = 0
        self.lock = threading.Lock()

    def __call__(self, method: str, path: str, status: int) -> dict[str, str]:
        if "/manifests/" not in path:
            return {}
        with self.lock:
            if method == "GET":
                self.gets += 1
                self.remaining = max(0, self.remaining - 1)
            elif method == "HEAD":
                self.heads += 1
                if self.refill_after_heads is not None and self.heads > self.refill_after_heads:
                    self.remaining = self.limit
            return {"ratelimit-limit": f"{self.limit};w=21600",
                    "ratelimit-remaining": f"{self.remaining};w=21600"}
