"""Parity: the CI jobs call the same nox sessions, with the same arguments, as a developer does.

gitlab-ci-local runs the real .gitlab-ci.yml (shell executor) for a default-branch, a
merge-request (with the manual deploy-mr and stop-mr jobs) and a tag pipeline, with a recording
``nox`` first on PATH (it runs the real nox) and a recording ``invoke`` that stands in for the
tasks (this test is about the call graph; test_gitlab_ci_local runs the real tasks). Then every
recorded ``nox`` command is replayed the way the README tells a developer to type it
(``IMAGE_NAME=... nox -s <session>``, no CI variables), and the invoke calls must be identical.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import skip_or_fail
from helpers.ci_shims import (
    DEFAULT_BRANCH,
    MERGE_REQUEST,
    TAG,
    PipelineKind,
    Shims,
    gitlab_ci_local,
    make_shims,
    make_test_repo,
    passed_jobs,
    scrubbed_env,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
# Variables a developer sets by hand to say what to build (everything else comes from CI or
# kiln's defaults).
DEVELOPER_INPUTS = ("IMAGE_NAME", "IMAGE_ARCH", "IMAGE_ARCHES")
# The test stage: recorded, answered without running (lint and tests have their own tests).
ANSWERS = '{"nox": {"-s lint": {"rc": 0}, "-s tests": {"rc": 0}}}'

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    for tool in ("gitlab-ci-local", "rsync", "git", "nox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not installed (bash ci/setup-host.sh installs it)")
    base = tmp_path_factory.mktemp("parity")
    repo = make_test_repo(base / "repo")
    shims = make_shims(base, fake=("invoke",), passthrough=("nox",))
    env = scrubbed_env(repo, shims)
    env["KILN_SHIM_ANSWERS"] = ANSWERS
    variables = {"CI_REGISTRY": "registry.example.com",
                 "CI_REGISTRY_IMAGE": "registry.example.com/kiln-test/kiln"}
    runs: list[tuple[PipelineKind, subprocess.CompletedProcess[str]]] = []

    def run(kind: PipelineKind, pipeline: str, **kw: Any) -> None:
        result = gitlab_ci_local(repo, kind, pipeline, variables, env=env, **kw)
        assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
        runs.append((kind, result))

    run(DEFAULT_BRANCH, "201")
    run(MERGE_REQUEST, "202", manual=("deploy-mr-busybox",))
    run(MERGE_REQUEST, "202", jobs=("stop-mr-busybox",))
    run(TAG, "203")
    expanded = yaml.safe_load((repo / ".gitlab-ci-local" / "expanded-gitlab-ci.yml").read_text())
    return {"repo": repo, "shims": shims, "runs": runs, "expanded": expanded, "env": env}


def _ci_nox_calls(shims: Shims) -> list[dict[str, Any]]:
    return [c for c in shims.calls("nox") if c["job"]]


def test_every_job_that_ran_called_exactly_its_nox_session(ci_run: dict[str, Any]) -> None:
    calls = _ci_nox_calls(ci_run["shims"])
    ran = [job for _, result in ci_run["runs"] for job in passed_jobs(result.stdout)]
    assert sorted(c["job"] for c in calls) == sorted(ran)
    for call in calls:
        base = re.sub(r": \[.*\]$", "", call["job"])  # matrix jobs: "publish-busybox: [arm64]"
        script = ci_run["expanded"][base]["script"]
        assert script == ["nox -s " + call["argv"][1]], (call["job"], script)
        assert call["argv"][0] == "-s" and len(call["argv"]) == 2


def test_the_pipelines_ran_the_expected_jobs(ci_run: dict[str, Any]) -> None:
    by_kind: dict[str, set[str]] = {}
    for kind, result in ci_run["runs"]:
        by_kind.setdefault(kind.name, set()).update(passed_jobs(result.stdout))
    busybox = {"publish-busybox: [amd64]", "publish-busybox: [arm64]", "manifest-busybox",
               "lint", "tests", "tag-busybox"}
    assert by_kind["default-branch"] == busybox | {"deploy-production-busybox"}
    assert by_kind["merge-request"] == busybox | {"deploy-mr-busybox", "stop-mr-busybox"}
    assert by_kind["tag"] == busybox


def test_ci_and_developer_calls_are_the_same_task_graph(ci_run: dict[str, Any]) -> None:
    shims: Shims = ci_run["shims"]
    repo: Path = ci_run["repo"]
    ci_calls = _ci_nox_calls(shims)
    invoke_by_job: dict[tuple[str, str], list[list[str]]] = {}
    for call in shims.calls("invoke"):
        key = (call["job"], call["env"]["CI_PIPELINE_ID"])
        invoke_by_job.setdefault(key, []).append(call["argv"])
    checked = 0
    for call in ci_calls:
        if call["argv"][1] in {"lint", "tests"}:
            continue
        developer_env = {k: v for k, v in call["env"].items() if k in DEVELOPER_INPUTS and v}
        # What the README tells a developer to type: IMAGE_...=... nox -s <session>
        local_env = scrubbed_env(repo, shims)
        local_env.update(developer_env)
        local_env.pop("CI_JOB_NAME", None)
        shims_before = len(shims.calls("invoke"))
        result = subprocess.run(["nox", *call["argv"]], cwd=repo, env=local_env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        local = [c for c in shims.calls("invoke")[shims_before:] if c["job"] is None]
        key = (call["job"], call["env"]["CI_PIPELINE_ID"])
        assert [c["argv"] for c in local] == invoke_by_job[key], key
        for c in local:
            for name in DEVELOPER_INPUTS:
                assert c["env"][name] == call["env"][name] or (
                    not c["env"][name] and not call["env"][name]
                ), (call["job"], name)
        checked += 1
    assert checked >= 14


def test_sessions_used_by_ci_are_listed_and_documented(ci_run: dict[str, Any]) -> None:
    used = {c["argv"][1] for c in _ci_nox_calls(ci_run["shims"])}
    assert {"publish", "manifest", "tag", "deploy-production", "deploy-mr", "stop-mr"} <= used
    listed = subprocess.run(["nox", "-l"], cwd=ci_run["repo"], env=ci_run["env"],
                            capture_output=True, text=True, check=True).stdout
    assert used <= set(re.findall(r"^[*-] (\S+) ->", listed, re.M))
    readme = REPO_ROOT / "README.md"
    if not readme.exists():
        skip_or_fail("README.md not written yet")
    text = readme.read_text(encoding="utf-8")
    missing = [s for s in sorted(used) if f"nox -s {s}" not in text]
    assert not missing, f"README does not show the local command for: {missing}"
