"""The house rules that keep kiln one house (docs/architecture.md), as tests.

- The import contract in ``pyproject.toml`` ([tool.importlinter]) holds: core <- adapters <-
  orchestration <- entry points, and core imports no httpx, rich, subprocess or adapter.
- There is no import cycle among kiln's modules (a cycle makes "which layer is this" meaningless).
- Importing a core module does not drag the HTTP stack or the terminal along.
- The repository cites only its own documents (``docs/``), never a file outside it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest
from importlinter import configuration
from importlinter.application.use_cases import lint_imports

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = REPO_ROOT / "pyproject.toml"


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    contracts: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def _core_modules() -> list[str]:
    for contract in _contracts():
        if contract["id"] == "core-has-no-io":
            modules = contract["source_modules"]
            assert isinstance(modules, list)
            return [str(name) for name in modules]
    raise AssertionError("pyproject.toml lost the core-has-no-io contract")


# -- the import contract ------------------------------------------------------------------------

@pytest.mark.parametrize("contract_id", [str(c["id"]) for c in _contracts()])
def test_import_contract_holds(contract_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``lint-imports`` in-process, one contract at a time; the failure shows its report."""
    configuration.configure()  # what the lint-imports command does first
    kept = lint_imports(config_filename=str(PYPROJECT), limit_to_contracts=(contract_id,),
                        cache_dir=None, no_logo=True)
    report = capsys.readouterr().out
    assert kept, f"import contract {contract_id!r} is broken:\n{report}"


# -- no import cycles ---------------------------------------------------------------------------

def _strongly_connected(graph: grimp.ImportGraph, modules: set[str]) -> Iterator[list[str]]:
    """Tarjan's algorithm over the direct imports between ``modules`` (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    counter = 0
    for root in sorted(modules):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = []
        index[root] = lowlink[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work.append((root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules))))
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = lowlink[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child) & modules))))
                elif child in on_stack:
                    lowlink[node] = min(lowlink[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                lowlink[parent] = min(lowlink[parent], lowlink[node])
            if lowlink[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    yield sorted(component)


def _cycle_through(graph: grimp.ImportGraph, component: list[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component, for a readable failure."""
    members = set(component)
    start = component[0]
    for successor in sorted(graph.find_modules_directly_imported_by(start) & members):
        path = graph.find_shortest_chain(importer=successor, imported=start)
        if path is not None and set(path) <= members:
            return [start, *path]
    return component


def test_no_import_cycle_among_kiln_modules() -> None:
    graph = grimp.build_graph("kiln", cache_dir=None)
    modules = {name for name in graph.modules if name == "kiln" or name.startswith("kiln.")}
    cycles = [_cycle_through(graph, component) for component in _strongly_connected(graph, modules)]
    assert not cycles, "import cycles (break each one; see docs/architecture.md):\n" + "\n".join(
        "  " + " -> ".join(cycle) for cycle in cycles)


def test_cycle_finder_finds_a_known_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.c")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    graph.add_import(importer="pkg.d", imported="pkg.a")
    found = list(_strongly_connected(graph, set(graph.modules)))
    assert found == [["pkg.a", "pkg.b", "pkg.c"]]
    assert _cycle_through(graph, found[0]) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]


# -- what importing core costs ------------------------------------------------------------------

@pytest.mark.tool
@pytest.mark.parametrize("module", _core_modules())
def test_importing_core_loads_no_http_or_terminal_stack(module: str) -> None:
    """A fresh interpreter: ``import kiln.tag_policy`` (and every core module) leaves httpx and rich out."""
    probe = (f"import sys, {module}; "
             "loaded = sorted(m for m in ('httpx', 'rich') if m in sys.modules); "
             "print(','.join(loaded)); sys.exit(1 if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, f"import {module} loaded: {done.stdout.strip()}{done.stderr[-2000:]}"


# -- documents cited ----------------------------------------------------------------------------

# Spelled in pieces so this file does not cite them itself.
OUTSIDE_DOCUMENTS = ("REFERENCE" + ".md", "REFERENCE" + " §", "../" + "shared")
NOT_OURS = {".git", ".nox", ".venv", ".kiln", "__pycache__", ".mypy_cache", ".ruff_cache",
            ".pytest_cache", ".gitlab-ci-local", "build", "node_modules"}


def _repository_text_files() -> Iterator[tuple[Path, str]]:
    """The repository's own text files: generated and state folders (``.kiln`` may hold a
    debootstrap root with ``/proc`` mounted) are never entered."""
    for folder, subfolders, files in os.walk(REPO_ROOT):
        subfolders[:] = sorted(name for name in subfolders
                               if name not in NOT_OURS and not name.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(folder, name)
            try:
                if not path.is_file() or path.stat().st_size > 2_000_000:
                    continue
                data = path.read_bytes()
            except OSError:  # removed meanwhile (another process's temporary file)
                continue
            if b"\0" not in data[:8192]:
                yield path, data.decode("utf-8", errors="replace")


def test_repository_cites_no_document_outside_it() -> None:
    citations = []
    for path, text in _repository_text_files():
        for number, line in enumerate(text.splitlines(), start=1):
            if any(needle in line for needle in OUTSIDE_DOCUMENTS):
                citations.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()[:120]}")
    assert not citations, ("cite docs/ instead of documents outside the repository:\n"
                           + "\n".join(citations))


def test_every_cited_document_exists() -> None:
    cited = re.compile(r"\bdocs/([A-Za-z0-9_-]+\.md)")
    missing = []
    for path, text in _repository_text_files():
        for number, line in enumerate(text.splitlines(), start=1):
            for name in cited.findall(line):
                if not (REPO_ROOT / "docs" / name).is_file():
                    missing.append(f"{path.relative_to(REPO_ROOT)}:{number}: docs/{name}")
    assert not missing, "cited documents that do not exist:\n" + "\n".join(missing)


def test_settings_page_lists_every_setting() -> None:
    from kiln.settings import OPTIONS

    page = (REPO_ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    absent = [option.key for option in OPTIONS if f"`{option.key}`" not in page]
    assert not absent, f"docs/settings.md does not list these settings: {absent}"


# -- one process funnel, each setting declared once ---------------------------------------------

SRC = REPO_ROOT / "src" / "kiln"


def _kiln_sources() -> Iterator[tuple[str, str]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC.parent).as_posix(), path.read_text(encoding="utf-8")


def test_only_kiln_proc_starts_processes() -> None:
    """Every process start goes through kiln.proc (its masking, which and error conventions);
    nox sessions use ``session.run``. Found local_registry's own Popen and nox_sessions'
    ``subprocess.run`` of ``invoke --list``."""
    starts = re.compile(r"^\s*(?:import subprocess|from subprocess import)|\bos\.(?:system|popen|"
                        r"posix_spawnp?|exec[lv]p?e?|spawn[lv]p?e?)\(|\bpty\.spawn\(", re.M)
    found = [f"{name}: {match.group(0).strip()}" for name, text in _kiln_sources()
             if name != "kiln/proc.py" for match in starts.finditer(text)]
    assert not found, "start processes through kiln.proc:\n" + "\n".join(found)


# kiln's own variables that are not settings, and why.
NOT_SETTINGS = {
    "KILN_PIPELINE_ID": "the pipeline's identity (kiln.ci_context), set by a generated child pipeline",
    "KILN_DEBUG": "tracebacks of an unexpected error, read on the crash path (settings may be why)",
    "KILN_GIT_USERNAME": "the git askpass helper's own environment (kiln.gitops)",
    "KILN_GIT_PASSWORD": "the git askpass helper's own environment (kiln.gitops)",
    "KILN_CI_IMAGE": "a GitLab variable the generated child pipeline's jobs expand",
}
# Where the environment may be read for kiln's variables: the settings, the CI context, the
# console's secret registration, and the crash path of the tasks (KILN_DEBUG).
ENV_READERS = {"kiln/settings.py", "kiln/ci_context.py", "kiln/console.py", "kiln/tasks/common.py"}


def test_kiln_variables_are_declared_settings() -> None:
    """A ``KILN_<NAME>`` in kiln's code is a setting of ``settings.OPTIONS`` (so it has a
    ``[tool.kiln]`` key, a line in docs/settings.md and one coercion) or one of NOT_SETTINGS.
    Found KILN_CI_GRAPH_EXCLUDE (read by tasks/graph.py) and KILN_REQUIRE_HADOLINT."""
    from kiln.settings import OPTIONS

    declared = {name for option in OPTIONS for name in option.env_names}
    variable = re.compile(r"[\"'$]\{?(KILN_[A-Z0-9_]+)")
    undeclared = sorted(
        f"{name}: {match[1]}" for name, text in _kiln_sources()
        if name != "kiln/preprocess.py"  # its KILN_* are token names of the preprocessor
        for match in variable.finditer(text)
        if match[1] not in declared and match[1] not in NOT_SETTINGS)
    assert not undeclared, "declare these in kiln.settings.OPTIONS:\n" + "\n".join(undeclared)


def test_kiln_variables_are_read_through_the_settings() -> None:
    direct = re.compile(r"(?:environ\.get\(|getenv\(|environ\[)\s*[\"'](KILN_[A-Z0-9_]+)")
    found = [f"{name}: {match[1]}" for name, text in _kiln_sources() if name not in ENV_READERS
             for match in direct.finditer(text)]
    found += [f"{name}: {match[1]}" for name, text in _kiln_sources() if name in ENV_READERS
              and name != "kiln/settings.py" for match in direct.finditer(text)
              if match[1] not in NOT_SETTINGS]
    assert not found, "read these through kiln.settings (load_settings):\n" + "\n".join(found)


# -- the module map ----------------------------------------------------------------------------

def _kiln_modules() -> list[str]:
    """Every module of src/kiln (a package by its name, its __init__ not separately)."""
    names = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return [n for n in names if n != "kiln"]


def test_architecture_page_maps_every_module() -> None:
    """docs/architecture.md has a line for each module of src/kiln, and names no module that
    does not exist."""
    page = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = _kiln_modules()
    missing = [m for m in modules if f"`{m}`" not in page]
    assert not missing, f"docs/architecture.md's module map lacks: {missing}"
    named = set(re.findall(r"`(kiln(?:\.[a-z_]+)+)`", page))
    assert not named - set(modules), f"docs/architecture.md names no such module: {named - set(modules)}"


def test_every_module_has_a_layer() -> None:
    """The layers contract is exhaustive for top-level modules; kiln.registry and kiln.mirror are
    split by submodule, so each of their submodules must be in a layer by name."""
    layers = next(c for c in _contracts() if c["id"] == "layers")["layers"]
    assert isinstance(layers, list)
    placed = {word.strip("()") for layer in layers for word in str(layer).replace(":", " ").split()}
    split = [m for m in _kiln_modules() if m.count(".") == 2
             and m.split(".")[1] in {"registry", "mirror"}]
    unplaced = [m for m in split if m.removeprefix("kiln.") not in placed]
    assert not unplaced, f"give these a layer in pyproject's [tool.importlinter]: {unplaced}"
    ghosts = sorted(p for p in placed if f"kiln.{p}" not in _kiln_modules())
    assert not ghosts, f"pyproject's layers name modules that do not exist: {ghosts}"
