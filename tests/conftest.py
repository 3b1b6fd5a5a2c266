"""Shared fixtures: the test tiers' guard, real registries, isolated buildah storage.

Tiers (docs/architecture.md): an unmarked test is a unit test and must not start a process or
open a socket, so the unit tier runs anywhere, fast and in any order; ``tool`` tests run host
programs (cpp, git, hadolint, kiln/invoke/nox processes) or talk to a loopback server; ``real``
tests go through the container stack (buildah, skopeo, docker-registry, qemu, gitlab-ci-local)
and imply ``tool``. ``pytest -m "not tool"`` is the unit tier alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from kiln import console
from kiln.local_registry import RegistryServer

REPO_ROOT = Path(__file__).resolve().parent.parent

# Markers that let a test leave the unit tier.
OUTSIDE_UNIT_TIER = ("tool", "real")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``real`` implies ``tool``, so ``-m "not tool"`` selects exactly the unit tier."""
    for item in items:
        if item.get_closest_marker("real") and not item.get_closest_marker("tool"):
            item.add_marker(pytest.mark.tool)


def _refuse(what: str) -> object:
    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError(
            f"unit test tried to {what}: {args[:2]!r}; mark the test `tool` (host program, "
            "loopback server) or `real` (container stack), see docs/architecture.md")

    return refused


@pytest.fixture(autouse=True)
def unit_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unmarked tests may not start processes or connect sockets (loopback included)."""
    if any(request.node.get_closest_marker(name) for name in OUTSIDE_UNIT_TIER):
        return
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse("run a subprocess"))
    monkeypatch.setattr(os, "system", _refuse("run a shell command"))
    monkeypatch.setattr(os, "posix_spawn", _refuse("spawn a process"))
    monkeypatch.setattr(os, "posix_spawnp", _refuse("spawn a process"))
    monkeypatch.setattr(socket.socket, "connect", _refuse("open a network connection"))
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("open a network connection"))


@pytest.fixture(autouse=True)
def fresh_console() -> Iterator[None]:
    """Every test starts with the console's state as a new process has it (no masks, no summary)."""
    _reset_console()
    yield
    _reset_console()


def _reset_console() -> None:
    console.reset()  # a fresh Console: no registered secrets, no summary, no open sections


def skip_or_fail(message: str) -> NoReturn:
    """The one way a test steps aside: skipped on a workstation, failed in CI (``CI`` set),
    where ``ci/setup-host.sh`` installs every tool and the job runs as root, so nothing a test
    needs can be missing there and a skip would only hide a test (tests/test_claims.py keeps
    every other ``pytest.skip`` out of the suite)."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: a test may not skip in CI)")
    pytest.skip(message)


def require_tool(name: str, package: str) -> str:
    """Path of a host tool; skip locally when missing, but fail in CI (where .ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} not installed (apt-get install {package})")
    return path


def require_root(why: str) -> None:
    """Root, or: skip locally, fail in CI (CI jobs run as root, see ci/setup-host.sh)."""
    if os.geteuid() != 0:
        skip_or_fail(f"{why} (not root)")


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
