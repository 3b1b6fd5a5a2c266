"""The generated child pipeline for real: gitlab-ci-local runs a parent pipeline made of kiln's
templates (``.ci_graph`` writes the child, ``.ci_graph_trigger`` runs it, ``.tag`` tags), jobs
build with buildah and push to a real registry, and the registry must end up with exactly the
tags of docs/tags.md.

The project is a small graph of busybox images (cheap to build): ``base`` FROM the offline
upstream busybox, ``mid`` FROM base, ``leaf1`` FROM mid, ``leaf2`` FROM base. One registry
serves four pipelines in a row, as a project's registry would:

1. empty registry: every image is built, dependencies first;
2. nothing changed: the generator copies every image (a manifest read and write per image, no
   blob) and the child has only its up-to-date job;
3. one leaf's build file changed: only that image is built, the others are copied;
4. the base changed: every image above it is built again, in order, each exactly once.

gitlab-ci-local 4.73.0 runs ``trigger: include: artifact:`` children after the generating job,
but does not pass its ``--variable`` values to them (the jobs' settings come from the
environment here: KILN_REGISTRY, the storage, the upstream registry) and does not fail the
trigger job when the child fails (``strategy: depend``): the child's jobs are checked by name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import require_tool
from helpers.ci_shims import DEFAULT_BRANCH, ensure_binfmt, gitlab_ci_local, seed_busybox
from kiln.local_registry import RegistryServer
from kiln.registry.client import RegistryClient

pytestmark = pytest.mark.real

REPO_ROOT = Path(__file__).resolve().parent.parent
GCL_VERSION = "4.73.0"
PROJECT = "graph/demo"
IMAGES = ("base", "mid", "leaf1", "leaf2")
TRIGGER = "images"

ARGS = "ARG REGISTRY\nARG BASE_IMAGE_TAG=latest\n"
BUILD_FILES = {
    "base": "ARG UPSTREAM_REGISTRY=docker.io\nFROM ${UPSTREAM_REGISTRY}/library/busybox:latest\n"
            "RUN echo base > /base.txt\n",
    "mid": ARGS + "FROM ${REGISTRY}/base:${BASE_IMAGE_TAG}\nRUN echo mid > /mid.txt\n",
    "leaf1": ARGS + "FROM ${REGISTRY}/mid:${BASE_IMAGE_TAG}\nRUN echo leaf1 > /leaf1.txt\n",
    "leaf2": ARGS + "FROM ${REGISTRY}/base:${BASE_IMAGE_TAG}\nRUN echo leaf2 > /leaf2.txt\n",
}
PARENT = """\
include:
  - local: ci/kiln.yml
ci-graph:
  extends: .ci_graph
images:
  extends: .ci_graph_trigger
tag:
  extends: .tag
  parallel:
    matrix:
      - IMAGE_NAME: [base, mid, leaf1, leaf2]
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)


def make_graph_project(dest: Path, build_files: dict[str, str] = BUILD_FILES,
                       parent: str = PARENT) -> Path:
    """A project using kiln's CI templates, with a git repo and a fake origin (gitlab-ci-local
    needs both)."""
    (dest / "builds").mkdir(parents=True)
    (dest / "ci").mkdir()
    for name, text in build_files.items():
        (dest / "builds" / f"{name}.in").write_text(text)
    shutil.copy(REPO_ROOT / "ci" / "kiln.yml", dest / "ci" / "kiln.yml")
    (dest / ".gitlab-ci.yml").write_text(parent)
    (dest / "noxfile.py").write_text("import kiln.nox_sessions  # noqa: F401\n")
    (dest / "tasks.py").write_text("from kiln.tasks import namespace  # noqa: F401\n")
    (dest / "pyproject.toml").write_text('[project]\nname = "demo"\n[tool.kiln]\n')
    (dest / ".gitignore").write_text("/.kiln/\n/.gitlab-ci-local/\n/kiln-child-pipeline.yml\n")
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "config", "user.email", "ci-test@example.com")
    _git(dest, "config", "user.name", "kiln CI test")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "demo")
    _git(dest, "remote", "add", "origin", "https://gitlab.example.com/graph/demo.git")
    _git(dest, "update-ref", "refs/remotes/origin/main", "HEAD")
    _git(dest, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main")
    return dest


@pytest.fixture(scope="module")
def graph_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    require_tool("docker-registry", "docker-registry")
    server = RegistryServer(tmp_path_factory.mktemp("graph-registry"))
    server.start()
    yield server
    server.stop()


def _setup(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer,
           storage: dict[str, Path], project: str, **files: Any) -> dict[str, Any]:
    for tool, package in (("gitlab-ci-local", "npm install -g gitlab-ci-local@" + GCL_VERSION),
                          ("git", "git"), ("nox", "pip install nox"), ("buildah", "buildah"),
                          ("skopeo", "skopeo")):
        require_tool(tool, package)
    version = subprocess.run(["gitlab-ci-local", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == GCL_VERSION, version.stdout
    repo = make_graph_project(tmp_path_factory.mktemp("graph") / "demo", **files)
    upstream = seed_busybox(repo, registry.address, storage)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CI_", "GITLAB_", "KILN_", "IMAGE_", "NOX", "PYTEST_", "GCL_"))
           and k not in {"CI", "BASE_IMAGE_TAG", "buildah_image_tag", "REGISTRY_AUTH_FILE",
                         "CHANGES"}}
    # The child's jobs see the environment, not gitlab-ci-local's --variable values.
    env.update(PYTHONPATH=str(REPO_ROOT / "src"),
               KILN_REGISTRY=f"{registry.address}/{project}",
               KILN_UPSTREAM_REGISTRY=upstream,
               KILN_STORAGE_ROOT=str(storage["root"]),
               KILN_STORAGE_RUNROOT=str(storage["runroot"]))
    return {"repo": repo, "env": env, "registry": registry}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, graph_registry: RegistryServer,
            buildah_storage: dict[str, Path]) -> dict[str, Any]:
    return _setup(tmp_path_factory, graph_registry, buildah_storage, PROJECT)


def _pipeline(project: dict[str, Any], pipeline: str) -> tuple[str, list[str]]:
    """Run the parent pipeline; its output and the child jobs that passed, in the order they
    ran. One job at a time: the jobs share one buildah storage here (on GitLab each job has
    its own), and two architectures' pulls of one upstream tag into one storage race."""
    result = gitlab_ci_local(project["repo"], DEFAULT_BRANCH, pipeline, {}, env=project["env"],
                             concurrency=1)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    failed = re.findall(rf"^\s*FAIL\s+\[{TRIGGER}\] -> (\S+)", output, re.M)
    assert not failed, f"child jobs failed: {failed}\n{output[-8000:]}"
    child = re.findall(rf"^\s*PASS\s+\[{TRIGGER}\] -> (\S+)", output, re.M)
    return output, child


def _tags(registry: RegistryServer, images: tuple[str, ...] = IMAGES,
          project: str = PROJECT) -> dict[str, dict[str, str]]:
    """image -> {tag: digest} under the project."""
    state: dict[str, dict[str, str]] = {}
    with RegistryClient(registry.address) as client:
        for image in images:
            tags = client.list_tags(f"{project}/{image}")
            state[image] = {}
            for tag in tags:
                info = client.head_manifest(f"{project}/{image}", tag)
                assert info is not None
                state[image][tag] = info.digest
    return state


def _config_digest(registry: RegistryServer, image: str, tag: str) -> str:
    import json

    with RegistryClient(registry.address) as client:
        manifest = client.get_manifest(f"{PROJECT}/{image}", tag)
    digest: str = json.loads(manifest.body)["config"]["digest"]
    return digest


def _key_tags(tags: dict[str, str]) -> set[str]:
    return {t for t in tags if t.startswith("k-")}


def _expected(pipelines: list[str]) -> set[str]:
    """The tag table for default-branch pipelines that all succeeded."""
    return {t for p in pipelines for t in (f"p-{p}", f"g-{p}")} | {"latest"}


def _change(project: dict[str, Any], image: str) -> None:
    build_file = project["repo"] / "builds" / f"{image}.in"
    build_file.write_text(build_file.read_text() + f"RUN echo changed >> /{image}.txt\n")
    _git(project["repo"], "commit", "-q", "-am", f"change {image}")


def test_generated_pipeline_builds_reuses_and_rebuilds_along_the_graph(
        project: dict[str, Any]) -> None:
    registry: RegistryServer = project["registry"]

    # 1. empty registry: everything is built, each image after what it is built FROM
    _, child = _pipeline(project, "401")
    assert sorted(child) == sorted(f"build:{i}" for i in IMAGES), child
    assert child.index("build:base") < child.index("build:mid") < child.index("build:leaf1")
    first = _tags(registry)
    for image in IMAGES:
        tags = first[image]
        assert set(tags) - _key_tags(tags) == _expected(["401"]), (image, tags)
        assert len(_key_tags(tags)) == 1
        assert len(set(tags.values())) == 1, "p-, g-, latest and the key tag: one image"

    # 2. nothing changed: the generator copies every image; no blob moves
    mark = registry.log_mark()
    output, child = _pipeline(project, "402")
    requests = registry.requests_since(mark)
    assert child == ["graph:up-to-date"], child
    assert "reused" in output
    # no layer moves: the only blobs read are the configs the tag jobs check for credentials
    configs = {f"/v2/{PROJECT}/{i}/blobs/{_config_digest(registry, i, 'p-401')}" for i in IMAGES}
    blobs = [(r.method, r.path) for r in requests if r.kind in {"blob", "upload"}]
    assert sorted(blobs) == sorted(("GET", path) for path in configs), blobs
    copies = [r for r in requests if r.kind == "manifest" and r.method == "PUT"
              and "/manifests/p-402" in r.path]
    assert len(copies) == len(IMAGES), "one manifest write per reused image"
    second = _tags(registry)
    for image in IMAGES:
        tags = second[image]
        assert set(tags) - _key_tags(tags) == _expected(["401", "402"]), (image, tags)
        assert tags["p-402"] == first[image]["p-401"] == tags["latest"]
        assert _key_tags(tags) == _key_tags(first[image]), "no new key"

    # 3. one leaf changed: only that image is built
    _change(project, "leaf2")
    _, child = _pipeline(project, "403")
    assert child == ["build:leaf2"], child
    third = _tags(registry)
    for image in ("base", "mid", "leaf1"):
        assert third[image]["p-403"] == first[image]["p-401"], image
    assert third["leaf2"]["p-403"] != first["leaf2"]["p-401"]
    assert third["leaf2"]["latest"] == third["leaf2"]["p-403"]

    # 4. the base changed: every image above it is rebuilt, in order, each exactly once
    _change(project, "base")
    _, child = _pipeline(project, "404")
    assert sorted(child) == sorted(f"build:{i}" for i in IMAGES), child
    assert len(child) == len(set(child)) == len(IMAGES)
    assert child.index("build:base") < child.index("build:mid") < child.index("build:leaf1")
    assert child.index("build:base") < child.index("build:leaf2")
    fourth = _tags(registry)
    for image in IMAGES:
        tags = fourth[image]
        assert set(tags) - _key_tags(tags) == _expected(["401", "402", "403", "404"]), image
        assert tags["p-404"] != third[image]["p-403"], f"{image} was rebuilt"
        assert tags["latest"] == tags["g-404"] == tags["p-404"]


MULTI_PROJECT = "graph/multi"
MULTI_ARCHES = ("amd64", "arm64")
MULTI_FILES = {
    "base": BUILD_FILES["base"].replace("RUN echo base", "RUN uname -m > /arch && echo base"),
    "leaf": ARGS + "FROM ${REGISTRY}/base:${BASE_IMAGE_TAG}\nRUN echo leaf > /leaf.txt\n",
}
MULTI_PARENT = PARENT.replace(
    "ci-graph:\n  extends: .ci_graph\n",
    'ci-graph:\n  extends: .ci_graph\n  variables:\n    IMAGE_ARCHES: "amd64 arm64"\n',
).replace("[base, mid, leaf1, leaf2]", "[base, leaf]")


def test_multiarch_graph_builds_per_arch_then_reuses_with_the_index(
        tmp_path_factory: pytest.TempPathFactory, graph_registry: RegistryServer,
        buildah_storage: dict[str, Path]) -> None:
    """IMAGE_ARCHES: one job per image and arch, the manifest job, per-arch needs; then a
    pipeline with nothing changed: per-arch copies and the index, made by the generator."""
    ensure_binfmt("arm64")
    setup = _setup(tmp_path_factory, graph_registry, buildah_storage, MULTI_PROJECT,
                   build_files=MULTI_FILES, parent=MULTI_PARENT)
    _, child = _pipeline(setup, "501")
    assert sorted(child) == sorted(["build:base:amd64", "build:base:arm64", "manifest:base",
                                    "build:leaf:amd64", "build:leaf:arm64", "manifest:leaf"])
    assert child.index("build:base:arm64") < child.index("build:leaf:arm64")
    first = _tags(graph_registry, ("base", "leaf"), MULTI_PROJECT)
    per_arch = {f"p-501-{a}" for a in MULTI_ARCHES}
    for image in ("base", "leaf"):
        tags = first[image]
        assert set(tags) - _key_tags(tags) == _expected(["501"]) | per_arch, (image, tags)
        assert len(_key_tags(tags)) == 2, "one key per architecture"
        _assert_index(graph_registry, f"{MULTI_PROJECT}/{image}", "501", tags)

    _, child = _pipeline(setup, "502")
    assert child == ["graph:up-to-date"], child
    second = _tags(graph_registry, ("base", "leaf"), MULTI_PROJECT)
    for image in ("base", "leaf"):
        tags = second[image]
        for arch in MULTI_ARCHES:
            assert tags[f"p-502-{arch}"] == first[image][f"p-501-{arch}"]
        assert tags["p-502"] == first[image]["p-501"], "the same index, byte for byte"
        _assert_index(graph_registry, f"{MULTI_PROJECT}/{image}", "502", tags)


def _assert_index(registry: RegistryServer, repository: str, pipeline: str,
                  tags: dict[str, str]) -> None:
    import json

    with RegistryClient(registry.address) as client:
        index = client.get_manifest(repository, f"p-{pipeline}")
    assert index.is_index
    children = {m["platform"]["architecture"]: m["digest"]
                for m in json.loads(index.body)["manifests"]}
    assert children == {a: tags[f"p-{pipeline}-{a}"] for a in MULTI_ARCHES}
