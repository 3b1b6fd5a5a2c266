"""The backend's own tests: the HTTP API over a real socket, no containers."""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend import server  # noqa: E402


@pytest.fixture
def base_url() -> Iterator[str]:
    httpd = server.make_server("127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def get(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_healthz(base_url: str) -> None:
    assert get(base_url + "/healthz") == (200, {"status": "ok"})


def test_hello_uses_the_name_and_defaults_to_world(base_url: str) -> None:
    assert get(base_url + "/api/hello?name=Ada") == (200, {"message": "hello, Ada"})
    assert get(base_url + "/api/hello") == (200, {"message": "hello, world"})
    assert get(base_url + "/api/hello?name=%20%20") == (200, {"message": "hello, world"})


def test_hello_limits_the_name() -> None:
    assert server.hello("x" * 500) == {"message": "hello, " + "x" * 64}


def test_unknown_path_is_404(base_url: str) -> None:
    status, body = get(base_url + "/nope")
    assert status == 404 and body == {"error": "no such path: /nope"}


def test_info_names_the_service(base_url: str) -> None:
    status, body = get(base_url + "/api/info")
    assert status == 200 and body["service"] == "backend" and body["version"] == "0.1.0"


def test_self_test_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert server.main(["--self-test"]) == 0
    assert "self-test ok" in capsys.readouterr().out
