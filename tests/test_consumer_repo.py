"""A separate repository that adopts kiln exactly as the README says, under gitlab-ci-local.

Issue #11: a new user's repository, with the documented job patterns (docs/workflow.md) and
build file copied literally, gave the wrong result in half the scenarios (stop jobs that stopped
nothing, a manifest job that built a single-arch image, a lint that rejected the documented
YAML). Here three such repositories are made from nothing: `git init`, a fake origin, the two
one-line adoption files (`tasks.py`, `noxfile.py`), a `.gitlab-ci.yml` whose jobs are the
documented blocks cut out of docs/workflow.md (image and architecture names adapted, nothing
else), and busybox-based build files (the offline multi-arch busybox is seeded by
`kiln seed-upstream`, the task an adopter uses for the same purpose):

* `acme/images`, the image repository: the multi-arch pattern (one job per architecture, then
  the manifest job from `.publish_job` with `IMAGE_ARCHES` in a stage of its own) publishes
  `base`;
* `acme/shop`, a service repository with several images (the matrix pattern and one MR job
  pair per image): its services build FROM the image repository's base (`base-registry`),
  and a change to one service builds only that one;
* `acme/svc`, a one-image service repository (the one-image pattern: `stop-mr` extends
  `[.deploy_mr, .stop_mr]`).

The only line that differs from what a user writes is the include: gitlab-ci-local cannot fetch
`include: project:`, so kiln's two template files are copied into the repository and included
with `local:`. After each pipeline the registry holds exactly the tags of docs/tags.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from conftest import require_tool
from helpers.ci_shims import (
    DEFAULT_BRANCH,
    MERGE_REQUEST,
    TAG,
    PipelineKind,
    documented_block,
    ensure_binfmt,
    gitlab_ci_local,
    passed_jobs,
)
from kiln.local_registry import RegistryServer
from kiln.registry.client import RegistryClient
from kiln.state_dir import GITIGNORE_TEXT, ensure_state_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
ARCHES = ("amd64", "arm64")

# What the README's "Adopting kiln in another repository" asks for, literally.
TASKS_PY = "from kiln.tasks import namespace  # noqa: F401\n"
NOXFILE_PY = "import kiln.nox_sessions  # noqa: F401\n"
# README: `include: project: <group>/kiln, file: [ci/kiln.yml, ci/workflow.yml]`; gitlab-ci-local
# cannot fetch a project include, so the same two files are copied in and included locally.
INCLUDE = "include:\n  - local: kiln-ci/kiln.yml\n  - local: kiln-ci/workflow.yml\n"


def images_ci() -> str:
    """acme/images: the documented multi-arch pattern for `base` (two architectures), and a
    second image `tools` as one job named after it; each image's jobs run when its build file
    changed (`CHANGES`)."""
    block = documented_block("Several architectures: one job per architecture, then the "
                             "manifest job")
    block = (block.replace("variables: {IMAGE_NAME: backend}",
                           "variables: {IMAGE_NAME: base, CHANGES: builds/base.in}")
             .replace("IMAGE_NAME: backend", "IMAGE_NAME: base\n    CHANGES: builds/base.in")
             .replace("backend", "base")
             .replace("[amd64, arm64, ppc64le, s390x]", "[amd64, arm64]")
             .replace('"amd64 arm64 ppc64le s390x"', '"amd64 arm64"'))
    assert "stage: 🎁" in block and block.count("CHANGES: builds/base.in") == 2
    return (INCLUDE + "stages: [build, 🎁, test, tag, deploy]\n" + block
            + ".base:\n  variables: {IMAGE_NAME: base, CHANGES: builds/base.in}\n"
            + ".tools:\n  variables: {IMAGE_NAME: tools, CHANGES: builds/tools.in}\n"
            + "tools:                   {extends: [.publish_job, .tools]}\n"
            + "tag:                     {extends: [.tag, .base]}\n"
            + "tag-tools:               {extends: [.tag, .tools]}\n"
            + "deploy-production:       {extends: [.deploy_production_image, .base]}\n"
            + "deploy-production-tools: {extends: [.deploy_production_image, .tools]}\n")


def shop_ci() -> str:
    """acme/shop: the documented matrix pattern with one MR job pair per image; its services
    derive from acme/images' base (the base-registry setting)."""
    block = documented_block("Several images: a matrix, one MR environment per image")
    pair = block[block.index("deploy-mr-backend:"):block.index("# ... the same pair")]
    block = block.replace("# ... the same pair for frontend\n", pair.replace("backend", "frontend"))
    return (INCLUDE + "variables:\n  KILN_BASE_REGISTRY: $CI_REGISTRY/acme/images\n" + block)


def svc_ci() -> str:
    """acme/svc: the documented one-image pattern, verbatim."""
    return (INCLUDE + "variables:\n  KILN_BASE_REGISTRY: $CI_REGISTRY/acme/images\n"
            + documented_block("One image per repository"))


BASE_IN = """\
ARG UPSTREAM_REGISTRY
FROM ${UPSTREAM_REGISTRY}/library/busybox:latest
RUN echo "acme base" > /etc/acme-base
"""


def service_in(*folders: str) -> str:
    """The documented build file of a service, FROM our base (no pip in busybox: the
    python-requirements block is left out, the application is copied instead)."""
    copies = "".join(f"COPY {folder} /code/{folder}\n" for folder in folders)
    return ('#define BASE_IMAGE_NAME base\n#include "setup-from-base"\n' + copies
            + 'CMD ["/bin/sh", "/code/run.sh"]\n#include "cleanup"\n')


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)


def make_consumer(dest: Path, project: str, files: Mapping[str, str],
                  change: Mapping[str, str]) -> Path:
    """A git repository ``acme/<project>`` holding ``files`` and kiln's two CI files on its
    fake ``origin/main``, plus one commit on top that writes ``change``."""
    for name, text in files.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(text, encoding="utf-8")
    (dest / "kiln-ci").mkdir(parents=True)
    for name in ("kiln.yml", "workflow.yml"):
        shutil.copy(REPO_ROOT / "ci" / name, dest / "kiln-ci" / name)
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "config", "user.email", "consumer@example.com")
    _git(dest, "config", "user.name", "kiln adopter")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "state of origin/main")
    _git(dest, "remote", "add", "origin", f"https://gitlab.example.com/acme/{project}.git")
    _git(dest, "update-ref", "refs/remotes/origin/main", "HEAD")
    _git(dest, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main")
    for name, text in change.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(text, encoding="utf-8")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "the change under test")
    return dest


def consumer_env() -> dict[str, str]:
    """gitlab-ci-local's environment: nothing of an outer pipeline or of kiln's settings; kiln
    comes from the installed distribution, as for any adopter (no PYTHONPATH)."""
    return {
        k: v for k, v in os.environ.items()
        if not k.startswith(("CI_", "GITLAB_", "KILN_", "IMAGE_", "NOX", "PYTEST_", "GCL_"))
        and k not in {"CI", "BASE_IMAGE_TAG", "buildah_image_tag", "BUILDAH_IMAGE_TAG",
                      "REGISTRY_AUTH_FILE", "CHANGES", "PYTHONPATH"}
    }


# --- unit: what an adopter gets without asking ---------------------------------------------------

def test_state_dir_ignores_itself(tmp_path: Path) -> None:
    """Issue #11 (6): .kiln/ showed up in an adopting repository's git status."""
    state = ensure_state_dir(tmp_path / "project" / ".kiln")
    assert (state / ".gitignore").read_text() == GITIGNORE_TEXT
    (state / ".gitignore").write_text("own\n")
    ensure_state_dir(state)
    assert (state / ".gitignore").read_text() == "own\n", "a user's own file is kept"


def test_consumer_pipelines_are_the_documented_blocks() -> None:
    """The .gitlab-ci.yml files below are docs/workflow.md's blocks, and kiln's lint takes
    them (issue #11 (5): it rejected the documented deploy-mr)."""
    from kiln import ci_schema

    templates, _ = ci_schema.load_yaml((REPO_ROOT / "ci" / "kiln.yml").read_text(), "kiln.yml")
    for text in (images_ci(), shop_ci(), svc_ci()):
        assert ci_schema.validate_text(text, "consumer.yml", definitions=templates) == []
    assert "stop-mr:\n  extends: [.deploy_mr, .stop_mr]\n" in svc_ci()
    assert "stop-mr-frontend:\n  extends: [deploy-mr-frontend, .stop_mr]" in shop_ci()


# --- real: the three repositories under gitlab-ci-local ----------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory,
          buildah_storage: dict[str, Path]) -> Iterator[dict[str, Any]]:
    """One registry for the module, seeded with the offline busybox by `kiln seed-upstream`."""
    for tool, package in (("gitlab-ci-local", "npm install -g gitlab-ci-local@4.73.0"),
                          ("git", "git"), ("nox", "pip install nox"), ("buildah", "buildah"),
                          ("skopeo", "skopeo"), ("docker-registry", "docker-registry"),
                          ("kiln", "pip install -e ."), ("invoke", "pip install invoke")):
        require_tool(tool, package)
    ensure_binfmt("arm64")
    base = tmp_path_factory.mktemp("consumer")
    server = RegistryServer(base / "registry")
    server.start()
    env = consumer_env()
    storage = {"KILN_STORAGE_ROOT": str(buildah_storage["root"]),
               "KILN_STORAGE_RUNROOT": str(buildah_storage["runroot"])}
    seeded = subprocess.run(
        ["kiln", "seed-upstream", "--registry", server.address, "--upstream",
         "library/busybox:latest", "--json"],
        cwd=base, env={**env, **storage, "KILN_STATE_DIR": str(base / "state")},
        capture_output=True, text=True, timeout=600)
    assert seeded.returncode == 0, seeded.stderr[-4000:]
    assert json.loads(seeded.stdout)["ok"] is True
    variables = {"CI_REGISTRY": server.address,
                 "KILN_UPSTREAM_REGISTRY": f"{server.address}/mirror", **storage}
    yield {"base": base, "registry": server, "env": env, "variables": variables}
    server.stop()


def _run(world: dict[str, Any], repo: Path, prefix: str, kind: PipelineKind, pipeline: str,
         **kw: Any) -> subprocess.CompletedProcess[str]:
    """One pipeline of ``repo``, its images pushed under ``<registry>/<prefix>``."""
    registry: RegistryServer = world["registry"]
    variables = {**world["variables"], "CI_REGISTRY_IMAGE": f"{registry.address}/{prefix}"}
    # one job at a time: the jobs share one buildah storage here (on GitLab each has its own)
    return gitlab_ci_local(repo, kind, pipeline, variables, env=world["env"], concurrency=1, **kw)


def _explain(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stdout + result.stderr)[-8000:]


def _state(registry: RegistryServer, prefix: str) -> dict[str, dict[str, str]]:
    """image -> {tag: digest} for every repository under ``prefix``."""
    with urllib.request.urlopen(f"http://{registry.address}/v2/_catalog?n=1000") as resp:
        catalog: list[str] = json.load(resp)["repositories"]
    state: dict[str, dict[str, str]] = {}
    with RegistryClient(registry.address) as client:
        for repo in catalog:
            if not repo.startswith(f"{prefix}/"):
                continue
            tags = {}
            for tag in client.list_tags(repo):
                info = client.head_manifest(repo, tag)
                assert info is not None
                tags[tag] = info.digest
            if tags:
                state[repo.removeprefix(f"{prefix}/")] = tags
    return state


def _named(tags: Mapping[str, str], built: Sequence[str] | None = None) -> set[str]:
    """The tag names without the input-key tags ``k-<hex>`` (docs/tags.md), after checking
    those: one per build, on the digest that build pushed (``built``: its p- tags)."""
    keys = {tag: digest for tag, digest in tags.items() if tag.startswith("k-")}
    if built is not None:
        assert sorted(keys.values()) == sorted(tags[t] for t in built), (keys, tags)
    return set(tags) - set(keys)


def _layers(registry: RegistryServer, repository: str, tag: str, arch: str = "amd64") -> list[str]:
    with RegistryClient(registry.address) as client:
        manifest = client.get_manifest(repository, tag)
        body = json.loads(manifest.body)
        if manifest.is_index:
            digest = next(m["digest"] for m in body["manifests"]
                          if m["platform"]["architecture"] == arch)
            body = json.loads(client.get_manifest(repository, digest).body)
    return [layer["digest"] for layer in body["layers"]]


def _untracked(repo: Path) -> str:
    """What `git status` shows of kiln's working folder (gitlab-ci-local's own folder aside)."""
    assert (repo / ".kiln").is_dir(), "the jobs ran in the repository"
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"],
                            capture_output=True, text=True, check=True).stdout
    return "".join(line for line in status.splitlines(keepends=True) if ".kiln" in line)


def _files(ci: str, builds: Mapping[str, str], extra: Mapping[str, str] | None = None
           ) -> dict[str, str]:
    return {"tasks.py": TASKS_PY, "noxfile.py": NOXFILE_PY, ".gitlab-ci.yml": ci,
            **{f"builds/{name}.in": text for name, text in builds.items()}, **(extra or {})}


@pytest.fixture(scope="module")
def images(world: dict[str, Any]) -> dict[str, Any]:
    """acme/images after a default-branch pipeline that changed builds/base.in only."""
    repo = make_consumer(world["base"] / "images", "images", _files(images_ci(), {
        "base": BASE_IN,
        "tools": "ARG UPSTREAM_REGISTRY\nFROM ${UPSTREAM_REGISTRY}/library/busybox:latest\n",
    }), {"builds/base.in": BASE_IN + 'LABEL acme.base="2"\n'})
    result = _run(world, repo, "acme/images", DEFAULT_BRANCH, "501")
    return {"repo": repo, "result": result}


@pytest.mark.real
def test_image_repository_multiarch_base_with_the_documented_manifest_job(
        world: dict[str, Any], images: dict[str, Any]) -> None:
    """The documented manifest job (.publish_job with IMAGE_ARCHES, stage 🎁) assembles the
    index of the per-arch builds; only the changed image (base, not tools) is built."""
    result = images["result"]
    assert result.returncode == 0, _explain(result)
    assert set(passed_jobs(result.stdout)) == {
        "base: [amd64]", "base: [arm64]", "base-manifest", "tag", "deploy-production"}
    registry: RegistryServer = world["registry"]
    state = _state(registry, "acme/images")
    assert list(state) == ["base"], "tools did not change: nothing of it is built"
    tags = state["base"]
    assert _named(tags, built=("p-501-amd64", "p-501-arm64")) == {
        "p-501-amd64", "p-501-arm64", "p-501", "g-501", "latest", "production"}
    with RegistryClient(registry.address) as client:
        index = client.get_manifest("acme/images/base", "p-501")
    assert index.is_index, "issue #11 (2): the manifest job pushed a single-arch build"
    children = {m["platform"]["architecture"]: m["digest"]
                for m in json.loads(index.body)["manifests"]}
    assert children == {arch: tags[f"p-501-{arch}"] for arch in ARCHES}
    assert tags["g-501"] == tags["latest"] == tags["production"] == tags["p-501"]
    assert _untracked(images["repo"]) == "", "kiln's .kiln/ ignores itself"
    assert "uv binary not found" not in result.stdout + result.stderr, "issue #11 (6)"


@pytest.fixture(scope="module")
def shop(world: dict[str, Any], images: dict[str, Any]) -> Path:
    """acme/shop with a change to src/core (both images' CHANGES match)."""
    assert images["result"].returncode == 0, "needs acme/images' base"
    return make_consumer(world["base"] / "shop", "shop", _files(shop_ci(), {
        "backend": service_in("src/core", "src/backend"),
        "frontend": service_in("src/core", "src/frontend"),
    }, {"src/core/lib.sh": "greet() { echo hello; }\n", "src/backend/run.sh": "echo backend\n",
        "src/frontend/run.sh": "echo frontend\n"}), {"src/core/lib.sh": "greet() { echo hi; }\n"})


def _matrix_jobs(job: str) -> set[str]:
    return {f"{job}: [backend,src/{{core,backend}}]", f"{job}: [frontend,src/{{core,frontend}}]"}


@pytest.mark.real
def test_service_repository_builds_from_the_image_repositorys_base(
        world: dict[str, Any], shop: Path) -> None:
    """Services derive from acme/images' base (KILN_BASE_REGISTRY, tag BASE_IMAGE_TAG=latest);
    the default branch gives each changed image p-, g-, latest and production."""
    registry: RegistryServer = world["registry"]
    result = _run(world, shop, "shop-main", DEFAULT_BRANCH, "601")
    assert result.returncode == 0, _explain(result)
    assert set(passed_jobs(result.stdout)) == (
        _matrix_jobs("publish") | _matrix_jobs("tag") | _matrix_jobs("deploy-production"))
    state = _state(registry, "shop-main")
    assert set(state) == {"backend", "frontend"}
    for tags in state.values():
        assert _named(tags, built=("p-601",)) == {"p-601", "g-601", "latest", "production"}
    base_layers = _layers(registry, "acme/images/base", "latest")
    assert _layers(registry, "shop-main/backend", "p-601")[:len(base_layers)] == base_layers
    assert "base" not in state, "the base comes from the image repository, not built here"
    assert _untracked(shop) == ""
    # kiln's CI lint (nox -s lint runs it) takes the documented YAML as GitLab does
    lint = subprocess.run([sys.executable, "-m", "kiln.ci_schema"], cwd=shop, env=world["env"],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stderr


@pytest.mark.real
def test_service_repository_merge_request_deploy_and_stop(world: dict[str, Any],
                                                          shop: Path) -> None:
    """Issue #11 (1): `stop-mr-backend: extends: [deploy-mr-backend, .stop_mr]` removed the tag
    of the image named after the project (reported 'absent') and backend:mr-7 stayed."""
    registry: RegistryServer = world["registry"]
    result = _run(world, shop, "shop-mr", MERGE_REQUEST, "602", manual=("deploy-mr-backend",))
    assert result.returncode == 0, _explain(result)
    assert set(passed_jobs(result.stdout)) == (
        _matrix_jobs("publish") | _matrix_jobs("tag") | {"deploy-mr-backend"})
    before = _state(registry, "shop-mr")
    for tags in before.values():
        assert _named(tags, built=("p-602",)) == {"p-602", "g-602", "mr-7"}
    stop = _run(world, shop, "shop-mr", MERGE_REQUEST, "602", jobs=("stop-mr-backend",))
    assert stop.returncode == 0, _explain(stop)
    assert passed_jobs(stop.stdout) == ["stop-mr-backend"]
    log = (shop / ".gitlab-ci-local" / "output" / "stop-mr-backend.log").read_text()
    assert "absent" not in log, log[-3000:]
    after = _state(registry, "shop-mr")
    assert after["backend"] == {k: v for k, v in before["backend"].items() if k != "mr-7"}
    assert after["frontend"] == before["frontend"], "only backend's mr-7 is removed"


@pytest.fixture(scope="module")
def svc(world: dict[str, Any], images: dict[str, Any]) -> Path:
    assert images["result"].returncode == 0, "needs acme/images' base"
    return make_consumer(world["base"] / "svc", "svc", _files(svc_ci(), {
        "svc": service_in("app"),
    }, {"app/run.sh": "echo svc\n"}), {"app/run.sh": "echo svc v2\n"})


@pytest.mark.real
def test_one_image_repository_merge_request_deploy_and_stop(world: dict[str, Any],
                                                            svc: Path) -> None:
    """The one-image pattern verbatim: `stop-mr: extends: [.deploy_mr, .stop_mr]` removes
    svc:mr-7 and nothing else."""
    registry: RegistryServer = world["registry"]
    result = _run(world, svc, "svc-mr", MERGE_REQUEST, "701", manual=("deploy-mr",))
    assert result.returncode == 0, _explain(result)
    assert set(passed_jobs(result.stdout)) == {"publish", "tag", "deploy-mr"}
    before = _state(registry, "svc-mr")
    assert list(before) == ["svc"]
    assert _named(before["svc"], built=("p-701",)) == {"p-701", "g-701", "mr-7"}
    stop = _run(world, svc, "svc-mr", MERGE_REQUEST, "701", jobs=("stop-mr",))
    assert stop.returncode == 0, _explain(stop)
    assert passed_jobs(stop.stdout) == ["stop-mr"]
    assert _state(registry, "svc-mr")["svc"] == {
        k: v for k, v in before["svc"].items() if k != "mr-7"}


@pytest.mark.real
def test_one_image_repository_tag_pipeline(world: dict[str, Any], svc: Path) -> None:
    registry: RegistryServer = world["registry"]
    result = _run(world, svc, "svc-tag", TAG, "702")
    assert result.returncode == 0, _explain(result)
    assert set(passed_jobs(result.stdout)) == {"publish", "tag"}
    tags = _state(registry, "svc-tag")["svc"]
    assert _named(tags, built=("p-702",)) == {"p-702", "g-702", "v1.0.0"}
    assert tags["v1.0.0"] == tags["p-702"]
