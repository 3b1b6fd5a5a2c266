"""Each policy has one home (docs/architecture.md): the twins the duplicate-code check found,
and a guard per policy so a new copy fails here instead of drifting apart."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln import buildah, guidelines, referrers, retention, settings, tag_policy
from kiln.build import plan, run
from kiln.registry import media

SRC = Path(__file__).resolve().parent.parent / "src" / "kiln"


def _sources(*, besides: str) -> Iterator[tuple[str, int, str]]:
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC.parent).as_posix()
        if name == besides:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            yield name, number, line


def test_media_types_are_spelled_only_in_registry_media() -> None:
    """referrers.py had its own OCI index media type."""
    found = [f"{n}:{i}: {line.strip()}" for n, i, line in _sources(besides="kiln/registry/media.py")
             if "application/vnd." in line]
    assert not found, "use kiln.registry.media's constants:\n" + "\n".join(found)
    assert referrers.OCI_INDEX is media.OCI_INDEX


def test_registry_json_is_parsed_in_one_place() -> None:
    """referrers.py had a copy of media.parse_json (same errors, same messages)."""
    assert not hasattr(referrers, "_object")
    with pytest.raises(Exception, match="referrers index is not a JSON object"):
        referrers.parse_referrers_index(b"[]", "referrers index")


def test_tag_shapes_live_in_tag_policy() -> None:
    """retention.py had its own mr-<iid>, k-<hex>, p-/g- patterns and production/latest."""
    shapes = re.compile(r'f"(?:p|g|mr|k)-\{|\[pg\]-|\bk-\[0-9a-f\]|mr-\\d')
    found = [f"{n}:{i}: {line.strip()}" for n, i, line in _sources(besides="kiln/tag_policy.py")
             if shapes.search(line)]
    assert not found, "make and recognise kiln's tags in kiln.tag_policy:\n" + "\n".join(found)
    assert retention.NEVER == tag_policy.FIXED_TAGS == ("production", "latest")
    assert settings.OPTION["prune_match"].default == retention.DEFAULT_MATCH


@pytest.mark.parametrize(("tag", "managed", "key", "number"), [
    ("p-42", True, False, "42"), ("g-42", True, False, "42"), ("p-42-arm64", True, False, "42"),
    ("mr-7", True, False, None), ("p-local", True, False, None), ("p-1.2", True, False, None),
    ("k-" + "a" * 32, False, True, None), ("k-" + "a" * 31, False, False, None),
    ("v1.2.3", False, False, None), ("production", False, False, None),
])
def test_one_recogniser_for_prune_and_the_git_tag_check(tag: str, managed: bool, key: bool,
                                                        number: str | None) -> None:
    assert tag_policy.is_pipeline_managed(tag) is managed
    assert retention.is_managed(tag) is managed
    assert tag_policy.is_key_tag(tag) is key
    assert tag_policy.pipeline_number(tag) == number
    # a git tag prune would treat as kiln's own is refused (p-1.2 was accepted, then prunable)
    assert tag_policy.is_reserved(tag) is (managed or key or tag == "production")


def test_buildah_reaches_registries_the_same_way_in_build_push_and_from() -> None:
    """build_command, push_command and from_command each spelled the three flags."""
    tool = buildah.Buildah()
    flags = ["--tls-verify=false", "--authfile", "/run/a.json", "--cert-dir", "/run/certs"]
    access: dict[str, Any] = {"tls_verify": False, "authfile": Path("/run/a.json"),
                              "cert_dir": Path("/run/certs")}
    assert buildah.registry_flags(False, Path("/run/a.json"), Path("/run/certs")) == flags
    for argv in (tool.build_command(containerfile=Path("C"), context=Path("."), tag="t", **access),
                 tool.push_command("r/i:t", **access),
                 tool.from_command("r/i:t", **access)):
        joined = " ".join(argv)
        assert " ".join(flags) in joined, argv
    assert "--tls-verify" not in " ".join(tool.push_command("r/i:t"))


def test_build_args_are_declared_after_each_from_by_one_function() -> None:
    """build.run.ca_bundle_text had a copy of build.plan.declare_after_from."""
    text = "FROM a AS one\nRUN x\nFROM \\\n  b\nRUN y\n"
    assert run.ca_bundle_text(text) == plan.declare_after_from(text, run.CA_VARIABLES)
    assert run.ca_bundle_text(text).count("ARG SSL_CERT_FILE") == 2


def test_guidelines_read_from_lines_with_the_containerfile_reader() -> None:
    """guidelines.py had its own FROM regex (no continuations, no stage knowledge beyond it)."""
    assert not hasattr(guidelines, "_FROM")
    text = ('#include "python-requirements"\nFROM \\\n  debian:bookworm AS build\n'
            "FROM build\n")
    findings = guidelines.check_build_file(text, "builds/app.in")
    assert [f.line for f in findings] == [2]
    assert "FROM debian:bookworm" in findings[0].message


def test_one_tag_removal_technique() -> None:
    """prune had its own copy of stop-mr's throwaway-manifest removal (point the tag at a fresh
    throwaway, delete that digest); both now call promote.point_away_and_delete."""
    found = [f"{n}:{i}: {line.strip()}" for n, i, line in _sources(besides="kiln/promote.py")
             if "throwaway_manifest(" in line and not n.endswith("registry/media.py")]
    assert not found, "remove a tag with kiln.promote.point_away_and_delete:\n" + "\n".join(found)
    from kiln import promote, prune

    assert prune.point_away_and_delete is promote.point_away_and_delete
