"""kiln.proc, the one process funnel: :func:`kiln.proc.start` for servers (the embedded
docker-registry) keeps run's conventions (which, masking, the error class)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kiln import console, proc
from kiln.errors import RegistryTransientError, ToolMissingError
from kiln.local_registry import RegistryServer


def test_start_of_a_missing_tool_names_its_package(tmp_path: Path) -> None:
    with pytest.raises(ToolMissingError, match="docker-registry-that-is-not-there not found on PATH") as err:
        proc.start(["docker-registry-that-is-not-there"], log=tmp_path / "log")
    assert not (tmp_path / "log").exists()
    assert "apt-get install" in (err.value.hint or "")


def test_registry_server_without_its_binary_writes_nothing(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    server = RegistryServer(tmp_path / "registry")
    with pytest.raises(ToolMissingError, match="apt-get install docker-registry|docker-registry"):
        server.start()
    assert not (tmp_path / "registry").exists()


@pytest.mark.tool
def test_start_runs_in_the_background_logs_and_stops(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("earlier run\n")
    started = proc.start(["sh", "-c", "echo ready; exec sleep 30"], log=log, detach=True)
    try:
        assert started.poll() is None and started.pid > 0
        for _ in range(250):
            if "ready" in log.read_text():
                break
            time.sleep(0.02)
        assert log.read_text() == "earlier run\nready\n"  # appended, stdout and stderr
    finally:
        code = started.stop(timeout=5)
    assert code is not None and code < 0 and started.poll() == code  # SIGTERM


@pytest.mark.tool
def test_start_failure_is_masked_and_of_the_given_class(tmp_path: Path) -> None:
    tool = tmp_path / "bad-interpreter"
    tool.write_text("#!/nonexistent/interpreter\n")  # found by which, but exec fails
    tool.chmod(0o755)
    console.register_secret("s3cr3t-value")
    with pytest.raises(RegistryTransientError) as err:
        proc.start([str(tool), "--token", "s3cr3t-value"], log=tmp_path / "log",
                   error=RegistryTransientError)
    assert "could not be started" in err.value.message
    assert "s3cr3t-value" not in err.value.message
