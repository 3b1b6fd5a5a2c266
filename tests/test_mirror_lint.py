"""The reference lint's idea of "ours" (the mirror's destination hosts, tag sets included),
and Docker Hub's names decided in one place."""

from __future__ import annotations

import ast
from pathlib import Path

from kiln.mirror.config import parse_config
from kiln.mirror.lint import check_uses, from_uses
from kiln.registry.reference import DOCKER_HUB, DOCKER_HUB_HOSTS


def test_tag_set_destination_host_counts_as_approved() -> None:
    config = parse_config(
        "images:\n"
        "  - source: node\n"
        "    destination: cache.example.com/upstream/node\n"
        "    tags: {semver: '>=16 <17'}\n",
        "mirrors.yml", {"REGISTRY": "registry.example.com/group/project"})
    uses = from_uses("FROM cache.example.com/upstream/node:16.20.2\n", "builds/app.in")
    assert [str(f) for f in check_uses(uses, config)] == []
    # a host no entry writes to is still refused
    other = from_uses("FROM elsewhere.example.com/node:16\n", "builds/app.in")
    (finding,) = check_uses(other, config)
    assert "elsewhere.example.com, which is not an approved registry" in finding.message


def _code_strings(tree: ast.AST) -> list[ast.Constant]:
    """The string constants of a module that are values in code (docstrings left out)."""
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant):
            docstrings.add(id(body[0].value))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def test_docker_hub_host_names_live_in_registry_reference_only() -> None:
    """Docker Hub answers to three names; which they are is decided once, in
    kiln.registry.reference (DOCKER_HUB, DOCKER_HUB_HOSTS, is_docker_hub). A list of them
    anywhere else drifts (promote, auth and the mirror each kept one)."""
    source = Path(__file__).resolve().parent.parent / "src" / "kiln"
    home = source / "registry" / "reference.py"
    found = []
    for path in sorted(source.rglob("*.py")):
        if path == home:
            continue
        for node in _code_strings(ast.parse(path.read_text(encoding="utf-8"))):
            if node.value in DOCKER_HUB_HOSTS or any(
                    alias in node.value for alias in DOCKER_HUB_HOSTS - {DOCKER_HUB}):
                found.append(f"{path.relative_to(source.parent)}:{node.lineno}: {node.value!r}")
    assert found == [], "use kiln.registry.reference (DOCKER_HUB, is_docker_hub) instead:\n" \
        + "\n".join(found)
