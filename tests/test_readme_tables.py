"""The README's benchmark tables are generated from benchmarks/results/, never pasted, and the
registry benchmark compares the same operation with the peer's best invocation.

(The graph and mirror sections have their own checks in tests/test_ci_graph.py and
tests/test_mirror_tagsets.py; this file holds the registry one and the rule for all of them.)
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def benchmark_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}",
                                                  ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def registry_ops() -> ModuleType:
    return benchmark_module("registry_ops")


@pytest.fixture(scope="module")
def results(registry_ops: ModuleType) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(registry_ops.RESULTS.read_text(encoding="utf-8"))
    return data


def test_readme_registry_benchmark_is_generated_from_the_results(
        registry_ops: ModuleType, results: dict[str, Any]) -> None:
    section = registry_ops.readme_section(README.read_text(encoding="utf-8"))
    assert section is not None, f"README.md lacks {registry_ops.START} ... {registry_ops.END}"
    rendered = registry_ops.render(results)
    assert section == rendered, "README's registry benchmark differs from results/registry_ops" \
        ".json: run python benchmarks/registry_ops.py --render (or --write), never edit by hand"
    report = registry_ops.REPORT.read_text(encoding="utf-8")
    assert report.rstrip("\n").endswith(rendered)


def test_every_readme_benchmark_table_sits_between_generated_markers() -> None:
    """A table under a README "Benchmark" heading that no script writes is a pasted one."""
    lines = README.read_text(encoding="utf-8").splitlines()
    pasted, in_benchmark, generated, sections = [], False, False, 0
    for number, line in enumerate(lines, 1):
        if line.startswith("#"):
            in_benchmark = "benchmark" in line.lower()
            sections += in_benchmark
            continue
        if re.match(r"<!-- [\w-]+-benchmark:start\b", line):
            generated = True
        elif re.match(r"<!-- [\w-]+-benchmark:end\b", line):
            generated = False
        elif in_benchmark and line.startswith("|") and not generated:
            pasted.append(f"README.md:{number}: {line[:60]}")
    assert sections >= 3, "the README's benchmark sections moved: update this test"
    assert pasted == []


def test_the_registry_benchmark_compares_the_same_operation(
        registry_ops: ModuleType, results: dict[str, Any]) -> None:
    """Each row: the peer's best invocation for kiln's operation, process against process."""
    peers = {scenario: command for scenario, (_, command, _) in registry_ops.SCENARIOS.items()}
    # The children are in the repository already: re-sending them (--all) is not the operation.
    assert "manifest push" in peers["index"] and "--all" not in peers["index"]
    # Retagging an index copies the index: without --all skopeo copies one child of it.
    assert "--all" in peers["retag index"] and "--preserve-digests" in peers["retag index"]
    assert "--preserve-digests" in peers["retag image"] and "--all" not in peers["retag image"]
    # Both sides did the same thing: same digests kept, same kind of index written.
    same = results["same_result"]
    for check in ("index children = per-arch digests", "retagged image digest kept",
                  "retagged index digest kept"):
        assert same[check] == {"kiln": True, "peer": True}, check
    assert same["index media type"]["kiln"] == same["index media type"]["peer"]
    # Processes against processes: no in-process ("lib") timing beside a fresh peer process.
    assert set(results["seconds"]) == set(registry_ops.SCENARIOS)
    for times in results["seconds"].values():
        assert set(times) == {"kiln", "peer"}
    assert "lib" not in registry_ops.render(results)
    assert results["kiln_startup_seconds"] > 0


def test_the_index_peer_makes_eight_requests_three_of_them_pings(
        results: dict[str, Any]) -> None:
    """The corrected multi-arch row: buildah without --all (the earlier table's 26 requests
    were `manifest push --all` re-checking children already in the repository)."""
    peer = results["counts"]["index"]["peer"]
    assert peer["total requests"] == 8 and peer["/v2/ ping"] == 3
    assert peer.get("upload", 0) == 0 and peer.get("blob HEAD", 0) == 0
