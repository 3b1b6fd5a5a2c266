"""The real .gitlab-ci.yml under gitlab-ci-local (shell executor), against a real registry.

A copy of this repository with one change to builds/busybox.in over its fake origin/main, so the
CHANGES rules select only busybox's jobs (amd64 + arm64 builds through buildah and qemu, the
manifest job, tag, deploy). The test stage is the real `nox -s tests` job, pointed by
PYTEST_ADDOPTS at one cheap test (or at a test that fails, to simulate a failing test stage);
the lint job is switched off through gitlab-ci-local's own overlay file (.gitlab-ci-local.yml),
the only thing this test changes about the pipeline. Jobs share the test session's buildah
storage. After each pipeline the registry must hold exactly the tags of docs/tags.md.

Known gitlab-ci-local 4.73.0 limitation: it expands the rules:changes of all instances of one
parallel:matrix job in place, with the first instance's variables, so a change that only
concerns a later matrix entry (python, backend) is not seen there; GitLab expands each job's own
variables. The scenarios here change busybox, whose jobs are not a CHANGES matrix.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import require_tool
from helpers.ci_shims import (
    DEFAULT_BRANCH,
    MERGE_REQUEST,
    TAG,
    PipelineKind,
    ensure_binfmt,
    failed_jobs,
    gitlab_ci_local,
    make_test_repo,
    passed_jobs,
    scrubbed_env,
    seed_busybox,
)
from kiln.local_registry import RegistryServer
from kiln.registry.client import RegistryClient

pytestmark = pytest.mark.real

FEATURE_BRANCH = PipelineKind(
    "feature-branch", (("CI_COMMIT_BRANCH", "feature"), ("CI_COMMIT_REF_NAME", "feature"))
)
SCHEDULE = PipelineKind("schedule", (("CI_PIPELINE_SOURCE", "schedule"),))

GCL_VERSION = "4.73.0"
CHEAP_TESTS = "-q -p no:cacheprovider tests/test_ci_schema.py -k typo_in_hidden"
FAILING_TEST = "tests/test_simulated_failure.py"
ARCHES = ("amd64", "arm64")


@pytest.fixture(scope="module")
def gcl_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    require_tool("docker-registry", "docker-registry")
    server = RegistryServer(tmp_path_factory.mktemp("gcl-registry"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ci_repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The repository copy gitlab-ci-local runs, and the environment it runs in."""
    for tool, package in (("gitlab-ci-local", "npm install -g gitlab-ci-local@" + GCL_VERSION),
                          ("rsync", "rsync"), ("git", "git"), ("nox", "pip install nox")):
        require_tool(tool, package)
    version = subprocess.run(["gitlab-ci-local", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == GCL_VERSION, version.stdout
    repo = make_test_repo(tmp_path_factory.mktemp("gcl") / "repo")
    # The test stage, controllable: a failing test for the failing-stage scenario (untracked,
    # so it does not count as a change for rules:changes) ...
    (repo / FAILING_TEST).write_text(
        "def test_simulated_failure():\n    assert False, 'simulated failing test stage'\n"
    )
    # ... and no lint job (it has its own test; here it would only cost time).
    (repo / ".gitlab-ci-local.yml").write_text("lint:\n  rules:\n    - when: never\n")
    return {"repo": repo, "env": scrubbed_env(repo)}


@pytest.fixture(scope="module")
def pipeline_repo(ci_repo: dict[str, Any], gcl_registry: RegistryServer,
                  buildah_storage: dict[str, Path]) -> dict[str, Any]:
    """ci_repo plus a registry holding the offline upstream busybox, and the CI variables."""
    for tool in ("buildah", "skopeo"):
        require_tool(tool, tool)
    ensure_binfmt("arm64")
    upstream = seed_busybox(ci_repo["repo"], gcl_registry.address, buildah_storage)
    variables = {
        "CI_REGISTRY": gcl_registry.address,
        "KILN_UPSTREAM_REGISTRY": upstream,
        "KILN_STORAGE_ROOT": str(buildah_storage["root"]),
        "KILN_STORAGE_RUNROOT": str(buildah_storage["runroot"]),
        "PYTEST_ADDOPTS": CHEAP_TESTS,
    }
    return {**ci_repo, "variables": variables, "registry": gcl_registry}


def _run(setup: dict[str, Any], kind: PipelineKind, pipeline: str, project: str,
         **kw: Any) -> subprocess.CompletedProcess[str]:
    registry: RegistryServer = setup["registry"]
    variables = dict(setup["variables"])
    variables["CI_REGISTRY_IMAGE"] = f"{registry.address}/{project}"
    variables.update(kw.pop("variables", {}))
    # One job at a time: the jobs share one buildah storage here (on GitLab each job has its
    # own), and concurrent pulls of one multi-arch upstream tag for two architectures into one
    # storage race for its name ("locating pulled image ...: image not known").
    return gitlab_ci_local(setup["repo"], kind, pipeline, variables, env=setup["env"],
                           concurrency=1, **kw)


def _catalog(registry: RegistryServer) -> list[str]:
    with urllib.request.urlopen(f"http://{registry.address}/v2/_catalog?n=1000") as resp:
        repositories: list[str] = json.load(resp)["repositories"]
    return repositories


def _state(registry: RegistryServer, project: str) -> dict[str, dict[str, str]]:
    """repository -> {tag: digest} for every repository of the project."""
    state: dict[str, dict[str, str]] = {}
    with RegistryClient(registry.address) as client:
        for repo in _catalog(registry):
            if not repo.startswith(project + "/"):
                continue
            tags = {}
            for tag in client.list_tags(repo):
                if tag.startswith("k-"):
                    continue  # the input-key tags (docs/tags.md): tests/test_graph_real.py
                info = client.head_manifest(repo, tag)
                assert info is not None
                tags[tag] = info.digest
            if tags:
                state[repo.removeprefix(project + "/")] = tags
    return state


def _assert_multiarch(registry: RegistryServer, repository: str, pipeline: str,
                      tags: dict[str, str]) -> None:
    """p-<id> is an index whose children are exactly the per-arch images p-<id>-<arch>."""
    with RegistryClient(registry.address) as client:
        index = client.get_manifest(repository, f"p-{pipeline}")
    assert index.is_index
    children = {
        m["platform"]["architecture"]: m["digest"] for m in json.loads(index.body)["manifests"]
    }
    assert children == {arch: tags[f"p-{pipeline}-{arch}"] for arch in ARCHES}


def _explain(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stdout + result.stderr)[-8000:]


BUILD = {"publish-busybox: [amd64]", "publish-busybox: [arm64]", "manifest-busybox"}
TEST_STAGE = {"tests"}


def test_default_branch_pipeline(pipeline_repo: dict[str, Any]) -> None:
    result = _run(pipeline_repo, DEFAULT_BRANCH, "301", "main-ok/kiln")
    assert result.returncode == 0, _explain(result)
    assert set(passed_jobs(result.stdout)) == (
        BUILD | TEST_STAGE | {"tag-busybox", "deploy-production-busybox"}
    )
    state = _state(pipeline_repo["registry"], "main-ok/kiln")
    assert list(state) == ["busybox"], "only the changed image is built"
    tags = state["busybox"]
    assert set(tags) == {"p-301-amd64", "p-301-arm64", "p-301", "g-301", "latest", "production"}
    _assert_multiarch(pipeline_repo["registry"], "main-ok/kiln/busybox", "301", tags)
    assert tags["g-301"] == tags["latest"] == tags["production"] == tags["p-301"]


def test_failing_test_stage_keeps_only_pipeline_tags(pipeline_repo: dict[str, Any]) -> None:
    result = _run(pipeline_repo, DEFAULT_BRANCH, "302", "main-fail/kiln",
                  variables={"PYTEST_ADDOPTS": f"-q -p no:cacheprovider {FAILING_TEST}"})
    assert result.returncode != 0
    assert failed_jobs(result.stdout) == ["tests"], _explain(result)
    assert set(passed_jobs(result.stdout)) == BUILD
    assert "simulated failing test stage" in (
        pipeline_repo["repo"] / ".gitlab-ci-local" / "output" / "tests.log"
    ).read_text()
    tags = _state(pipeline_repo["registry"], "main-fail/kiln")["busybox"]
    assert set(tags) == {"p-302-amd64", "p-302-arm64", "p-302"}


def test_merge_request_pipeline_with_deploy_and_stop(pipeline_repo: dict[str, Any]) -> None:
    registry = pipeline_repo["registry"]
    result = _run(pipeline_repo, MERGE_REQUEST, "303", "mr/kiln", manual=("deploy-mr-busybox",))
    assert result.returncode == 0, _explain(result)
    assert set(passed_jobs(result.stdout)) == (
        BUILD | TEST_STAGE | {"tag-busybox", "deploy-mr-busybox"}
    ), "deploy-production is manual in a merge request and was not started"
    tags = _state(registry, "mr/kiln")["busybox"]
    assert set(tags) == {"p-303-amd64", "p-303-arm64", "p-303", "g-303", "mr-7"}
    assert tags["mr-7"] == tags["g-303"] == tags["p-303"]

    stop = _run(pipeline_repo, MERGE_REQUEST, "303", "mr/kiln", jobs=("stop-mr-busybox",))
    assert stop.returncode == 0, _explain(stop)
    assert passed_jobs(stop.stdout) == ["stop-mr-busybox"]
    after = _state(registry, "mr/kiln")["busybox"]
    assert after == {k: v for k, v in tags.items() if k != "mr-7"}, "only mr-7 is gone"


def test_tag_pipeline(pipeline_repo: dict[str, Any]) -> None:
    result = _run(pipeline_repo, TAG, "304", "tag/kiln")
    assert result.returncode == 0, _explain(result)
    assert set(passed_jobs(result.stdout)) == BUILD | TEST_STAGE | {"tag-busybox"}
    tags = _state(pipeline_repo["registry"], "tag/kiln")["busybox"]
    assert set(tags) == {"p-304-amd64", "p-304-arm64", "p-304", "g-304", "v1.0.0"}
    assert tags["v1.0.0"] == tags["p-304"]


def test_rules_select_jobs_per_pipeline_kind(ci_repo: dict[str, Any]) -> None:
    """The rules alone (gitlab-ci-local --list-json): when each busybox job runs, per kind."""
    expected = {
        DEFAULT_BRANCH: {"deploy-production-busybox": ("on_success", False),
                         "deploy-mr-busybox": ("never", False), "tag-busybox": ("on_success", False)},
        MERGE_REQUEST: {"deploy-production-busybox": ("manual", True),
                        "deploy-mr-busybox": ("manual", True), "stop-mr-busybox": ("manual", True)},
        TAG: {"deploy-production-busybox": ("manual", True), "deploy-mr-busybox": ("never", False)},
        FEATURE_BRANCH: {"deploy-production-busybox": ("manual", True),
                         "deploy-mr-busybox": ("never", False), "stop-mr-busybox": ("never", False),
                         "tag-busybox": ("on_success", False), "mirror": ("never", False)},
        SCHEDULE: {"mirror": ("on_success", False)},
    }
    for kind, wanted in expected.items():
        jobs = _list_json(ci_repo, kind)
        for name, when in wanted.items():
            assert jobs[name] == when, (kind.name, name, jobs[name])
        # images whose CHANGES did not change never run, whatever the pipeline (the image
        # graph: its generator, its child pipeline, its tag jobs)
        assert jobs["ci-graph"][0] == jobs["images"][0] == "never"
        assert jobs["tag: [base]"][0] == jobs["tag-buildah"][0] == "never"


def _list_json(setup: dict[str, Any], kind: PipelineKind) -> dict[str, tuple[str, bool]]:
    argv = ["gitlab-ci-local", "--list-json"]
    for name, value in kind.variables:
        argv += ["--variable", f"{name}={value}"]
    for name in kind.unset:
        argv += ["--unset-variable", name]
    env = dict(setup["env"], GCL_IGNORE_PREDEFINED_VARS=",".join(n for n, _ in kind.variables))
    out = subprocess.run(argv, cwd=setup["repo"], env=env, capture_output=True, text=True,
                         check=True).stdout
    start = out.index("[")
    return {j["name"]: (j["when"], bool(j.get("allow_failure"))) for j in json.loads(out[start:])}

