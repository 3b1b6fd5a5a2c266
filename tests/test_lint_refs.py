"""Reference lint: FROM lines and CI images must come through the mirror (or approved
registries), with file:line and the reference to use instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.mirror.config import parse_config
from kiln.mirror.lint import (
    LintFailed,
    check_uses,
    ci_uses,
    from_uses,
    lint_project,
    substitute,
)
from kiln.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
PIN = "sha256:" + "cd" * 32

CONFIG = parse_config(
    "approved-registries: [quay.io, ghcr.io/acme]\n"
    "images:\n"
    "  - docker.io/library/debian:bookworm\n"
    "  - postgres:alpine\n"
    "  - source: redis:7\n"
    "    destination: mirror.example.com/cache/redis\n",
    "mirrors.yml", {"REGISTRY": "registry.example.com/group/project"})


def errors(findings: list) -> list[str]:  # type: ignore[type-arg]
    return [str(f) for f in findings if f.severity == "error"]


# -- pure parts ------------------------------------------------------------------------------

def test_substitute_keeps_trusted_variables() -> None:
    values = {"UPSTREAM_REGISTRY": "docker.io", "BASE": "debian", "TAG": "bookworm"}
    assert substitute("${UPSTREAM_REGISTRY}/library/${BASE}:$TAG", values) == \
        "${UPSTREAM_REGISTRY}/library/debian:bookworm"
    assert substitute("${X:-alpine}", {}) == "alpine"
    assert substitute("$UNKNOWN/x", {}) == "$UNKNOWN/x"


def test_from_lines_with_arg_defaults_stages_and_scratch() -> None:
    text = (
        "ARG UPSTREAM_REGISTRY=docker.io\n"
        "ARG BASE=library/debian\n"
        "ARG TAG=bookworm\n"
        "FROM ${UPSTREAM_REGISTRY}/${BASE}:${TAG} AS builder\n"
        "RUN make\n"
        "FROM --platform=linux/amd64 \\\n"
        "     ${BASE}:${TAG}\n"
        "FROM builder\n"
        "FROM scratch\n"
        "COPY --from=builder /x /x\n"
    )
    uses = from_uses(text, "builds/x.in")
    assert [(u.line, u.resolved) for u in uses] == [
        (4, "${UPSTREAM_REGISTRY}/library/debian:bookworm"),
        (6, "library/debian:bookworm"),
    ]
    # build args override ARG defaults, as --build-arg does
    assert from_uses(text, "f", {"TAG": "trixie"})[1].resolved == "library/debian:trixie"


def test_ci_images_with_variables_anchors_and_services() -> None:
    text = (
        "variables:\n"
        "  KILN_CI_IMAGE: $CI_REGISTRY/$KILN_PROJECT_PATH/buildah\n"
        "  KILN_PROJECT_PATH: kiln/kiln\n"
        "  PG: postgres\n"
        ".base: &base\n"
        "  image: $KILN_CI_IMAGE:latest\n"
        "test:\n"
        "  <<: *base\n"
        "  services:\n"
        "    - name: ${PG}:alpine\n"
        "      alias: db\n"
        "    - redis:7\n"
        "lint:\n"
        "  image:\n"
        "    name: python:3.11\n"
        "    entrypoint: ['']\n"
        "  variables:\n"
        "    PG: ignored\n"
        "stages: [test]\n"
    )
    uses = ci_uses(text, ".gitlab-ci.yml")
    found = sorted((u.line, u.kind, u.resolved) for u in uses)
    assert found == [
        (6, "image", "$CI_REGISTRY/kiln/kiln/buildah:latest"),
        (6, "image", "$CI_REGISTRY/kiln/kiln/buildah:latest"),  # .base and test (merge key)
        (10, "services", "postgres:alpine"),
        (12, "services", "redis:7"),
        (15, "image", "python:3.11"),
    ]


def test_docker_hub_reference_gets_the_mirrored_replacement() -> None:
    uses = from_uses("FROM debian:bookworm\n", "builds/base.in")
    (finding,) = check_uses(uses, CONFIG)
    text = str(finding)
    assert text.startswith("builds/base.in:1: error: debian:bookworm pulls from Docker Hub")
    assert "use ${UPSTREAM_REGISTRY}/library/debian:bookworm (mirrored by mirrors.yml:3)" in text


def test_unmirrored_reference_says_what_to_add() -> None:
    uses = from_uses(f"FROM docker.io/library/node:20@{PIN}\n", "builds/web.in")
    (finding,) = check_uses(uses, CONFIG)
    assert f"add `- source: docker.io/library/node:20@{PIN}` to mirrors.yml" in str(finding)
    assert f"then use ${{UPSTREAM_REGISTRY}}/library/node:20@{PIN}" in str(finding)


def test_ci_suggestion_uses_ci_registry_image_and_explicit_destinations() -> None:
    uses = ci_uses("job:\n  services: [postgres:alpine, 'redis:7']\n", "ci/test.yml")
    found = errors(check_uses(uses, CONFIG))
    assert len(found) == 2
    assert "ci/test.yml:2: error: postgres:alpine pulls from Docker Hub" in found[0]
    assert "use $CI_REGISTRY_IMAGE/mirror/library/postgres:alpine" in found[0]
    assert "use mirror.example.com/cache/redis:7 (mirrored by mirrors.yml:5)" in found[1]


def test_approved_and_own_registries_pass() -> None:
    text = ("FROM quay.io/prometheus/busybox:latest\n"
            "FROM ghcr.io/acme/tool:1\n"
            "FROM registry.example.com/group/project/base:latest\n"
            "FROM ${REGISTRY}/python:latest\n"
            "FROM mirror.example.com/cache/redis:7\n")
    uses = from_uses(text, "f")
    assert check_uses(uses, CONFIG, ["registry.example.com"]) == []


def test_unapproved_registry_fails() -> None:
    found = errors(check_uses(from_uses("FROM ghcr.io/other/tool:1\n", "f"), CONFIG))
    assert len(found) == 1 and "ghcr.io, which is not an approved registry" in found[0]


def test_unresolvable_variable_is_a_warning() -> None:
    (finding,) = check_uses(from_uses("ARG BASE\nFROM ${BASE}:1\n", "f"), CONFIG)
    assert finding.severity == "warning" and "cannot tell which registry" in finding.message


def test_without_config_docker_hub_still_fails() -> None:
    (finding,) = check_uses(from_uses("FROM alpine\n", "f"), None)
    assert finding.severity == "error" and "add `- source: docker.io/library/alpine:latest`" \
        in finding.message


# -- the project adapter (real preprocessing of real files) ------------------------------------

def make_project(tmp_path: Path) -> Path:
    (tmp_path / "builds").mkdir()
    (tmp_path / "includes").mkdir()
    (tmp_path / "ci").mkdir()
    (tmp_path / "includes" / "from-debian").write_text(
        "/* a building block that pulls straight from Docker Hub */\n"
        "ARG DEBIAN_TAG=bookworm\n"
        "FROM debian:${DEBIAN_TAG}\n", encoding="utf-8")
    (tmp_path / "builds" / "good.in").write_text(
        "ARG UPSTREAM_REGISTRY=docker.io\n"
        "FROM ${UPSTREAM_REGISTRY}/library/debian:bookworm\n"
        "RUN echo https://example.com // not a comment\n", encoding="utf-8")
    (tmp_path / "builds" / "bad.in").write_text(
        "/* comment\n   spanning lines */\n"
        "#include \"from-debian\"\n"
        "RUN true\n", encoding="utf-8")
    (tmp_path / "ci" / "jobs.yml").write_text(
        "test:\n  image: python:3.11-slim\n  script: [true]\n", encoding="utf-8")
    (tmp_path / "mirrors.yml").write_text(
        "images:\n  - debian:bookworm\n  - python:3.11-slim\n", encoding="utf-8")
    return tmp_path


def test_lint_project_names_file_line_and_replacement(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    settings = Settings.resolve(project, {}, {}, {})
    with pytest.raises(LintFailed) as info:
        lint_project(settings)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "2 image reference(s) bypass the mirror" in message
    assert "includes/from-debian:3: error: debian:${DEBIAN_TAG} (= debian:bookworm) pulls " \
           "from Docker Hub" in message
    assert "use ${UPSTREAM_REGISTRY}/library/debian:bookworm (mirrored by" in message
    assert "ci/jobs.yml:2: error: python:3.11-slim pulls from Docker Hub" in message
    assert "use $CI_REGISTRY_IMAGE/mirror/library/python:3.11-slim" in message
    assert "good.in" not in message


@pytest.mark.tool
def test_lint_refs_task_exit_code(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", "from kiln.cli import main; main()",
                           "lint-refs"], cwd=project, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "ci/jobs.yml:2: error" in done.stderr
    (project / "builds" / "bad.in").unlink()
    (project / "ci" / "jobs.yml").write_text(
        "test:\n  image: $CI_REGISTRY_IMAGE/mirror/library/python:3.11-slim\n",
        encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", "from kiln.cli import main; main()",
                           "lint-refs"], cwd=project, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_this_repository_passes_its_own_lint() -> None:
    settings = Settings.resolve(REPO_ROOT, {"builds-dir": "builds", "includes-dir": "includes"},
                                {}, {})
    findings = lint_project(settings)
    assert [f for f in findings if f.severity == "error"] == []


def test_from_inside_a_heredoc_is_not_an_image_and_comments_do_not_end_a_from() -> None:
    """The build never pulls a FROM written inside a heredoc, so the lint does not report it;
    a comment line inside a continuation is dropped and the FROM goes on (kiln.containerfile)."""
    text = ("FROM \\\n"
            "# pulled through the mirror\n"
            "    ${UPSTREAM_REGISTRY}/library/debian:bookworm\n"
            "COPY <<EOF /notes\n"
            "FROM evil/img\n"
            "EOF\n"
            "RUN cat <<-'A' <<B\n"
            "\tFROM docker.io/library/alpine\n"
            "\tA\n"
            "FROM postgres\n"
            "B\n")
    uses = from_uses(text, "builds/x.in")
    assert [(u.line, u.resolved) for u in uses] == [
        (1, "${UPSTREAM_REGISTRY}/library/debian:bookworm")]
    assert check_uses(uses, CONFIG) == []
