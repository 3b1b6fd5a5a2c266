"""The build tasks as a user calls them: flags -> settings -> engine, errors -> exit codes.

Tasks run with invoke's ``MockContext`` in a temporary project (cwd). Dry runs contact nothing
but git; the registry tasks start a real ``docker-registry`` under the project's ``.kiln``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from invoke.context import MockContext
from invoke.exceptions import Exit

from conftest import require_tool
from kiln.tasks import build as tasks

BASE_IN = "ARG UPSTREAM_REGISTRY=docker.io\nFROM ${UPSTREAM_REGISTRY}/library/busybox:latest\n"
APP_IN = """\
ARG REGISTRY=localhost
ARG BASE_IMAGE_TAG=latest
FROM ${REGISTRY}/base:${BASE_IMAGE_TAG}
/* resolved by kiln */
#include "step"
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder as cwd, with the environment of a laptop (no CI, no KILN_*)."""
    for name in list(os.environ):
        if (name.startswith(("CI_", "KILN_", "IMAGE_", "BUILDAH_", "GITLAB_"))
                or name in {"CI", "BASE_IMAGE_TAG", "REGISTRY_AUTH_FILE", "STORAGE_DRIVER",
                            "SOURCE_DATE_EPOCH", "buildah_image_tag"}):
            monkeypatch.delenv(name)
    root = tmp_path / "proj"
    (root / "builds").mkdir(parents=True)
    (root / "includes").mkdir()
    (root / "builds" / "base.in").write_text(BASE_IN)
    (root / "builds" / "app.in").write_text(APP_IN)
    (root / "includes" / "step").write_text("RUN echo included > /step\n")
    (root / "pyproject.toml").write_text("[tool.kiln]\n")
    monkeypatch.chdir(root)
    yield root


def run(task: object, **kwargs: object) -> None:
    task(MockContext(), **kwargs)  # type: ignore[operator]


def exit_code(task: object, **kwargs: object) -> int:
    with pytest.raises(Exit) as err:
        run(task, **kwargs)
    return int(err.value.code)


def test_images_lists_build_files(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(tasks.images)
    assert capsys.readouterr().out.split() == ["app", "base"]


def test_preprocess_prints_the_containerfile(project: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    run(tasks.preprocess, image="app")
    out = capsys.readouterr().out
    assert "RUN echo included > /step" in out
    assert "#include" not in out and "resolved by kiln" not in out
    assert "FROM ${REGISTRY}/base:${BASE_IMAGE_TAG}" in out


def test_preprocess_strict_turns_warnings_into_errors(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "builds" / "commented.in").write_text("FROM x\n# a shell comment\nRUN true\n")
    run(tasks.preprocess, image="commented")
    captured = capsys.readouterr()
    assert "commented.in:2" in captured.err  # warned with file:line, still printed
    assert "RUN true" in captured.out
    assert exit_code(tasks.preprocess, image="commented", strict=True) == 2
    assert "commented.in:2" in capsys.readouterr().err


def test_bad_input_exit_codes(project: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert exit_code(tasks.build) == 2
    assert "no image given" in capsys.readouterr().err
    assert exit_code(tasks.build, image="nope") == 2
    err = capsys.readouterr().err
    assert "unknown image 'nope'" in err and "app, base" in err
    assert exit_code(tasks.build, image="../etc/passwd") == 2
    assert exit_code(tasks.build_arch, image="app", arch="aarch 64") == 2
    assert "unsupported architecture" in capsys.readouterr().err
    monkeypatch.setenv("IMAGE_ARCH", "sparc")
    assert exit_code(tasks.build_arch, image="app") == 2


def test_ci_without_registry_is_a_config_error(project: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("CI_PIPELINE_ID", "77")
    assert exit_code(tasks.build, image="app", dry_run=True) == 2
    assert "no registry configured in CI" in capsys.readouterr().err


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
                        "GIT_AUTHOR_DATE": "2024-05-06T07:08:09Z",
                        "GIT_COMMITTER_DATE": "2024-05-06T07:08:09Z"})


@pytest.mark.tool
def test_dry_run_plan_with_git_labels_and_no_deps(
        project: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    require_tool("git", "git")
    _git(project, "init", "-q")
    _git(project, "remote", "add", "origin", "https://deploy:tok3n-value@gitlab.example/g/p.git")
    _git(project, "add", ".")
    _git(project, "commit", "-q", "-m", "init")
    head = subprocess.run(["git", "-C", str(project), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    monkeypatch.setenv("KILN_REGISTRY", "registry.example/group/proj")
    monkeypatch.setenv("CI_REGISTRY_PASSWORD", "pa55word-never-shown")
    monkeypatch.setenv("CI_REGISTRY_USER", "ci")
    run(tasks.build_arch, image="app", arch="aarch64", dry_run=True, deps=False,
        base_image_tag="v9")
    captured = capsys.readouterr()
    plan = captured.out
    assert "dry run" in plan
    # one Containerfile per architecture: two build-arch runs never write the same file
    assert f"write {project / '.kiln/build/app-arm64/Containerfile'}" in plan
    assert "--platform linux/arm64" in plan
    assert "--build-arg BASE_IMAGE_TAG=v9" in plan
    assert "--label org.opencontainers.image.source=https://gitlab.example/g/p.git" in plan
    assert f"--label org.opencontainers.image.revision={head}" in plan
    assert "--label org.opencontainers.image.created=2024-05-06T07:08:09Z" in plan
    assert "-t registry.example/group/proj/app:p-local-arm64" in plan
    assert "push --format v2s2 --authfile '<temporary auth file, mode 0600>'" in plan
    assert "tok3n-value" not in plan + captured.err
    assert "pa55word" not in plan + captured.err
    assert not (project / ".kiln").exists()


@pytest.mark.tool
def test_dry_run_json_summary(project: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KILN_REGISTRY", "registry.example/g")
    monkeypatch.setenv("KILN_PUSH", "false")
    run(tasks.build, image="base", dry_run=True, json=True)
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout is the JSON document alone
    assert summary["task"] == "build" and summary["ok"] is True
    assert summary["dry_run"] is True
    assert summary["results"] == [{
        "action": "planned", "image": "registry.example/g/base", "tag": "p-local",
        "digest": None, "name": "base", "arch": None, "ref": "registry.example/g/base:p-local",
        "pushed": False, "dependency": False,
        "containerfile": str(project / ".kiln/build/base/Containerfile"), "key": None,
        "reused": False}]
    plan = "\n".join(summary["plan"])
    assert "(not pushed: registry.example/g/base:p-local stays in local storage)" in plan
    assert "(not pushed" in captured.err  # the plan for people goes to stderr with --json


@pytest.mark.tool
def test_graph_prints_the_build_order(project: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KILN_REGISTRY", "registry.example/g")
    (project / "builds" / "app.in").write_text(APP_IN.replace("localhost", "registry.example/g"))
    run(tasks.graph, dry_run=True)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["level", "image", "from"], ["0", "base", "-"], ["1", "app", "base"]]
    run(tasks.graph, dry_run=True, mermaid=True)
    assert "n0 --> n1" in capsys.readouterr().out
    run(tasks.graph, dry_run=True, json=True)
    document = json.loads(capsys.readouterr().out)
    assert document["graph"]["order"] == ["base", "app"]
    assert document["graph"]["edges"] == [{"image": "app", "from": "base"}]
    assert [r["action"] for r in document["results"]] == ["build", "build"]


@pytest.mark.tool
def test_graph_and_build_input_errors_exit_2(project: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KILN_REGISTRY", "registry.example/g")
    (project / "builds" / "base.in").write_text(
        "ARG REGISTRY=registry.example/g\nFROM ${REGISTRY}/app:latest\n")
    (project / "builds" / "app.in").write_text(
        "ARG REGISTRY=registry.example/g\nRUN true\nFROM ${REGISTRY}/base:latest\n")
    assert exit_code(tasks.graph, dry_run=True) == 2
    err = capsys.readouterr().err
    assert "dependency cycle between images: app -> base -> app" in err
    assert "builds/app.in:3 (Containerfile .kiln/build/app/Containerfile:3) (app FROM base)" in err
    assert exit_code(tasks.build, image=["app"], dry_run=True) == 2
    assert exit_code(tasks.build, image=["base"], jobs="0", dry_run=True) == 2
    assert "--jobs '0' is not a number" in capsys.readouterr().err
    assert exit_code(tasks.build, image=["base"], jobs="two", dry_run=True) == 2
    assert exit_code(tasks.build, image=["base"], all=True, dry_run=True) == 2
    assert "--all and --image together" in capsys.readouterr().err


@pytest.mark.tool
def test_build_all_and_repeated_images_plan_the_graph_once(
        project: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KILN_REGISTRY", "registry.example/g")
    (project / "builds" / "app.in").write_text(APP_IN.replace("localhost", "registry.example/g"))
    (project / "builds" / "solo.in").write_text(BASE_IN)
    run(tasks.build, all=True, dry_run=True, jobs="2")
    plan = capsys.readouterr().out
    assert [line for line in plan.splitlines() if line.startswith("# ") and "plan" not in line] \
        == ["# base", "# solo", "# app"]  # with --all every image is asked for
    assert "when registry.example/g/app:k-<input key> exists: copy its manifest to " \
           "registry.example/g/app:p-local, build nothing" in plan
    run(tasks.build, image=["app", "solo"], dry_run=True, rebuild=True)
    plan = capsys.readouterr().out
    assert "# base (dependency)" in plan and "# solo" in plan
    assert "--rebuild: build even when the registry has it" in plan


def test_binfmt_register_dry_run(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(tasks.binfmt_register, arch="arm64 s390x", dry_run=True)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["qemu-aarch64", "qemu-s390x"]


@pytest.mark.real
def test_registry_start_status_stop(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_tool("docker-registry", "docker-registry")
    assert exit_code(tasks.registry_status) == 1
    assert capsys.readouterr().out.strip() == "not running"
    try:
        run(tasks.registry_start)
        address = capsys.readouterr().out.strip()
        assert address.startswith("127.0.0.1:")
        run(tasks.registry_start)  # idempotent: the same registry
        assert capsys.readouterr().out.strip() == address
        run(tasks.registry_status)
        assert f"running at {address}" in capsys.readouterr().out
        assert (project / ".kiln" / "registry" / "data").is_dir()
    finally:
        run(tasks.registry_stop)
    assert "stopped" in capsys.readouterr().err
    assert exit_code(tasks.registry_status) == 1


@pytest.mark.tool
def test_dry_run_reports_a_missing_binfmt_handler(
        project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from kiln import qemu

    monkeypatch.setattr(qemu, "BINFMT_DIR", tmp_path / "no-binfmt")
    monkeypatch.setenv("KILN_REGISTRY", "registry.example/g")
    run(tasks.build_arch, image="base", arch="s390x", dry_run=True)
    out = capsys.readouterr().out
    assert "PROBLEM" in out and "invoke binfmt-register" in out
    assert "--platform linux/s390x" in out
    assert exit_code(tasks.build_arch, image="base", arch="s390x") == 6


# -- task registration and the one task decorator ---------------------------------------------------

def test_a_task_module_that_fails_to_import_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken task module must not silently drop its tasks from the collection."""
    import importlib
    import sys

    for name in ("kiln.tasks", "kiln.tasks.mirror"):
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "kiln.tasks.mirror", None)  # "import kiln.tasks.mirror" fails
    with pytest.raises(ImportError):
        importlib.import_module("kiln.tasks")


def test_every_task_has_dry_run_and_json_and_settings_help() -> None:
    from kiln.tasks import TASK_MODULES, namespace
    from kiln.tasks.common import FLAG_HELP

    assert len(namespace.task_names) == sum(len(module.TASKS) for module in TASK_MODULES)
    for name in namespace.task_names:
        flags = {arg.name for arg in namespace[name].get_arguments()}
        helps = FLAG_HELP[name]
        assert {"dry_run", "json"} <= flags and flags == set(helps), name
        assert "KILN_DRY_RUN" in helps["dry_run"] and "KILN_JSON_OUTPUT" in helps["json"]


def test_kiln_task_turns_flags_into_settings(project: Path) -> None:
    from kiln.settings import Settings
    from kiln.tasks.common import kiln_task

    seen: list[tuple[Settings, str | None]] = []

    @kiln_task(flags=("image", "deps", "extra"), help={"extra": "a flag of the task's own"})
    def probe(c: object, settings: Settings, extra: str | None = None) -> None:
        """Probe."""
        seen.append((settings, extra))

    assert [a.name for a in probe.get_arguments()] == ["image", "deps", "extra", "dry_run", "json"]
    run(probe, image="app", deps=False, extra="x", dry_run=True)
    settings, extra = seen[-1]
    assert (settings.image, settings.deps, settings.dry_run, extra) == ("app", False, True, "x")
    run(probe)  # defaults = not given: the environment and pyproject apply
    assert seen[-1][0].deps is True and seen[-1][0].image is None

    with pytest.raises(TypeError, match="no help"):
        @kiln_task(flags=("extra",))
        def no_help(c: object, settings: Settings, extra: str | None = None) -> None:
            """No help."""


def test_invoke_parse_errors_exit_2_once_kiln_tasks_are_loaded(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """invoke's own program exits 1 on an unknown flag; with kiln's collection it exits 2."""
    import types

    from invoke.program import Program

    from kiln.tasks import namespace
    from kiln.tasks.program import KilnProgram, adopt_running_invoke

    running = Program(namespace=namespace, name="Invoke", binary="invoke")
    monkeypatch.setitem(__import__("sys").modules, "invoke.main",
                        types.SimpleNamespace(program=running))
    with pytest.raises(SystemExit) as before:
        running.run(["invoke", "images", "--bogus"])
    assert before.value.code == 1
    adopt_running_invoke()
    assert type(running) is KilnProgram
    for argv, message in ((["invoke", "images", "--bogus"], "No idea what '--bogus' is!"),
                          (["invoke", "nosuch"], "No idea what 'nosuch' is!"),
                          (["invoke", "build", "--image"], "--image needs a value")):
        with pytest.raises(SystemExit) as after:
            running.run(argv)
        assert after.value.code == 2
        assert f"error: {message}\n  hint: 'invoke --list'" in capsys.readouterr().err
