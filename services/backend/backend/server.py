"""The HTTP service: ``GET /healthz``, ``GET /api/hello?name=...``, ``GET /api/info``.

Standard library only, so the image builds offline. Configuration by environment:
``BACKEND_HOST`` (default ``0.0.0.0``) and ``BACKEND_PORT`` (default ``8080``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from backend import __version__


def hello(name: str) -> dict[str, str]:
    """The greeting payload; a name is trimmed and limited so responses stay small."""
    name = name.strip()[:64] or "world"
    return {"message": f"hello, {name}"}


def info() -> dict[str, str]:
    return {"service": "backend", "version": __version__, "python": platform.python_version(),
            "machine": platform.machine()}


class Handler(BaseHTTPRequestHandler):
    server_version = f"kiln-backend/{__version__}"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self._send(HTTPStatus.OK, {"status": "ok"})
        elif url.path == "/api/hello":
            names = parse_qs(url.query).get("name", [""])
            self._send(HTTPStatus.OK, hello(names[0]))
        elif url.path == "/api/info":
            self._send(HTTPStatus.OK, info())
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path: {url.path}"})

    def _send(self, status: HTTPStatus, payload: dict[str, str]) -> None:
        body = json.dumps(payload, sort_keys=True).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def make_server(host: str, port: int) -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), Handler)


def self_test() -> int:
    """Start the service on a free loopback port, call every endpoint, compare the answers."""
    server = make_server("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        checks = {
            "/healthz": {"status": "ok"},
            "/api/hello?name=kiln": {"message": "hello, kiln"},
        }
        for path, expected in checks.items():
            with urllib.request.urlopen(base + path, timeout=10) as response:
                got = json.load(response)
            if got != expected:
                print(f"self-test FAILED: {path} gave {got}, expected {expected}", file=sys.stderr)
                return 1
        with urllib.request.urlopen(base + "/api/info", timeout=10) as response:
            details = json.load(response)
    finally:
        server.shutdown()
        server.server_close()
    print(f"self-test ok: backend {details['version']} on Python {details['python']} "
          f"({details['machine']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="backend", description=__doc__)
    parser.add_argument("--self-test", action="store_true",
                        help="serve on a free loopback port, check every endpoint, exit")
    args = parser.parse_args(argv)
    if args.self_test:
        return self_test()
    host = os.environ.get("BACKEND_HOST", "0.0.0.0")
    port = int(os.environ.get("BACKEND_PORT", "8080"))
    server = make_server(host, port)
    print(f"backend {__version__} listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
