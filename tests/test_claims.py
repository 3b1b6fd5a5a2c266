"""README promises that had no test (docs/claims.md lists every promise and its test).

Unit tier, except where marked: the private-image rule for builds, skips that must fail in CI,
the cpp comparison that must not vanish, and Python modules newer interpreters removed.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO_ROOT, require_root, require_tool, skip_or_fail
from helpers.run import run_kiln
from kiln import build
from kiln.errors import ConfigError
from kiln.settings import load_settings

TESTS = REPO_ROOT / "tests"
TEST_FILES = sorted([*TESTS.rglob("*.py"), *(REPO_ROOT / "services").rglob("tests/*.py")])


# -- private = true holds for build/publish, not only for promotion ---------------------------

def _private_project(root: Path) -> Path:
    (root / "builds").mkdir(parents=True)
    (root / "builds" / "app.in").write_text("FROM scratch\nCOPY payload /payload\n")
    (root / "payload").write_text("x\n")
    (root / "pyproject.toml").write_text("[tool.kiln.images.app]\nprivate = true\n")
    return root


@pytest.mark.tool  # the plan reads git (OCI source labels) before the check
@pytest.mark.parametrize("registry", ["quay.io/team", "docker.io/team", "index.docker.io/t"])
def test_build_refuses_to_push_a_private_image_to_a_public_registry(tmp_path: Path,
                                                                    registry: str) -> None:
    project = _private_project(tmp_path)
    settings = load_settings(project, {"KILN_REGISTRY": registry}, dry_run=True)
    with pytest.raises(ConfigError) as info:
        build.build(settings, "app")
    assert info.value.exit_code == 2
    host = registry.split("/")[0]
    assert f"image 'app' is private but {registry}/app is on a public registry ({host})" in str(
        info.value)
    assert not (project / ".kiln").exists()  # nothing written, not even the Containerfile


@pytest.mark.tool  # the plan reads git for the OCI source labels
def test_build_of_a_private_image_to_a_private_registry_or_without_push_is_allowed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = _private_project(tmp_path)
    for env, flags in (({"KILN_REGISTRY": "registry.example.com/team"}, {}),
                       ({"KILN_REGISTRY": "quay.io/team"}, {"push": False})):
        settings = load_settings(project, env, dry_run=True, **flags)
        build.build(settings, "app")
    assert "buildah" in capsys.readouterr().out


@pytest.mark.tool  # the plan reads git (OCI source labels) before the check
def test_a_private_dependency_is_not_pushed_either(tmp_path: Path) -> None:
    """The base image that the build pushes first is checked too, not only the image asked for."""
    project = tmp_path
    (project / "builds").mkdir()
    (project / "builds" / "base.in").write_text("FROM scratch\nCOPY payload /payload\n")
    (project / "builds" / "app.in").write_text(
        "ARG REGISTRY\nFROM ${REGISTRY}/base:latest\nCOPY payload /p2\n")
    (project / "payload").write_text("x\n")
    (project / "pyproject.toml").write_text("[tool.kiln.images.base]\nprivate = true\n")
    settings = load_settings(project, {"KILN_REGISTRY": "quay.io/team"}, dry_run=True)
    with pytest.raises(ConfigError, match="image 'base' is private"):
        build.build(settings, "app")


@pytest.mark.tool
def test_invoke_build_dry_run_of_a_private_image_to_quay_exits_2(tmp_path: Path) -> None:
    """The README's promise as a user meets it: ``invoke build --dry-run`` (what ``nox -s
    publish`` runs) with ``KILN_REGISTRY=quay.io/team`` plans nothing and exits 2."""
    project = _private_project(tmp_path)
    done = run_kiln(project, "build", "--image", "app", "--dry-run",
                    env={"KILN_REGISTRY": "quay.io/team"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error: image 'app' is private but quay.io/team/app is on a public registry" in (
        done.stderr)
    assert "buildah" not in done.stdout and "Traceback" not in done.stderr


# -- every skip fails in CI -------------------------------------------------------------------

# The one allowed bare skip: an opt-in marker (`pytest -m ci_image`), not a missing tool.
ALLOWED_SKIPS = {("tests/test_ci_image.py", "opt-in: pytest -m ci_image")}
_SKIP_CALLS = {"skip", "importorskip", "skipif", "xfail"}


def _skip_lines(path: Path) -> list[int]:
    """Lines of every pytest.skip/importorskip/mark.skip/skipif/xfail in ``path``."""
    return sorted(node.lineno for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                  if isinstance(node, ast.Attribute) and node.attr in _SKIP_CALLS
                  and ast.unparse(node.value) in {"pytest", "pytest.mark"})


def test_no_test_skips_except_through_skip_or_fail() -> None:
    """A skip that ignores ``CI`` lets a test vanish from a pipeline (non-root skips, missing
    hadolint or busybox, importorskip('bcrypt')): every skip goes through conftest's
    ``skip_or_fail``/``require_tool``/``require_root``, which fail when ``CI`` is set."""
    offenders = []
    for path in TEST_FILES:
        rel = str(path.relative_to(REPO_ROOT))
        if rel == "tests/conftest.py":
            continue
        text = path.read_text(encoding="utf-8")
        for line in _skip_lines(path):
            context = text.splitlines()[line - 1]
            if any(rel == f and why in context for f, why in ALLOWED_SKIPS):
                continue
            if "pytest.skip.Exception" in context:
                continue  # pytest.raises(pytest.skip.Exception): a test of a skip rule itself
            offenders.append(f"{rel}:{line}: {context.strip()}")
    assert offenders == []


def _outcome(call: Callable[[], object]) -> tuple[str, str]:
    """How ``call`` ends a test: ("Failed" | "Skipped" | "returned", message). Caught as
    BaseException so that a skip cannot pass for (or hide) this test."""
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - pytest's outcomes are BaseExceptions
        return type(exc).__name__, str(exc)
    return "returned", ""


def test_skip_or_fail_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    calls = {"skip_or_fail": lambda: skip_or_fail("hadolint not installed"),
             "require_tool": lambda: require_tool("busybox", "busybox-static"),
             "require_root": lambda: require_root("the offline Debian image needs root once")}
    monkeypatch.setenv("CI", "true")
    in_ci = {name: _outcome(call) for name, call in calls.items()}
    monkeypatch.delenv("CI")
    local = {name: _outcome(call) for name, call in calls.items()}
    assert {name: kind for name, (kind, _) in in_ci.items()} == dict.fromkeys(calls, "Failed")
    assert {name: kind for name, (kind, _) in local.items()} == dict.fromkeys(calls, "Skipped")
    assert "CI is set" in in_ci["skip_or_fail"][1]
    assert "busybox not installed (apt-get install busybox-static)" in in_ci["require_tool"][1]
    assert "needs root once (not root)" in local["require_root"][1]


def _required_tools() -> set[tuple[str, str]]:
    """(tool, package) pairs the tests pass to ``require_tool``, literally or in a loop."""
    pairs: set[tuple[str, str]] = set()
    for path in TEST_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and ast.unparse(node.func) == "require_tool"
                    and all(isinstance(a, ast.Constant) for a in node.args[:2])
                    and len(node.args) >= 2):
                pairs.add((node.args[0].value, node.args[1].value))  # type: ignore[attr-defined]
            if (isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple)
                    and "require_tool" in ast.unparse(node)):
                for item in node.iter.elts:
                    if isinstance(item, ast.Tuple) and len(item.elts) == 2 and all(
                            isinstance(e, ast.Constant) for e in item.elts):
                        pairs.add((item.elts[0].value, item.elts[1].value))  # type: ignore[attr-defined]
    return pairs


def setup_packages() -> set[str]:
    """The Debian packages ``ci/setup-host.sh`` installs (its APT_PACKAGES array)."""
    text = (REPO_ROOT / "ci" / "setup-host.sh").read_text(encoding="utf-8")
    block = re.search(r"^APT_PACKAGES=\((.*?)^\)", text, re.M | re.S)
    assert block, "ci/setup-host.sh has no APT_PACKAGES=( ... )"
    words = []
    for line in block.group(1).splitlines():
        words += shlex.split(line.split("#")[0])
    return set(words)


def test_setup_host_installs_every_tool_a_test_requires() -> None:
    """In CI a missing tool fails its tests; the set-up script must therefore install each one
    (GNU cpp for the preprocessor comparison included: it cannot vanish from a pipeline)."""
    installed = setup_packages() | {"dash", "dpkg"}  # Essential: on every Debian system
    script = (REPO_ROOT / "ci" / "setup-host.sh").read_text(encoding="utf-8")
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    required = _required_tools()
    assert ("cpp", "cpp") in required, "the cpp comparison asks for cpp"
    missing = set()
    for tool, package in required:
        if package.startswith("pip install "):  # kiln (pip install -e) or one of its dependencies
            name = package.split()[-1]
            ok = name in {"-e", "."} or f'"{name}' in pyproject
        elif package.startswith("npm install "):
            ok = f"npm install -g --no-fund --no-audit {package.split()[-1]}" in script
        else:
            ok = package in installed
        if not ok:
            missing.add((tool, package))
    assert missing == set()
    assert {"cpp", "apache2-utils", "busybox-static", "qemu-user-static"} <= installed


def test_the_cpp_comparison_asks_for_gnu_cpp() -> None:
    """The corpus test goes through require_gnu_cpp (which fails in CI without cpp)."""
    corpus = (TESTS / "test_preprocess_corpus.py").read_text(encoding="utf-8")
    assert "gnu_cpp(" in corpus.split("def run_cpp")[1].split("\ndef ")[0]
    assert "run_cpp(" in corpus.split("def test_kiln_matches_cpp")[1].split("\ndef ")[0]
    helper = (TESTS / "helpers" / "gnu_cpp.py").read_text(encoding="utf-8")
    assert "require_gnu_cpp()" in helper.split("def gnu_cpp(")[1].split("\ndef ")[0]


# -- no module that newer Pythons removed -----------------------------------------------------

# PEP 594 (removed in Python 3.13) and distutils (3.12), imp (3.12), asynchat/asyncore (3.12).
REMOVED_MODULES = {"aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "mailcap",
                   "msilib", "nis", "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd",
                   "sunau", "telnetlib", "uu", "xdrlib", "distutils", "imp", "asynchat",
                   "asyncore", "smtpd", "lib2to3"}


def test_no_test_or_kiln_module_imports_a_module_newer_pythons_removed() -> None:
    files = [*TEST_FILES, *(REPO_ROOT / "src").rglob("*.py"), *(REPO_ROOT / "benchmarks").glob("*.py")]
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [(node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [(node.lineno, node.module)]
            else:
                continue
            offenders += [f"{path.relative_to(REPO_ROOT)}:{line}: {name}" for line, name in names
                          if name.split(".")[0] in REMOVED_MODULES]
    assert offenders == [], f"removed from Python 3.13 (this is {sys.version.split()[0]})"


# -- native builds are the host's architecture, whatever the host ------------------------------

def test_native_real_build_tests_assert_the_host_arch_not_a_hard_coded_one() -> None:
    """The native build test checks the architecture kiln built for against the host's (amd64
    on x86_64, arm64 on aarch64): a literal amd64/x86_64 fails on an arm64 runner."""
    tree = ast.parse((TESTS / "test_build_real.py").read_text(encoding="utf-8"))
    native = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
                  and node.name == "test_build_pushes_v2s2_with_labels_and_builds_the_missing_base")
    literals = {node.value for node in ast.walk(native) if isinstance(node, ast.Constant)
                and isinstance(node.value, str)}
    assert not literals & {"amd64", "x86_64", "x86_64\n", "arm64", "aarch64", "aarch64\n"}
    source = ast.unparse(native)
    assert "host_arch()" in source and "os.uname().machine" in source
