"""Output modes (CI sections, terminal, plain), ``--json`` summaries, exit codes and masking —
unit tests of :mod:`kiln.console` / :mod:`kiln.tasks.common`, then real task runs."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from invoke.context import MockContext
from invoke.exceptions import Exit

from conftest import require_tool
from helpers.images import push_test_image
from helpers.run import REPO_ROOT, clean_env, run_kiln
from kiln import console, proc
from kiln.errors import RegistryTransientError
from kiln.local_registry import RegistryServer
from kiln.registry.client import RegistryClient
from kiln.settings import Settings
from kiln.tasks.common import kiln_task

SECTION_START = re.compile(
    r"^\x1b\[0Ksection_start:(\d+):([a-z0-9_.-]+)(\[collapsed=true\])?\r\x1b\[0K(.*)$")
SECTION_END = re.compile(r"^\x1b\[0Ksection_end:(\d+):([a-z0-9_.-]+)\r\x1b\[0K$")


@pytest.fixture(autouse=True)
def _fresh_console(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts outside CI, without JSON mode and with no registered secrets."""
    for name in ("CI", "GITLAB_CI"):
        monkeypatch.delenv(name, raising=False)
    before = console.current()
    console.reset().begin("test")
    yield
    console.reset(before)


# -- masking -----------------------------------------------------------------------------------

def test_registered_secrets_and_token_shapes_are_masked() -> None:
    console.register_secret("pa55-word/with+chars")
    text = console.mask("login pa55-word/with+chars then pa55-word%2Fwith%2Bchars and "
                        "glpat-" + "x" * 20 + " and https://ci:hunter22@git.example.com/x.git")
    assert text == ("login [MASKED] then [MASKED] and [MASKED] and "
                    "https://ci:[MASKED]@git.example.com/x.git")


def test_env_secrets_registered_by_name_not_every_word() -> None:
    console.register_env_secrets({
        "CI_JOB_TOKEN": "job-token-value-123", "NPM_TOKEN": "npm-token-value",
        "SECRET_DETECTION_DISABLED": "true", "DB_PASSWORD_FILE": "/run/secrets/db",
        "MY_PASSWORD": "short", "HOME": "/root-home-folder", "API_KEY": "two words here",
        "KILN_BUILD_SECRETS": "id=npm,env=NPM_TOKEN", "KILN_REGISTRY_PASSWORD": "kiln-pw-value",
    })
    masked = console.mask("job-token-value-123 npm-token-value true /run/secrets/db short "
                          "/root-home-folder two words here id=npm,env=NPM_TOKEN kiln-pw-value")
    assert masked == ("[MASKED] [MASKED] true /run/secrets/db short /root-home-folder two words "
                      "here id=npm,env=NPM_TOKEN [MASKED]")


@pytest.mark.tool
def test_relayed_tool_output_and_failures_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    console.register_secret("tool-secret-42")
    proc.run(["sh", "-c", "echo streaming tool-secret-42"], stream=True)
    assert "streaming [MASKED]" in capsys.readouterr().err
    with pytest.raises(RegistryTransientError) as info:
        proc.run(["sh", "-c", "echo failing tool-secret-42 >&2; exit 3"], what="the tool",
                 error=RegistryTransientError)
    assert "tool-secret-42" not in str(info.value)
    assert "failing [MASKED]" in str(info.value)


# -- sections -----------------------------------------------------------------------------------

def test_section_lines_are_gitlab_format() -> None:
    assert console.section_start_line("build_app", "kiln: build app", 1700000000) == \
        "\x1b[0Ksection_start:1700000000:build_app[collapsed=true]\r\x1b[0Kkiln: build app"
    assert console.section_start_line("x", "h", 1, collapsed=False) == \
        "\x1b[0Ksection_start:1:x\r\x1b[0Kh"
    assert console.section_end_line("build_app", 1700000009) == \
        "\x1b[0Ksection_end:1700000009:build_app\r\x1b[0K"
    assert console.section_name("Build App: p-1/arm64") == "build_app_p-1_arm64"
    assert console.section_name("###") == "kiln"


def test_sections_in_ci_nest_and_close(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GITLAB_CI", "true")
    with console.section("build app", "build app"):
        console.info("inside")
        with console.section("push", "push app"):
            console.info("pushing")
    lines = capsys.readouterr().err.split("\n")
    starts = [SECTION_START.match(line) for line in lines]
    ends = [SECTION_END.match(line) for line in lines]
    assert [m[2] for m in starts if m] == ["build_app", "build_app.push"]
    assert [m[2] for m in ends if m] == ["build_app.push", "build_app"]
    assert lines[1] == "inside" and lines[3] == "pushing"
    assert "\x1b[0K" not in "".join(line for line in lines if "section" not in line)


def test_outside_ci_a_section_is_one_plain_line(capsys: pytest.CaptureFixture[str]) -> None:
    with console.section("build app", "build app"):
        console.info("inside")
    err = capsys.readouterr().err
    assert err == "kiln: build app\ninside\n"
    assert console.mode() == "plain"


# -- --json summary and exit codes ----------------------------------------------------------

def _task(body: object) -> object:
    """A task made with kiln's one decorator; calling the result runs it as invoke would."""
    @kiln_task()
    def the_task(c: object, settings: Settings) -> None:
        body()  # type: ignore[operator]

    return lambda: the_task(MockContext())


def test_json_document_on_success_and_failure(capsys: pytest.CaptureFixture[str]) -> None:
    def ok() -> None:
        console.set_json(True)
        console.record("tagged", image="r/app", tag="g-1", digest="sha256:" + "a" * 64)

    _task(ok)()  # type: ignore[operator]
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"task": "the-task", "ok": True, "exit_code": 0, "dry_run": False,
                   "results": [{"action": "tagged", "image": "r/app", "tag": "g-1",
                                "digest": "sha256:" + "a" * 64}]}

    def fails() -> None:
        console.set_json(True)
        console.register_secret("hunter2-secret")
        raise RegistryTransientError("registry down (password hunter2-secret)", hint="rerun")

    with pytest.raises(Exit) as info:
        _task(fails)()  # type: ignore[operator]
    assert info.value.code == 4
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["ok"] is False and doc["exit_code"] == 4
    assert doc["error"] == {"type": "RegistryTransientError",
                            "message": "registry down (password [MASKED])", "hint": "rerun"}
    assert "hunter2-secret" not in captured.out + captured.err


def test_without_json_nothing_on_stdout_and_unexpected_errors_exit_1(
        capsys: pytest.CaptureFixture[str]) -> None:
    _task(lambda: console.record("tagged", image="x"))()  # type: ignore[operator]
    assert capsys.readouterr().out == ""

    def bug() -> None:
        console.register_secret("bug-secret-77")
        raise ValueError("oops bug-secret-77")

    with pytest.raises(Exit) as info:
        _task(bug)()  # type: ignore[operator]
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "unexpected ValueError: oops [MASKED]" in err and "KILN_DEBUG=1" in err

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(Exit) as info:
        _task(interrupted)()  # type: ignore[operator]
    assert info.value.code == 130


def test_plan_lines_go_to_stderr_in_json_mode(capsys: pytest.CaptureFixture[str]) -> None:
    console.plan("PUT    r/app:g-1")
    assert capsys.readouterr().out == "PUT    r/app:g-1\n"
    console.set_json(True)
    console.plan("PUT    r/app:g-2")
    captured = capsys.readouterr()
    assert captured.out == "" and "PUT    r/app:g-2" in captured.err
    assert console.summary().plan == ["PUT    r/app:g-1", "PUT    r/app:g-2"]


# -- one Console object holds the state ------------------------------------------------------

def test_state_lives_in_a_console_object_and_reset_starts_fresh(
        capsys: pytest.CaptureFixture[str]) -> None:
    first = console.current()
    console.register_secret("first-secret-1")
    console.set_json(True)
    console.record("built", image="app")
    second = console.reset()
    assert console.current() is second and second is not first
    assert second.secrets == set() and not second.json and second.summary.results == []
    assert console.mask("first-secret-1") == "first-secret-1"  # the new console knows nothing
    assert first.mask("first-secret-1") == "[MASKED]" and first.summary.results
    console.reset(first)
    assert console.mask("first-secret-1") == "[MASKED]"


def test_module_functions_delegate_to_the_current_console() -> None:
    mine = console.Console(env={})
    console.reset(mine)
    console.begin("x")
    console.summary().mark_used()
    console.set_dry_run(True)
    console.register_secret("delegated-secret")
    assert mine.summary.task == "x" and mine.summary.used and mine.summary.dry_run
    assert "delegated-secret" in mine.secrets


@pytest.mark.parametrize("env", [
    {}, {"CI": "true"}, {"CI": "1"}, {"CI": "yes"}, {"GITLAB_CI": "true"}, {"CI": "false"},
    {"GITLAB_CI": "false", "CI": "true"}, {"CI_PIPELINE_ID": "12"}, {"CI": " TRUE "},
    {"CI": ""},
])
def test_ci_detection_has_one_answer(env: dict[str, str]) -> None:
    """The console's output mode and the pipeline context ask the same function."""
    from kiln.ci_context import CIContext, in_ci

    assert (console.Console(env=env).mode() == "ci") == in_ci(env) == CIContext.from_env(env).in_ci
    assert not hasattr(console, "in_ci")


# -- real runs ---------------------------------------------------------------------------------

def ci_env(registry: str, **extra: str) -> dict[str, str]:
    return {"CI": "true", "GITLAB_CI": "true", "CI_PIPELINE_ID": "41",
            "CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main",
            "CI_REGISTRY_IMAGE": registry, "IMAGE_NAME": "app", **extra}


@pytest.mark.real
def test_ci_log_has_sections_and_json_has_the_tags(tmp_path: Path,
                                                   registry: RegistryServer) -> None:
    require_tool("skopeo", "skopeo")
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-41")
    env = ci_env(host, CI_REGISTRY_PASSWORD="ci-pass-w0rd-1", CI_REGISTRY_USER="ci")
    done = run_raw(tmp_path, "tag", "--json", env=env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    with RegistryClient(host) as client:
        digest = client.head_manifest("app", "p-41").digest  # type: ignore[union-attr]
    assert [(r["action"], r["image"], r["tag"], r["digest"]) for r in doc["results"]] == [
        ("tagged", f"{host}/app", "g-41", digest), ("tagged", f"{host}/app", "latest", digest)]
    lines = done.stderr.split("\n")
    start = next(i for i, line in enumerate(lines) if SECTION_START.match(line))
    end = next(i for i, line in enumerate(lines) if SECTION_END.match(line))
    assert SECTION_START.match(lines[start])[2] == "tag_app"  # type: ignore[index]
    assert start < end and any("GET" in line for line in lines[start:end])
    assert any(f"tag: {host}/app:g-41 -> {digest} (written)" in line for line in lines[end:])
    assert "\x1b[1m" not in done.stderr  # plain lines in CI: no colours

    failed = run_kiln(tmp_path, "manifest", "--json", env={**env, "IMAGE_ARCHES": "s390x"})
    assert failed.returncode == 2
    doc = json.loads(failed.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2 and "p-41-s390x" in doc["error"]["message"]
    assert "ci-pass-w0rd-1" not in failed.stdout + failed.stderr + done.stdout + done.stderr


def run_raw(project: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Like ``run_kiln`` but without universal newlines: a section line's ``\\r`` survives."""
    done = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), *args],
                          cwd=project, env=clean_env(env), capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


@pytest.mark.real
def test_terminal_gets_colours_and_a_pipe_gets_plain_lines(tmp_path: Path) -> None:
    """A real pseudo-terminal: rich styles the step lines; through a pipe they are plain."""
    (tmp_path / "builds").mkdir()
    (tmp_path / "builds" / "app.in").write_text("FROM scratch\n")
    env = clean_env({"TERM": "xterm-256color", "COLUMNS": "120"})
    env.pop("NO_COLOR", None)
    argv = [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), "deploy-mr",
            "--image", "app"]
    master, slave = pty.openpty()
    child = subprocess.Popen(argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    output = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    child.wait(timeout=30)
    os.close(master)
    assert child.returncode == 2  # no merge request
    text = output.decode()
    assert "\x1b[" in text and "no merge request" in text
    piped = run_kiln(tmp_path, "deploy-mr", "--image", "app")
    assert piped.returncode == 2
    assert "\x1b[" not in piped.stderr and "error: no merge request" in piped.stderr


@pytest.mark.parametrize(("codes", "expected"), [
    ((4,), 4), ((4, 4), 4), ((4, 2), 2), ((2, 3, 4), 3), ((4, 1), 1), ((5, 4), 5), ((0,), 1),
])
def test_mirror_exit_code_of_mixed_failures(codes: tuple[int, ...], expected: int) -> None:
    """Only an all-transient run says 'retry' (4); otherwise the code of what must be fixed."""
    from kiln.mirror.config import parse_config
    from kiln.mirror.run import FAILED, MirrorReport, Outcome, failure_of

    names = [f"library/img{i}:1" for i in range(len(codes))]
    config = parse_config("images:\n" + "".join(f"  - {n}\n" for n in names), "m.yml",
                          {"REGISTRY": "registry.example.com"})
    report = MirrorReport([Outcome(image, FAILED, "x", exit_code=code)
                           for image, code in zip(config.images, codes, strict=True)], False)
    failure = failure_of(report)
    assert failure is not None and failure.exit_code == expected
