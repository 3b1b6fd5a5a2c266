"""Shared fixtures: real registries, isolated buildah storage, and a subprocess ban for unit tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.local_registry import RegistryServer

REPO_ROOT = Path(__file__).resolve().parent.parent


def require_tool(name: str, package: str) -> str:
    """Path of a host tool; skip locally when missing, but fail in CI (where .ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A fresh, empty plain-HTTP registry on 127.0.0.1 for one test; its access log is readable."""
    require_tool("docker-registry", "docker-registry")
    server = RegistryServer(tmp_path / "registry")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """One registry for the whole session (use distinct repository names per test)."""
    require_tool("docker-registry", "docker-registry")
    server = RegistryServer(tmp_path_factory.mktemp("shared-registry"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def buildah_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Container storage of the test session's own (``--root``/``--runroot``), not the host's.

    buildah's overlay driver leaves its mounts behind when it exits; at the end of the session
    this storage's own mounts (and only those) are dropped so pytest can remove the folder.
    """
    base = tmp_path_factory.mktemp("containers")
    storage = {"root": base / "root", "runroot": base / "runroot"}
    yield storage
    unmount_below(storage["root"])


def unmount_below(root: Path) -> None:
    """Unmount every mount point at or below ``root``, deepest first."""
    prefix = str(root)
    with open("/proc/self/mounts", encoding="utf-8") as handle:
        points = [line.split()[1] for line in handle]
    for point in sorted((p for p in points if p == prefix or p.startswith(prefix + "/")),
                        key=len, reverse=True):
        subprocess.run(["umount", point], capture_output=True, check=False)


@pytest.fixture
def no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests use this: any attempt to start a real process fails the test."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"unit test tried to run a subprocess: {args!r}")

    monkeypatch.setattr(subprocess, "run", forbidden)
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    monkeypatch.setattr(subprocess, "check_output", forbidden)
    monkeypatch.setattr(subprocess, "check_call", forbidden)
