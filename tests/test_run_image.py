"""``invoke run``: the pure decisions (environment, command, /code overlay, masking, the words
after ``--``) as unit tests, then the task for real: the backend image built with kiln and run
with buildah (``--self-test``, ``--env``, ``--code``, the exit code passed through)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO_ROOT, require_tool, skip_or_fail
from helpers.run import run_kiln
from kiln import build, console, seed
from kiln.buildah import Buildah
from kiln.errors import InputError
from kiln.local_registry import RegistryServer
from kiln.run_image import (
    APP_DIR_LABEL,
    code_folder,
    container_command,
    parse_env,
    run_image,
    shown_command,
)
from kiln.settings import Settings
from kiln.tasks import namespace
from kiln.tasks.run import remainder_args
from test_seed import SEED_CACHE, unmount_storage

DRIVER = "overlay"


# -- unit: decisions ----------------------------------------------------------------------------

def test_env_pairs_and_names_from_the_environment() -> None:
    assert parse_env(["A=1", "B=x=y", "EMPTY="], {}) == {"A": "1", "B": "x=y", "EMPTY": ""}
    assert parse_env(["HOME"], {"HOME": "/root"}) == {"HOME": "/root"}
    with pytest.raises(InputError, match="'1A' is not a variable name"):
        parse_env(["1A=x"], {})
    with pytest.raises(InputError, match="NOPE is not set") as err:
        parse_env(["NOPE"], {})
    assert "--env NOPE=value" in str(err.value.hint)


def test_the_command_is_entrypoint_then_args_else_cmd() -> None:
    config = {"config": {"Entrypoint": ["/code/run.sh"], "Cmd": ["--serve"]}}
    assert container_command(config, [], "img") == ["/code/run.sh", "--serve"]
    assert container_command(config, ["--self-test"], "img") == ["/code/run.sh", "--self-test"]
    assert container_command({"config": {"Cmd": ["bash"]}}, [], "img") == ["bash"]
    assert container_command({"config": {"Cmd": ["bash"]}}, ["sh", "-c", "x"], "img") == [
        "sh", "-c", "x"]
    with pytest.raises(InputError, match="neither ENTRYPOINT nor CMD"):
        container_command({"config": {}}, [], "img")


def test_code_folder_is_the_images_app_dir_or_the_given_path(tmp_path: Path) -> None:
    (tmp_path / "services" / "api").mkdir(parents=True)
    labels = {APP_DIR_LABEL: "services/api"}
    assert code_folder(tmp_path, None, labels) is None
    assert code_folder(tmp_path, True, labels) == tmp_path / "services" / "api"
    assert code_folder(tmp_path, True, {}) == tmp_path
    assert code_folder(tmp_path, "services", labels) == tmp_path / "services"
    with pytest.raises(InputError, match="is not a folder"):
        code_folder(tmp_path, "nowhere", labels)


def test_shown_commands_hide_credential_values() -> None:
    console.register_secret("hunter2-registered")
    argv = Buildah().run_command("c1", ["/code/run.sh"], env={
        "DB_PASSWORD": "s3cret-value", "MODE": "dev", "X": "hunter2-registered"})
    shown = shown_command(argv, {"DB_PASSWORD": "s3cret-value", "MODE": "dev"})
    assert "DB_PASSWORD=***" in shown and "MODE=dev" in shown
    assert "s3cret-value" not in shown and "hunter2-registered" not in shown


def test_words_after_double_dash_keep_their_quoting() -> None:
    argv = ["invoke", "run", "--image", "x", "--", "sh", "-c", "echo a b"]
    assert remainder_args("sh -c echo a b", argv) == ["sh", "-c", "echo a b"]
    assert remainder_args("--self-test", ["kiln"]) == ["--self-test"]
    assert remainder_args("", ["invoke", "run"]) == []


def test_buildah_from_run_rm_command_lines() -> None:
    buildah = Buildah(root=Path("/r"), runroot=Path("/rr"), storage_driver="vfs")
    assert buildah.from_command("reg/x:p-1", pull=False) == [
        "buildah", "--root", "/r", "--runroot", "/rr", "--storage-driver", "vfs",
        "from", "--quiet", "--pull-never", "reg/x:p-1"]
    assert buildah.from_command("reg/x:p-1", tls_verify=False, authfile=Path("/a.json"))[7:] == [
        "from", "--quiet", "--tls-verify=false", "--authfile", "/a.json", "reg/x:p-1"]
    assert buildah.run_command("c1", ["/code/run.sh", "--self-test"], env={"A": "1"},
                               volumes=["/src:/code"], workdir="/code")[7:] == [
        "run", "--isolation", "chroot", "--env", "A=1", "-v", "/src:/code",
        "--workingdir", "/code", "c1", "--", "/code/run.sh", "--self-test"]
    assert buildah.run_command("c1", ["sh"], cap_add=["CAP_SYS_ADMIN"])[7:] == [
        "run", "--isolation", "chroot", "--cap-add", "CAP_SYS_ADMIN", "c1", "--", "sh"]
    assert buildah.rm_command("c1")[7:] == ["rm", "c1"]


def test_run_is_a_task_with_repeatable_env_and_optional_code() -> None:
    task = namespace["run"]
    names = {arg.name for arg in task.get_arguments()}
    assert {"image", "registry", "arch", "env", "code", "cap_add", "dry_run", "json"} <= names
    by_name = {arg.name: arg for arg in task.get_arguments()}
    assert by_name["env"].kind is list and by_name["code"].optional


def test_dry_run_prints_the_commands_and_starts_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings.resolve(tmp_path, {}, {}, {
        "state_dir": str(tmp_path / "state"), "registry": "127.0.0.1:5999", "dry_run": True})
    code = run_image(settings, "backend", env=["API_TOKEN=tok-123456", "MODE=dev"], code=True,
                     args=["--self-test"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 0
    assert "from --quiet --tls-verify=false 127.0.0.1:5999/backend:p-local" in text
    assert "API_TOKEN=***" in text and "MODE=dev" in text and "tok-123456" not in text
    assert "--workingdir /code" in text and "--self-test" in text


def test_no_image_and_no_registry_says_build_it_first(tmp_path: Path) -> None:
    settings = Settings.resolve(tmp_path, {}, {}, {"state_dir": str(tmp_path / "state"),
                                                   "dry_run": True})
    with pytest.raises(InputError, match="no image backend:p-local") as err:
        run_image(settings, "backend")
    assert "invoke build --image backend" in str(err.value.hint)


# -- real: the backend image ----------------------------------------------------------------

@pytest.fixture(scope="module")
def built_backend(shared_registry: RegistryServer, buildah_storage: dict[str, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """backend (and base, python) built by kiln into the session's registry under
    ``workflow/`` (tests/test_build_file_documented.py builds python there too: same build
    args, so buildah's layer cache serves the second); the environment that makes ``invoke
    run`` use that registry and this session's storage."""
    for tool, package in (("buildah", "buildah"), ("skopeo", "skopeo")):
        require_tool(tool, package)
    if os.geteuid() != 0 and not list(SEED_CACHE.glob("debian-bookworm-*/manifest.json")):
        skip_or_fail("the offline Debian image needs root once (debootstrap)")
    settings = workflow_settings(shared_registry, buildah_storage,
                                 tmp_path_factory.mktemp("run-state"))
    seed.seed_upstream(settings, shared_registry.address, names=["library/debian:bookworm"],
                       cache_dir=SEED_CACHE)
    results = build.build(settings, "backend")
    assert results[-1].ref == f"{settings.registry}/backend:p-local"
    yield {"KILN_REGISTRY": str(settings.registry), "KILN_STATE_DIR": str(settings.state_dir),
           "KILN_STORAGE_ROOT": str(buildah_storage["root"]),
           "KILN_STORAGE_RUNROOT": str(buildah_storage["runroot"]),
           "STORAGE_DRIVER": DRIVER}
    unmount_storage(buildah_storage)


def workflow_settings(registry: RegistryServer, storage: dict[str, Path], state: Path,
                      project: Path = REPO_ROOT, **values: object) -> Settings:
    """Settings of this repository (or ``project``) building into ``<registry>/workflow`` with
    the offline mirror of the same registry, in the session's storage."""
    return Settings.resolve(project, {}, {}, {
        "state_dir": str(state), "storage_root": str(storage["root"]),
        "storage_runroot": str(storage["runroot"]), "storage_driver": DRIVER,
        "registry": f"{registry.address}/workflow",
        "upstream_registry": f"{registry.address}/mirror", **values})


@pytest.mark.real
def test_invoke_run_backend_self_test(built_backend: dict[str, str]) -> None:
    done = run_kiln(REPO_ROOT, "run", "--image", "backend", "--", "--self-test",
                    env=built_backend)
    assert done.returncode == 0, done.stderr
    machine = os.uname().machine
    assert done.stdout.strip() == \
        f"self-test ok: backend 0.1.0 on Python 3.11.2 ({machine})", done.stdout


@pytest.mark.real
def test_invoke_run_env_code_and_exit_code(built_backend: dict[str, str],
                                           tmp_path: Path) -> None:
    """--code=PATH is the image's /code (here a run.sh of the test's own), --env reaches it,
    the arguments follow the entry point, and its exit code is the task's."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "run.sh").write_text('#!/bin/sh\necho "greeting=$GREETING args=$* pwd=$(pwd)"\n'
                                 'test -f /code/marker && echo overlaid\nexit 7\n')
    (code / "run.sh").chmod(0o755)
    (code / "marker").write_text("")
    done = run_kiln(REPO_ROOT, "run", "--image", "backend", "--env", "GREETING=hi there",
                    f"--code={code}", "--", "one", "two words", env=built_backend)
    assert done.returncode == 7, done.stderr
    assert done.stdout.splitlines() == ["greeting=hi there args=one two words pwd=/code",
                                        "overlaid"]
    assert "the container exited with code 7" in done.stderr
    # The throwaway container is gone.
    containers = subprocess.run(
        ["buildah", "--root", built_backend["KILN_STORAGE_ROOT"], "--runroot",
         built_backend["KILN_STORAGE_RUNROOT"], "--storage-driver", DRIVER, "containers",
         "--format", "{{.ImageName}}"], capture_output=True, text=True, check=True).stdout
    assert "backend:p-local" not in containers


@pytest.mark.real
def test_invoke_run_code_overlays_the_apps_own_folder(built_backend: dict[str, str]) -> None:
    """A bare --code overlays services/backend (the image's kiln.app-dir label) at /code:
    the service still answers from the working tree's copy."""
    done = run_kiln(REPO_ROOT, "run", "--image", "backend", "--code", "--", "--self-test",
                    env=built_backend)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("self-test ok: backend 0.1.0"), done.stdout
    assert f"{REPO_ROOT / 'services' / 'backend'} at /code" in done.stderr


@pytest.mark.real
def test_invoke_run_unknown_image_is_bad_input(built_backend: dict[str, str]) -> None:
    done = run_kiln(REPO_ROOT, "run", "--image", "nosuch", env=built_backend)
    assert done.returncode == 2, done.stderr
    assert f"no image {built_backend['KILN_REGISTRY']}/nosuch:p-local" in done.stderr
    assert "invoke build --image nosuch" in done.stderr
