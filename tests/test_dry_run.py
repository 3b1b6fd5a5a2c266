"""``--dry-run`` on every task: a plan on stdout, and nothing changed — checked through real
``python -m invoke`` processes against a real registry (its access log shows no PUT, POST, PATCH
or DELETE), a real git remote (no tag pushed) and the project folder (no file created or
modified, no embedded registry started).

The table must name every task ``invoke --list`` shows, so a new task without a dry-run case
fails here."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import require_tool
from helpers.images import push_test_image
from helpers.run import run_kiln
from kiln.local_registry import RegistryServer, local_registry_status

pytestmark = pytest.mark.real

BUILD_IN = """\
ARG REGISTRY=localhost
FROM scratch
COPY builds/app.in /app.in
#include "step"
"""


@dataclass(frozen=True)
class DryRun:
    args: tuple[str, ...]
    plan: tuple[str, ...]  # regular expressions the plan (stdout) must match
    env: Mapping[str, str] = field(default_factory=dict)
    codes: tuple[int, ...] = (0,)


CASES: dict[str, DryRun] = {
    "build": DryRun(("--image", "app"), (
        r"write \S+/\.kiln/build/app/Containerfile",
        r"buildah .*build .*--build-arg REGISTRY={host} .*-t {host}/app:p-7",
        r"buildah .*push .*{host}/app:p-7")),
    "build-arch": DryRun(("--image", "app", "--arch", "arm64"), (
        r"buildah .*build .*--platform linux/arm64 .*-t {host}/app:p-7-arm64",
        r"buildah .*push .*docker://{host}/app:p-7-arm64")),
    "preprocess": DryRun(("--image", "app"), (r"COPY builds/app.in /app.in", r"RUN true")),
    "graph": DryRun((), (r"^level +image", r"^0 +app +- +amd64 +- +build$")),
    "images": DryRun((), (r"^app$",)),
    "ci-graph": DryRun((), (r"^# write \S+/kiln-child-pipeline\.yml$", r"^build:app:$",
                            r"^  KILN_PIPELINE_ID: '7'$", r"^  - nox -s publish$")),
    "binfmt-register": DryRun(("--arch", "arm64 s390x"), (r"qemu-aarch64", r"qemu-s390x")),
    "registry-start": DryRun((), (r"docker-registry serve \S+/\.kiln/registry/config\.yml",)),
    "registry-stop": DryRun((), (r"not running",)),
    "registry-status": DryRun((), (r"not running",), codes=(1,)),
    "manifest": DryRun((), (
        r"GET +{host}/app:p-7-amd64", r"GET +{host}/app:p-7-arm64",
        r"PUT +{host}/app:p-7 +\(manifest sha256:[0-9a-f]{{64}} \(dry run\)\)"),
        env={"IMAGE_ARCHES": "amd64 arm64"}),
    "tag": DryRun((), (r"GET +{host}/app:p-7 ", r"PUT +{host}/app:g-7 .*dry run",
                       r"PUT +{host}/app:latest .*dry run")),
    "deploy-production": DryRun((), (r"PUT +{host}/app:production .*dry run",)),
    "deploy-mr": DryRun(("--mr", "5"), (r"PUT +{host}/app:mr-5 .*dry run",)),
    "stop-mr": DryRun(("--mr", "4"), (r"HEAD +{host}/app:mr-4", r"PUT +{host}/app:mr-4 .*dry run",
                                      r"DELETE {host}/app@sha256:[0-9a-f]{{64}} .*dry run")),
    "deploy-production-tag": DryRun((), (r"git tag --force production [0-9a-f]{{40}}",
                                         r"git push --force origin refs/tags/production")),
    "mirror": DryRun((), (r"mirror plan \(dry run", r"HEAD +{host}/library/alpha:1",
                          r"would run: skopeo copy --all --preserve-digests .*"
                          r"docker://{host}/library/alpha@sha256:[0-9a-f]{{64}} "
                          r"docker://{host}/mirror/library/alpha:1")),
    "lint-refs": DryRun((), ()),
    "prune": DryRun(("--match", "mr-*", "--keep", "0", "--older-than", "0d"), (
        r"^TAG +DIGEST +AGE +ACTION +WHY$",
        r"^mr-4 +sha256:[0-9a-f]{{12}} +\S+ +remove +older than",
        r"^p-7 +sha256:[0-9a-f]{{12}} +\S+ +keep +matches no pattern")),
    "seed-upstream": DryRun(("--upstream", "library/busybox:latest"), (
        r"^seed {host}/mirror/library/busybox:latest \(amd64, arm64\) unless",)),
    "run": DryRun(("--env", "GREETING=hi", "--", "--self-test"), (
        r"buildah .*from .*{host}/app:p-7", r"buildah .*run .*--env GREETING=hi .*--self-test",
        r"buildah .*rm ")),
    "tags": DryRun((), (r"^TAGS +DIGEST +ARCH +CREATED +SIZE$",
                        r"^mr-4 +sha256:[0-9a-f]{{12}} +amd64 ")),
}


def task_names() -> list[str]:
    from helpers.run import REPO_ROOT, clean_env

    done = subprocess.run(["python", "-m", "invoke", "--search-root", str(REPO_ROOT), "--list"],
                          capture_output=True, text=True, env=clean_env(), check=True)
    return re.findall(r"^  (\S+)", done.stdout, flags=re.MULTILINE)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (outside .git) with its size and mtime."""
    result = {}
    for path in root.rglob("*"):
        if ".git" in path.relative_to(root).parts:
            continue
        stat = path.lstat()
        result[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RegistryServer]]:
    require_tool("docker-registry", "docker-registry")
    require_tool("skopeo", "skopeo")
    require_tool("git", "git")
    base = tmp_path_factory.mktemp("dry-run")
    server = RegistryServer(base / "registry")
    server.start()
    host = server.address
    for tag, arch in (("p-7", "amd64"), ("p-7-amd64", "amd64"), ("p-7-arm64", "arm64")):
        push_test_image(base, f"{host}/app:{tag}", arch=arch)
    push_test_image(base, f"{host}/app:mr-4", label="mr")
    push_test_image(base, f"{host}/library/alpha:1", label="alpha")
    project = base / "project"
    (project / "builds").mkdir(parents=True)
    (project / "includes").mkdir()
    (project / "builds" / "app.in").write_text(BUILD_IN)
    (project / "includes" / "step").write_text("RUN true\n")
    (project / "pyproject.toml").write_text("[tool.kiln]\n")
    (project / "mirrors.yml").write_text(f"images:\n  - {host}/library/alpha:1\n")
    remote = base / "remote.git"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run([*git, "-C", str(project), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(project), "commit", "-q", "-m", "x"], check=True)
    subprocess.run(["git", "-C", str(project), "remote", "add", "origin", str(remote)], check=True)
    yield project, server
    server.stop()


def env_for(host: str, case: DryRun) -> dict[str, str]:
    return {"CI": "true", "CI_PIPELINE_ID": "7", "CI_COMMIT_BRANCH": "main",
            "CI_DEFAULT_BRANCH": "main", "IMAGE_NAME": "app", "KILN_REGISTRY": host,
            "CI_REGISTRY_USER": "ci", "CI_REGISTRY_PASSWORD": "dry-run-pw-123",
            "GITLAB_JOB_DEPLOY_PRODUCTION_ACCESS_TOKEN": "glpat-" + "q" * 20, **case.env}


def test_every_task_has_a_dry_run_case_and_flag() -> None:
    names = task_names()
    assert sorted(names) == sorted(CASES), "add a dry-run case for every task"
    from kiln.tasks import namespace

    for name in names:
        names_of_flags = {n for arg in namespace[name].get_arguments() for n in arg.names}
        assert names_of_flags & {"dry-run", "dry_run"}, f"{name} has no --dry-run"


@pytest.mark.parametrize("name", sorted(CASES))
def test_dry_run_plans_and_changes_nothing(name: str, setup: tuple[Path, RegistryServer]) -> None:
    project, server = setup
    case = CASES[name]
    host = server.address
    before = snapshot(project)
    mark = server.log_mark()
    done = run_kiln(project, name, "--dry-run", *case.args, env=env_for(host, case))
    assert done.returncode in case.codes, done.stderr
    for pattern in case.plan:
        regex = pattern.format(host=re.escape(host))
        assert re.search(regex, done.stdout, flags=re.MULTILINE), \
            f"{regex!r} not in the plan:\n{done.stdout}\n{done.stderr}"
    writes = [f"{r.method} {r.path}" for r in server.requests_since(mark)
              if r.method in {"PUT", "POST", "PATCH", "DELETE"}]
    assert writes == []
    assert snapshot(project) == before, "the dry run changed the project folder"
    assert local_registry_status(project / ".kiln") is None
    tags = subprocess.run(["git", "-C", str(project.parent / "remote.git"), "tag"],
                          capture_output=True, text=True, check=True).stdout
    assert tags == ""
    everything = done.stdout + done.stderr
    assert "dry-run-pw-123" not in everything and "glpat-" not in everything


@pytest.mark.parametrize("name", ["tag", "stop-mr", "mirror", "build"])
def test_dry_run_with_json_puts_the_plan_in_the_document(
        name: str, setup: tuple[Path, RegistryServer]) -> None:
    project, server = setup
    case = CASES[name]
    done = run_kiln(project, name, "--dry-run", "--json", *case.args,
                    env=env_for(server.address, case))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["dry_run"] is True and doc["ok"] is True and doc["task"] == name
    assert doc["plan"] and doc["results"]
    assert all(r["action"] in {"planned", "skipped"} for r in doc["results"])
    assert os.environ.get("KILN_JSON_OUTPUT") is None
