"""The building blocks (``setup-from-base``, ``python-requirements``, ``cleanup``) and the repo's
build files, through real GNU cpp (the reference: ``cpp -E -P -traditional -undef -nostdinc``)
and through kiln's preprocessor: same meaning, no warnings, valid shell after cpp's line
joining, found through the include search path. What the blocks do inside an image is
tested by tests/test_images_real.py with real builds.

What the blocks contain is checked on kiln's output (unit tier, no cpp needed); that kiln's
output means the same as GNU cpp's is checked by the ``tool`` tests, which need cpp by the rule
of ``helpers.gnu_cpp.require_gnu_cpp``: skipped on a workstation without it, a failure in CI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, require_tool
from helpers.gnu_cpp import gnu_cpp as run_gnu_cpp
from kiln import preprocess
from kiln.containerfile import logical_lines, parse_from_lines
from kiln.preprocess import default_include_path, preprocess_file, preprocess_text

PACKAGE_INCLUDES = Path(preprocess.__file__).resolve().parent / "includes"
BLOCKS = ("setup-from-base", "python-requirements", "cleanup")
IMAGES = ("base", "python", "backend", "busybox")
REPO_INCLUDES = REPO_ROOT / "includes"


def gnu_cpp(text: str, *dirs: Path) -> str:
    """GNU cpp as buildah runs it (stdin; plus -P -nostdinc): the first directory is -iquote,
    the others -I. Fails the test on any diagnostic."""
    done = run_gnu_cpp(text, dirs[0] if dirs else None, dirs[1:])
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def meaning(text: str) -> list[str]:
    """Dockerfile instructions with continuations joined and whitespace runs collapsed: what
    buildah sees, whatever cpp did with blank lines and backslash-newlines."""
    return [" ".join(line.split()) for _, line in logical_lines(text)]


def kiln_cpp(path: Path, context: Path, repo_includes: Path | None) -> str:
    result = preprocess_file(path, default_include_path(context, repo_includes), strict=True)
    assert result.diagnostics == ()
    return result.text


def kiln_text(source: str) -> str:
    """kiln's output for a build file ``source`` that includes the package's blocks."""
    return preprocess_text(source, Path("app.in"), [PACKAGE_INCLUDES], strict=True).text


WITH_MACROS = ('#define APP_DIR services/api\n#define PIP_OPTIONS "--no-index --find-links /w"\n'
               '#include "python-requirements"\n')


# -- each block on its own ----------------------------------------------------------------------

@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.tool
def test_block_is_the_same_under_gnu_cpp_and_kiln_without_warnings(block: str) -> None:
    path = PACKAGE_INCLUDES / block
    ours = kiln_cpp(path, PACKAGE_INCLUDES, None)
    reference = gnu_cpp(path.read_text(encoding="utf-8"))
    assert meaning(ours) == meaning(reference)
    assert meaning(ours), f"{block} produced no instructions"
    # The header comment is gone, and nothing after it was swallowed by a stray comment opener.
    assert "/*" not in ours and "*/" not in reference.replace('"*/.cache/pip"', "")


@pytest.mark.tool
@pytest.mark.parametrize("source", ['#include "setup-from-base"\n', WITH_MACROS,
                                    '#define BASE_IMAGE_NAME python\n#include "setup-from-base"\n'])
def test_blocks_used_with_macros_are_the_same_under_gnu_cpp_and_kiln(source: str) -> None:
    assert meaning(kiln_text(source)) == meaning(gnu_cpp(source, PACKAGE_INCLUDES))


def test_setup_from_base_defaults() -> None:
    text = kiln_text('#include "setup-from-base"\n')
    assert meaning(text) == [
        "ARG REGISTRY", "ARG BASE_REGISTRY=${REGISTRY}", "ARG BASE_IMAGE=python",
        "ARG BASE_IMAGE_TAG=latest",
        "FROM ${BASE_REGISTRY}/${BASE_IMAGE}:${BASE_IMAGE_TAG}",
        "ARG REGISTRY", "ARG BASE_REGISTRY", "ARG BASE_IMAGE", "ARG BASE_IMAGE_TAG",
    ]
    # Another project's registry (a service repository building FROM the image repository's base).
    froms = parse_from_lines(text, {"REGISTRY": "r", "BASE_REGISTRY": "reg.example/images"})
    assert [f.image for f in froms] == ["reg.example/images/python:latest"]
    froms = parse_from_lines(text, {"REGISTRY": "reg.example/group", "BASE_IMAGE_TAG": "p-7"})
    assert [f.image for f in froms] == ["reg.example/group/python:p-7"]
    # A build argument still overrides the default the build file chose.
    froms = parse_from_lines(text, {"REGISTRY": "r", "BASE_IMAGE": "python"})
    assert [f.image for f in froms] == ["r/python:latest"]


def test_python_requirements_defaults_and_macros() -> None:
    default = meaning(kiln_text('#include "python-requirements"\n'))
    assert 'ARG PIP_INSTALL_OPTIONS=""' in default
    assert "COPY ./run.sh ./requirements*.txt /code/" in default
    assert "COPY . /code" in default
    assert 'ENTRYPOINT ["/code/run.sh"]' in default and "WORKDIR /code" in default

    reference = meaning(kiln_text(WITH_MACROS))
    assert 'ARG PIP_INSTALL_OPTIONS="--no-index --find-links /w"' in reference
    assert "COPY services/api/run.sh services/api/requirements*.txt /code/" in reference
    assert "COPY services/api /code" in reference
    runs = [line for line in reference if line.startswith("RUN ")]
    assert len(runs) == 2 and all("$PIP_INSTALL_OPTIONS" in run for run in runs)
    assert "-r /code/requirements.txt" in runs[0]
    assert "[ -f /code/pyproject.toml ] || [ -f /code/setup.cfg ] || [ -f /code/setup.py ]" in runs[1]


def test_cleanup_covers_dnf_apt_and_pip_without_a_glob() -> None:
    (run,) = meaning(kiln_text('#include "cleanup"\n'))
    for needle in ("dnf clean all", "yum clean all", "apt-get clean", "/var/lib/apt/lists",
                   "/root/.cache/pip", "-mindepth 1 ! -type d -exec rm -f {} +"):
        assert needle in run
    assert "lists/*" not in run


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.tool
def test_run_steps_are_valid_shell_after_cpp(block: str) -> None:
    """cpp joins backslash-continued lines into one: every RUN must still parse as sh."""
    sh = require_tool("sh", "dash")
    runs = [line[4:] for line in meaning(gnu_cpp((PACKAGE_INCLUDES / block).read_text()))
            if line.startswith("RUN ")]
    for command in runs:
        done = subprocess.run([sh, "-n", "-c", command], capture_output=True, text=True)
        assert done.returncode == 0, f"{block}: {done.stderr}\n{command}"


# -- the repository's build files ---------------------------------------------------------------

@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.tool
def test_build_file_same_meaning_under_gnu_cpp_and_kiln(image: str) -> None:
    path = REPO_ROOT / "builds" / f"{image}.in"
    ours = kiln_cpp(path, REPO_ROOT, REPO_INCLUDES)
    # buildah: cpp -iquote <context>; kiln adds the repo's and the package's includes.
    reference = gnu_cpp(path.read_text(encoding="utf-8"), REPO_ROOT, REPO_INCLUDES,
                        PACKAGE_INCLUDES)
    assert meaning(ours) == meaning(reference)
    sh = require_tool("sh", "dash")
    for line in meaning(ours):
        if line.startswith("RUN "):
            done = subprocess.run([sh, "-n", "-c", line[4:]], capture_output=True, text=True)
            assert done.returncode == 0, f"{image}: {done.stderr}\n{line}"


@pytest.mark.parametrize(("image", "expected"), [
    ("base", "docker.io/library/debian:bookworm"),
    ("python", "127.0.0.1:5000/base:latest"),
    ("backend", "127.0.0.1:5000/python:latest"),
    ("busybox", "docker.io/library/busybox:latest"),
])
def test_build_file_from_lines_name_the_base(image: str, expected: str) -> None:
    """kiln orders builds by FROM lines: backend needs python, python needs base."""
    text = kiln_cpp(REPO_ROOT / "builds" / f"{image}.in", REPO_ROOT, REPO_INCLUDES)
    args = {"REGISTRY": "127.0.0.1:5000", "UPSTREAM_REGISTRY": "docker.io",
            "BASE_IMAGE_TAG": "latest"}
    assert [f.image for f in parse_from_lines(text, args)] == [expected]
    local = parse_from_lines(text, {**args, "UPSTREAM_REGISTRY": "127.0.0.1:5000/mirror"})
    assert local[0].image == expected.replace("docker.io", "127.0.0.1:5000/mirror")


def test_backend_uses_the_three_blocks_in_order() -> None:
    result = preprocess_file(REPO_ROOT / "builds" / "backend.in",
                             default_include_path(REPO_ROOT, REPO_INCLUDES), strict=True)
    assert [p.name for p in result.included_files[1:]] == list(BLOCKS)
    lines = meaning(result.text)
    assert "COPY services/backend /code" in lines
    assert 'ARG PIP_INSTALL_OPTIONS="--no-index --no-build-isolation"' in lines
    assert lines[-2].startswith("RUN ") and "apt-get clean" in lines[-2]  # cleanup, then USER
    assert lines[-1] == "USER 1000:1000"


def test_backend_service_has_what_python_requirements_needs() -> None:
    app = REPO_ROOT / "services" / "backend"
    run = app / "run.sh"
    assert run.is_file() and run.stat().st_mode & 0o111, "run.sh must exist and be executable"
    assert run.read_text().startswith("#!/bin/sh")
    assert (app / "pyproject.toml").is_file()


# -- one copy of each block, found through the search path -------------------------------------

@pytest.mark.parametrize("block", BLOCKS)
def test_repo_includes_are_links_to_the_package_blocks(block: str) -> None:
    """No second copy that could drift: includes/<block> is a relative symlink into the package."""
    link = REPO_INCLUDES / block
    assert link.is_symlink(), f"{link} must be a symlink to ../src/kiln/includes/{block}"
    assert not Path(link.readlink()).is_absolute()
    assert link.resolve() == (PACKAGE_INCLUDES / block).resolve()


def write_app_using_the_blocks(tmp_path: Path) -> Path:
    (tmp_path / "builds").mkdir()
    build_file = tmp_path / "builds" / "app.in"
    build_file.write_text('#define BASE_IMAGE_NAME python\n#include "setup-from-base"\n'
                          '#include "python-requirements"\n#include "cleanup"\n')
    return build_file


def test_package_blocks_are_found_when_the_repo_has_no_includes(tmp_path: Path) -> None:
    build_file = write_app_using_the_blocks(tmp_path)
    path = default_include_path(tmp_path, None)
    result = preprocess_file(build_file, path, strict=True)
    assert [p.resolve() for p in result.included_files[1:]] == [
        (PACKAGE_INCLUDES / b).resolve() for b in BLOCKS]
    # An includes/ folder without the block still falls through to the package.
    (tmp_path / "includes").mkdir()
    (tmp_path / "includes" / "other").write_text("RUN true\n")
    result = preprocess_file(build_file, default_include_path(tmp_path, tmp_path / "includes"))
    assert [p.resolve().parent for p in result.included_files[1:]] == [PACKAGE_INCLUDES] * 3


@pytest.mark.tool
def test_package_blocks_mean_the_same_as_under_gnu_cpp_with_their_directory(tmp_path: Path) -> None:
    build_file = write_app_using_the_blocks(tmp_path)
    (tmp_path / "includes").mkdir()
    result = preprocess_file(build_file, default_include_path(tmp_path, tmp_path / "includes"))
    assert meaning(result.text) == meaning(gnu_cpp(build_file.read_text(), tmp_path,
                                                   tmp_path / "includes", PACKAGE_INCLUDES))


def test_a_repo_block_of_the_same_name_overrides_the_package_one(tmp_path: Path) -> None:
    (tmp_path / "includes").mkdir()
    (tmp_path / "includes" / "cleanup").write_text("RUN echo our own cleanup\n")
    build_file = tmp_path / "app.in"
    build_file.write_text("FROM scratch\n#include \"cleanup\"\n")
    result = preprocess_file(build_file, default_include_path(tmp_path / "ctx",
                                                              tmp_path / "includes"))
    assert meaning(result.text) == ["FROM scratch", "RUN echo our own cleanup"]


@pytest.mark.tool
def test_the_blocks_ship_as_package_data(tmp_path: Path) -> None:
    """Other repositories get the blocks by installing kiln: setuptools copies them with the
    package (``build_py``, the step that fills a wheel), from the pyproject configuration."""
    source = tmp_path / "src"
    shutil.copytree(REPO_ROOT, source, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".kiln", ".nox", ".venv", "*_cache",
                                                  "__pycache__", "build", "*.egg-info",
                                                  ".gitlab-ci-local", "tests", "services"))
    out = tmp_path / "lib"
    done = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
         "-d", str(out)], cwd=source, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for block in BLOCKS:
        shipped = out / "kiln" / "includes" / block
        assert shipped.is_file() and not shipped.is_symlink()
        assert shipped.read_bytes() == (PACKAGE_INCLUDES / block).read_bytes()
    assert (out / "kiln" / "preprocess.py").is_file()
