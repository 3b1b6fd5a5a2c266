"""``--dry-run`` of the tasks whose dry run tests/test_dry_run.py checks least: binfmt-register,
registry-stop with a registry running, lint-refs with something to report. Each prints its
plan, and the thing it would change is checked to be unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import require_tool
from helpers.run import run_kiln
from kiln import qemu
from kiln.arch import SUPPORTED_ARCHES, host_arch
from kiln.local_registry import local_registry_status

pytestmark = pytest.mark.real


def _project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("[tool.kiln]\n")
    return root


def _binfmt_entries() -> dict[str, str]:
    """The kernel's qemu handler entries, name -> content (enabled, interpreter, flags)."""
    folder = Path("/proc/sys/fs/binfmt_misc")
    return {p.name: p.read_text() for p in sorted(folder.glob("qemu-*"))} if folder.is_dir() else {}


def test_binfmt_register_dry_run_plans_each_foreign_arch_and_registers_nothing(
        tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    before = _binfmt_entries()
    arches = " ".join(SUPPORTED_ARCHES)
    done = run_kiln(project, "binfmt-register", "--arch", arches, "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    foreign = [a for a in SUPPORTED_ARCHES if a != host_arch()]
    expected_plan = []
    for arch in foreign:
        entry = qemu.read_entry(arch)
        state = "registered" if entry and entry.enabled and entry.fix_binary else "register"
        conf = qemu.BINFMT_CONF_DIR / (qemu.handler_name(arch) + ".conf")
        expected_plan.append(f"{qemu.handler_name(arch)}: {state} ({conf})")
    assert document["dry_run"] is True and document["plan"] == expected_plan
    assert [r["image"] for r in document["results"]] == [qemu.handler_name(a) for a in foreign]
    assert qemu.handler_name(host_arch()) not in done.stdout  # the host needs no handler
    assert _binfmt_entries() == before


def test_registry_stop_dry_run_with_a_registry_running_names_it_and_leaves_it_running(
        tmp_path: Path) -> None:
    require_tool("docker-registry", "docker-registry")
    project = _project(tmp_path / "p")
    started = run_kiln(project, "registry-start")
    assert started.returncode == 0, started.stderr
    try:
        state = local_registry_status(project / ".kiln")
        assert state is not None
        done = run_kiln(project, "registry-stop", "--dry-run")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == (f"stop pid {state.pid} (registry at {state.address}; "
                                       "data stays)")
        assert local_registry_status(project / ".kiln") == state  # still running, same pid
        status = run_kiln(project, "registry-status")
        assert status.returncode == 0 and f"running at {state.address}" in status.stdout
    finally:
        stopped = run_kiln(project, "registry-stop")
    assert stopped.returncode == 0, stopped.stderr
    assert local_registry_status(project / ".kiln") is None


def test_lint_refs_dry_run_reports_what_the_real_run_reports_and_writes_nothing(
        tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    (project / "builds").mkdir()
    (project / "builds" / "app.in").write_text(
        "ARG UPSTREAM_REGISTRY\nFROM ${UPSTREAM_REGISTRY}/library/python:3\n"
        "FROM docker.io/library/debian:bookworm\nRUN true\n")
    (project / "mirrors.yml").write_text("images:\n  - docker.io/library/alpine:3\n")
    files = sorted(p.relative_to(project) for p in project.rglob("*"))
    dry = run_kiln(project, "lint-refs", "--dry-run")
    real = run_kiln(project, "lint-refs")
    assert dry.returncode == real.returncode == 2, dry.stderr
    assert dry.stderr == real.stderr
    assert "builds/app.in:3: error: docker.io/library/debian:bookworm pulls from Docker Hub" in (
        dry.stderr)
    assert "${UPSTREAM_REGISTRY}/library/debian:bookworm" in dry.stderr
    assert "app.in:2" not in dry.stderr  # the mirrored reference passes
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == files
