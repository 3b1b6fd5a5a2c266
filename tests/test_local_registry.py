"""The embedded registry and the access-log parser, against the real docker-registry."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from conftest import require_tool
from kiln.local_registry import (
    local_registry_status,
    parse_access_log,
    start_local_registry,
    stop_local_registry,
)


def test_parse_access_log_counts_kinds() -> None:
    log = "\n".join(
        [
            'time="x" level=info msg="response completed" http.request.method=GET',
            '127.0.0.1 - - [28/Nov/2026:12:10:39 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl"',
            '127.0.0.1 - - [28/Nov/2026:12:10:39 +0000] "HEAD /v2/a/b/manifests/p-1 HTTP/1.1" 200 0 "" "x"',
            '127.0.0.1 - - [28/Nov/2026:12:10:39 +0000] "GET /v2/a/blobs/sha256:ab HTTP/1.1" 200 1234 "" "x"',
            '127.0.0.1 - - [28/Nov/2026:12:10:39 +0000] "POST /v2/a/blobs/uploads/ HTTP/1.1" 202 - "" "x"',
            '127.0.0.1 - - [28/Nov/2026:12:10:39 +0000] "GET /v2/a/tags/list HTTP/1.1" 200 40 "" "x"',
        ]
    )
    records = parse_access_log(log)
    assert [r.kind for r in records] == ["base", "manifest", "blob", "upload", "tags"]
    assert records[2].bytes == 1234 and records[3].bytes == 0
    assert records[1].method == "HEAD" and records[1].status == 200


@pytest.mark.real
def test_registry_fixture_logs_requests(registry) -> None:
    mark = registry.log_mark()
    with urllib.request.urlopen(f"http://{registry.address}/v2/_catalog") as response:
        assert json.load(response) == {"repositories": []}
    records = registry.requests_since(mark)
    assert [(r.method, r.kind, r.status) for r in records] == [("GET", "catalog", 200)]


@pytest.mark.real
def test_embedded_registry_start_reuse_stop(tmp_path: Path) -> None:
    require_tool("docker-registry", "docker-registry")
    state_dir = tmp_path / ".kiln"
    assert local_registry_status(state_dir) is None
    first = start_local_registry(state_dir)
    try:
        assert first.address.startswith("127.0.0.1:")
        again = start_local_registry(state_dir)
        assert again == first  # reused, not a second process
        assert local_registry_status(state_dir) == first
        assert (state_dir / "registry" / "data").is_dir()
    finally:
        assert stop_local_registry(state_dir) is True
    assert local_registry_status(state_dir) is None
    assert stop_local_registry(state_dir) is False
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{first.address}/v2/", timeout=2)
